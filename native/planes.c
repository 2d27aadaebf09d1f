/* Byte planes of float tensors, at memory speed: chunkfs._planes.
 *
 * to_planes(data, width) moves byte i of every width-byte element into plane i (the
 * elements' low bytes first, then the next, ...; a tail shorter than width goes last,
 * unchanged); from_planes(data, width) undoes it. The cold tier stores float chunks this
 * way before zstd (engine/codec.py, "ZSTD_PLANES2/4"), so from_planes runs on every cold
 * read. The pure-NumPy versions in engine/codec.py are the reference and the fallback:
 * tests/unit/test_planes.py checks that both agree bit for bit, tools/bench_planes.py
 * measures both (docs/performance.md, "Byte planes").
 *
 * The GIL is released around the loops: a reader thread decoding one chunk does not hold
 * back the others.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static void split(const unsigned char *in, unsigned char *out, Py_ssize_t n, int w) {
    /* n elements of w bytes: in[i*w + j] -> out[j*n + i] */
    Py_ssize_t i;
    if (w == 2) {
        unsigned char *p0 = out, *p1 = out + n;
        for (i = 0; i < n; i++) {
            p0[i] = in[2 * i];
            p1[i] = in[2 * i + 1];
        }
    } else if (w == 4) {
        unsigned char *p0 = out, *p1 = out + n, *p2 = out + 2 * n, *p3 = out + 3 * n;
        for (i = 0; i < n; i++) {
            p0[i] = in[4 * i];
            p1[i] = in[4 * i + 1];
            p2[i] = in[4 * i + 2];
            p3[i] = in[4 * i + 3];
        }
    } else {
        for (int j = 0; j < w; j++)
            for (i = 0; i < n; i++)
                out[j * n + i] = in[i * w + j];
    }
}

static void join(const unsigned char *in, unsigned char *out, Py_ssize_t n, int w) {
    /* the inverse: in[j*n + i] -> out[i*w + j] */
    Py_ssize_t i;
    if (w == 2) {
        const unsigned char *p0 = in, *p1 = in + n;
        for (i = 0; i < n; i++) {
            out[2 * i] = p0[i];
            out[2 * i + 1] = p1[i];
        }
    } else if (w == 4) {
        const unsigned char *p0 = in, *p1 = in + n, *p2 = in + 2 * n, *p3 = in + 3 * n;
        for (i = 0; i < n; i++) {
            out[4 * i] = p0[i];
            out[4 * i + 1] = p1[i];
            out[4 * i + 2] = p2[i];
            out[4 * i + 3] = p3[i];
        }
    } else {
        for (int j = 0; j < w; j++)
            for (i = 0; i < n; i++)
                out[i * w + j] = in[j * n + i];
    }
}

static PyObject *transform(PyObject *args, int inverse) {
    Py_buffer view;
    int width;
    if (!PyArg_ParseTuple(args, "y*i", &view, &width))
        return NULL;
    if (width < 1 || width > 16) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "byte planes: width must be 1 to 16, not %d", width);
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, view.len);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *in = (const unsigned char *)view.buf;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    Py_ssize_t n = view.len / width, whole = n * width;
    Py_BEGIN_ALLOW_THREADS
    if (inverse)
        join(in, out, n, width);
    else
        split(in, out, n, width);
    memcpy(out + whole, in + whole, (size_t)(view.len - whole));
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return result;
}

static PyObject *to_planes(PyObject *self, PyObject *args) { return transform(args, 0); }
static PyObject *from_planes(PyObject *self, PyObject *args) { return transform(args, 1); }

static PyMethodDef methods[] = {
    {"to_planes", to_planes, METH_VARARGS, "to_planes(data, width) -> bytes: byte i of each element into plane i."},
    {"from_planes", from_planes, METH_VARARGS, "from_planes(data, width) -> bytes: the inverse of to_planes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "chunkfs._planes",
                                    "Byte planes of float tensors (native/planes.c).", -1, methods};

PyMODINIT_FUNC PyInit__planes(void) { return PyModule_Create(&module); }
