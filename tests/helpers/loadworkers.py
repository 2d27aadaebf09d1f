"""Processes for the load tests of test_names_under_load.py: run as ``python loadworkers.py ROLE ARGS``.

Each role is a separate process, as a trainer, a monitoring agent and a reader
are on a real node; each exits non-zero with one line per problem it saw.

* ``writer DIR W N``: N atomic saves of ``DIR/wW.bin`` (write ``wW.tmp``, fsync, close,
  rename over), every third one also removing the previous ``wW.old`` and hard-linking
  the new file there; after each rename the temporary name must be gone and the saved
  file must keep its size while the next temporary is written.
* ``lister DIR SECONDS [STOPFILE]``: ``listdir`` + ``lstat`` of every name, as ``ls -l`` and ``find``
  do, for SECONDS or until STOPFILE exists.
* ``reader DIR SECONDS``: opens every ``*.bin`` and checks each byte it reads: a file is
  always one complete save, and the saves of one writer never go backwards.
* ``verifier MANIFEST STOPFILE``: until STOPFILE exists, reads every file of MANIFEST (JSON:
  path → SHA-256) whole and in random ranges, each byte checked, then drops the file's
  pages so that the next pass asks the filesystem again; at least one whole pass.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time

SIZE = 1 << 20
HEADER = 16


def spawn(role: str, *args) -> subprocess.Popen:
    """Start this module as a process of ``role`` (the test's side)."""
    return subprocess.Popen([sys.executable, __file__, role, *map(str, args)], stdout=subprocess.PIPE, text=True)


def failures(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Wait for every process; one line per process that found problems: its role, first argument
    and what it printed."""
    found = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        if p.returncode:
            found.append(f"{p.args[2]} {p.args[3]}: {out}")
    return found


def content(writer: int, step: int) -> bytes:
    """The bytes of save ``step`` of writer ``writer``: a header naming it, then a payload only it has."""
    seed = hashlib.blake2b(f"{writer}:{step}".encode()).digest()
    block = hashlib.shake_256(seed).digest(SIZE - HEADER)
    return writer.to_bytes(8, "big") + step.to_bytes(8, "big") + block


def check(data: bytes, where: str) -> tuple[int, int] | str:
    """(writer, step) of a complete save, or what is wrong with ``data``."""
    if len(data) != SIZE:
        return f"{where}: {len(data)} bytes, a save has {SIZE}"
    writer, step = int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big")
    if writer > 1000 or step > 1_000_000 or data != content(writer, step):
        return f"{where}: bytes of no complete save (header {writer}:{step})"
    return writer, step


def writer(d: str, w: int, n: int) -> list[str]:
    problems = []
    tmp, final, old = f"{d}/w{w}.tmp", f"{d}/w{w}.bin", f"{d}/w{w}.old"
    for step in range(n):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if step and os.stat(final).st_size != SIZE:
            problems.append(f"step {step}: creating {tmp} changed {final}")
        os.write(fd, content(w, step))
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, final)
        try:
            os.stat(tmp)
            problems.append(f"step {step}: {tmp} still exists after rename")
        except FileNotFoundError:
            pass
        with open(final, "rb") as f:
            got = check(f.read(), final)
        if got != (w, step):
            problems.append(f"step {step}: {final} right after the rename: {got}")
        if step % 3 == 2:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
            try:
                os.stat(old)
                problems.append(f"step {step}: {old} still exists after unlink")
            except FileNotFoundError:
                pass
            os.link(final, old)
    return problems


def lister(d: str, seconds: float, stopfile: str | None = None) -> list[str]:
    problems = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stopfile and os.path.exists(stopfile)):
        for name in os.listdir(d):
            try:
                os.lstat(f"{d}/{name}")
            except FileNotFoundError:
                pass  # removed after the listing: allowed
    return problems


def reader(d: str, seconds: float) -> list[str]:
    problems, newest = [], {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".bin"):
                continue
            try:
                with open(f"{d}/{name}", "rb") as f:
                    data = f.read()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    problems.append(f"{name}: {e}")
                continue
            got = check(data, name)
            if isinstance(got, str):
                problems.append(got)
                continue
            w, step = got
            if step < newest.get(w, -1):
                problems.append(f"{name}: save {step} after save {newest[w]} had been read")
            newest[w] = max(step, newest.get(w, -1))
    return problems


def verifier(manifest: str, stopfile: str) -> list[str]:
    problems: list[str] = []
    with open(manifest) as f:
        expected = json.load(f)
    rng = random.Random(os.getpid())
    passes = 0
    while not passes or not os.path.exists(stopfile):
        for path in rng.sample(sorted(expected), len(expected)):
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    ranges = []
                    for _ in range(8):  # random ranges first, while no page of the file is cached
                        start = rng.randrange(max(size, 1))
                        ranges.append((start, os.pread(f.fileno(), rng.randrange(1, 3 << 20), start)))
                    whole = f.read()
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as e:
                problems.append(f"{path}: {e}")
                continue
            for start, got in ranges:
                if got != whole[start : start + len(got)]:
                    problems.append(f"{path}: pass {passes}: {len(got)} bytes at {start} differ from a whole read")
            if hashlib.sha256(whole).hexdigest() != expected[path]:
                problems.append(f"{path}: pass {passes}: {len(whole)} bytes, not the bytes written")
        passes += 1
        if len(problems) > 20:
            break
    return problems


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "writer":
        found = writer(args[0], int(args[1]), int(args[2]))
    elif role == "lister":
        found = lister(args[0], float(args[1]), *args[2:])
    elif role == "verifier":
        found = verifier(args[0], args[1])
    else:
        found = reader(args[0], float(args[1]))
    for line in found[:20]:
        print(line)
    sys.exit(1 if found else 0)
