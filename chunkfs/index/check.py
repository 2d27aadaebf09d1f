"""Is the index file whole? Checked before LMDB touches it, and walked in a child process.

LMDB maps ``data.mdb`` into memory and trusts it: a file cut short makes the first
access past its end a SIGBUS that kills the process (a mount daemon with an empty
log), and a garbled page can crash it. So:

* ``check_file`` reads the two meta pages itself, before ``lmdb.open``: the magic
  and version, and that the file holds every page the newest valid meta page says
  it has (a truncated file). Cheap: every open does it (``Index``).
* ``walk`` opens the index in a child process and reads every record of every
  database: a crash or an LMDB error there is reported as damage, never taken by
  the caller. ``chunkfs fsck`` and ``chunkfs index rebuild`` use it.
* ``salvage`` streams, database by database and from a child process too, every
  record that can still be read out of a damaged index (``index rebuild``).

Run as ``python -m chunkfs.index.check walk|dump INDEX_DIR [DB]`` (the child side).
The meta page layout is LMDB's (``MDB_meta`` in lmdb's mdb.c, 64-bit): page header
(16 bytes), magic u32, version u32, address, map size, two ``MDB_db`` of 48 bytes
(the first one's ``md_pad`` holds the page size), last page number u64, txn id u64.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from chunkfs.errors import CorruptData, NotFound

MAGIC = 0xBEEFC0DE
LMDB_VERSION = 1
DATA = "data.mdb"
_META = struct.Struct("<II16s48s48sQQ")  # from offset 16: magic, version, address+mapsize, db0, db1, last pg, txnid
WALK_TIMEOUT = 3600.0

REBUILD_HINT = (
    "run `chunkfs index rebuild --repo {repo}` (it keeps a copy of the damaged index, salvages what "
    "can still be read and indexes the chunks of every pack again), or `chunkfs recover` from a metadata backup"
)


def hint(index_dir: Path) -> str:
    return REBUILD_HINT.format(repo=Path(index_dir).parent)


def _meta_at(head: bytes, base: int) -> tuple[int, int, int] | None:
    """(txn id, last page, page size) of the meta page at ``base``, or None if it is not one."""
    if len(head) < base + 16 + _META.size:
        return None
    magic, version, _, db0, _, last_pg, txnid = _META.unpack_from(head, base + 16)
    page = struct.unpack_from("<I", db0)[0]
    if magic != MAGIC or version != LMDB_VERSION or page < 512 or page & (page - 1):
        return None
    return txnid, last_pg, page


def _metas(head: bytes) -> list[tuple[int, int, int]]:
    """The well-formed meta pages of an index file (the first two pages)."""
    first = _meta_at(head, 0)
    sizes = [first[2]] if first else [4096, 8192, 16384, 32768, 65536]
    second = next((m for p in sizes if (m := _meta_at(head, p)) is not None and m[2] == p), None)
    return [m for m in (first, second) if m is not None]


def check_file(index_dir: Path) -> None:
    """Raise ``CorruptData`` (or ``NotFound``) unless ``INDEX_DIR/data.mdb`` looks whole."""
    path = Path(index_dir) / DATA
    try:
        with open(path, "rb") as f:
            head = f.read(2 * 65536)
            # the size after the meta pages: another process may commit in between, and a
            # commit only grows the file before its meta page names the new end (never the
            # other way round), so this order never takes a growing index for a truncated one
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise NotFound(f"{path}: the index is missing; {hint(index_dir)}") from None
    except OSError as e:
        raise CorruptData(f"{path}: cannot read the index ({e.strerror}); {hint(index_dir)}") from None
    metas = _metas(head)
    if not metas:
        raise CorruptData(f"{path}: not an LMDB index (no valid meta page: overwritten or corrupt); {hint(index_dir)}")
    _txnid, last_pg, psize = max(metas)
    if size < (last_pg + 1) * psize:
        raise CorruptData(
            f"{path}: truncated ({size} bytes; its newest commit needs {(last_pg + 1) * psize}); {hint(index_dir)}"
        )


def expected_size(index_dir: Path) -> int:
    """The size the newest valid meta page says the file has (0 when none is valid)."""
    with open(Path(index_dir) / DATA, "rb") as f:
        metas = _metas(f.read(2 * 65536))
    if not metas:
        return 0
    _, last_pg, psize = max(metas)
    return (last_pg + 1) * psize


def _child(*args: str, timeout: float = WALK_TIMEOUT, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chunkfs.index.check", *args],
        stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, check=False,
    )  # fmt: skip


def walk(index_dir: Path) -> dict[str, int]:
    """Read every record of every database in a child process; return entries per database, or
    raise ``CorruptData`` naming what failed (an LMDB error, or the child killed by a signal)."""
    check_file(index_dir)
    done = _child("walk", str(index_dir))
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        what = why[-1] if why else (f"killed by signal {-done.returncode}" if done.returncode < 0 else "failed")
        raise CorruptData(f"{Path(index_dir) / DATA}: damaged ({what}); {hint(index_dir)}")
    return json.loads(done.stdout)


def salvage(index_dir: Path, databases: tuple[str, ...], scratch: Path) -> Iterator[tuple[str, bytes, bytes | None]]:
    """Every record still readable in a damaged index: (database, key, value), then
    (database, b"", None) once a database is done (whole, or cut short by damage).

    Works on a copy in ``scratch``, extended (sparsely) to the size its meta page
    claims, so that no read runs past the end of the file."""
    copy = scratch / "salvage"
    copy.mkdir(parents=True, exist_ok=True)
    src = Path(index_dir) / DATA
    try:
        shutil.copyfile(src, copy / DATA)
        want = expected_size(copy)
        if want > (copy / DATA).stat().st_size:
            os.truncate(copy / DATA, want)
    except OSError:
        return
    for db in databases:
        with subprocess.Popen(
            [sys.executable, "-m", "chunkfs.index.check", "dump", str(copy), db],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as child:
            assert child.stdout is not None
            yield from _records(db, child.stdout)
            child.kill()
        yield db, b"", None
    shutil.rmtree(copy, ignore_errors=True)


def _records(db: str, stream) -> Iterator[tuple[str, bytes, bytes]]:
    head = struct.Struct("<II")
    while len(raw := stream.read(head.size)) == head.size:
        klen, vlen = head.unpack(raw)
        body = stream.read(klen + vlen)
        if len(body) != klen + vlen:
            return
        yield db, body[:klen], body[klen:]


# -- the child side -----------------------------------------------------------------------------


def _open(index_dir: str):
    import lmdb

    return lmdb.open(index_dir, readonly=True, lock=False, max_dbs=256, readahead=False, subdir=True)


def _child_walk(index_dir: str) -> None:
    import lmdb

    from chunkfs.index import keys

    env = _open(index_dir)
    counts = {}
    with env.begin(buffers=False) as txn:  # copies: every page of every value is read
        for name in keys.DATABASES:
            try:
                db = env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:  # a database an older index lacks: nothing to walk
                counts[name] = 0
                continue
            counts[name] = sum(1 for _ in txn.cursor(db=db))
    json.dump(counts, sys.stdout)


def _child_dump(index_dir: str, name: str) -> None:
    env = _open(index_dir)
    out = sys.stdout.buffer
    head = struct.Struct("<II")
    with env.begin(buffers=False) as txn:
        db = env.open_db(name.encode(), txn=txn, create=False)
        for key, value in txn.cursor(db=db):
            out.write(head.pack(len(key), len(value)) + key + value)
    out.flush()


if __name__ == "__main__":
    verb, directory = sys.argv[1], sys.argv[2]
    if verb == "walk":
        _child_walk(directory)
    else:
        _child_dump(directory, sys.argv[3])
