"""Names under load: once rename or unlink returns, nobody sees the old name (DESIGN, "Names").

The atomic-save pattern of every trainer — write ``tmp``, fsync, close, rename over
``latest`` — with other processes listing the directory at the same time. A listing
served from a snapshot taken at opendir re-seeded the kernel's dentry cache with
names that no longer existed: ``stat(tmp)`` still answered after the rename, and the
next ``open(tmp, O_CREAT|O_TRUNC)`` truncated the committed checkpoint.
"""

from __future__ import annotations

import os
import threading

from helpers import loadworkers


def test_listing_never_brings_back_a_renamed_name(mnt):
    d = mnt / "run"
    d.mkdir()
    stop = threading.Event()
    errors: list[BaseException] = []

    def list_forever():
        try:
            while not stop.is_set():
                os.listdir(d)
        except BaseException as e:  # noqa: BLE001 — reported by the main thread
            errors.append(e)

    listers = [threading.Thread(target=list_forever) for _ in range(4)]
    for t in listers:
        t.start()
    problems = []
    try:
        for i in range(1000):
            fd = os.open(d / "latest.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            if i and os.stat(d / "latest.bin").st_size != 1 << 20:
                problems.append(f"{i}: creating latest.tmp truncated latest.bin")
            os.write(fd, i.to_bytes(8, "big") * (1 << 17))
            os.fsync(fd)
            os.close(fd)
            os.rename(d / "latest.tmp", d / "latest.bin")
            if os.path.lexists(d / "latest.tmp"):
                problems.append(f"{i}: latest.tmp still there after the rename")
            with open(d / "latest.bin", "rb") as f:
                if f.read(8) != i.to_bytes(8, "big"):
                    problems.append(f"{i}: latest.bin shows an older save")
            if len(problems) > 5:
                break
    finally:
        stop.set()
        for t in listers:
            t.join()
    assert not errors, errors
    assert not problems, problems


def test_unlinked_name_is_gone_while_listed(mnt):
    d = mnt / "d"
    d.mkdir()
    stop = threading.Event()
    lister = threading.Thread(target=lambda: [os.listdir(d) for _ in iter(stop.is_set, True)])
    lister.start()
    try:
        for i in range(300):
            (d / "f").write_bytes(b"x")
            os.unlink(d / "f")
            assert not os.path.lexists(d / "f"), f"iteration {i}: f still exists after unlink"
            fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # EEXIST if the name came back
            os.close(fd)
            os.unlink(d / "f")
    finally:
        stop.set()
        lister.join()


def test_writers_listers_readers_under_load(mnt):
    """A bounded load test: 3 writer processes replacing files by rename and unlinking, 2 listers
    (``ls -l``), 2 readers checking every byte they read; then the same files after a remount."""
    d = mnt / "load"
    d.mkdir()
    steps, seconds = 40, 20.0
    procs = [loadworkers.spawn("writer", d, w, steps) for w in range(3)]
    procs += [loadworkers.spawn("lister", d, seconds / 2) for _ in range(2)]
    procs += [loadworkers.spawn("reader", d, seconds / 2) for _ in range(2)]
    failures = loadworkers.failures(procs)
    assert not failures, "\n".join(failures)
    mnt.remount()
    for w in range(3):
        assert (d / f"w{w}.bin").read_bytes() == loadworkers.content(w, steps - 1)
        linked = max(s for s in range(steps) if s % 3 == 2)  # the save hard-linked to .old last
        assert (d / f"w{w}.old").read_bytes() == loadworkers.content(w, linked)
        assert not (d / f"w{w}.tmp").exists()
