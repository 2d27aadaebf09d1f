"""``cp -a`` and ``rsync -a`` of a tree with symlinks, a hard link, xattrs and modes, in and out."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

MiB = 1 << 20


def make_tree(root: Path) -> None:
    rng = random.Random(7)
    (root / "run1/checkpoint-100").mkdir(parents=True)
    (root / "run1/checkpoint-100/model.bin").write_bytes(rng.randbytes(9 * MiB + 3))
    (root / "run1/checkpoint-100/small.json").write_text('{"step": 100}\n')
    (root / "run1/empty").write_bytes(b"")
    (root / "run1/sparse").write_bytes(b"")
    os.truncate(root / "run1/sparse", 5 * MiB)
    (root / "run1/empty-dir").mkdir()
    (root / "run1/secret").write_bytes(b"mode 600")
    os.chmod(root / "run1/secret", 0o600)
    (root / "run1/script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run1/script.sh", 0o755)
    os.chmod(root / "run1/checkpoint-100", 0o750)
    os.symlink("checkpoint-100/model.bin", root / "run1/latest")
    os.symlink("/does/not/exist", root / "run1/dangling")
    os.link(root / "run1/checkpoint-100/small.json", root / "run1/hardlink.json")
    os.setxattr(root / "run1/checkpoint-100/model.bin", "user.step", b"100")
    os.setxattr(root / "run1/checkpoint-100", "user.kind", b"checkpoint")
    os.chown(root / "run1/script.sh", 1000, 1000)
    os.utime(root / "run1/checkpoint-100/model.bin", ns=(1_600_000_000_000_000_000, 1_650_000_000_123_456_789))
    os.utime(root / "run1/empty", ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000))
    for link in ("latest", "dangling"):  # rsync skips a symlink's mtime when it is in the same second
        os.utime(root / "run1" / link, ns=(1_600_000_000_000_000_000, 1_550_000_000_000_000_000), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple]:
    """Everything cp -a / rsync -a promise to keep, per relative path."""
    out = {}
    inodes: dict[int, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                content = None
            link = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {x: os.getxattr(p, x) for x in os.listxattr(p)}
            mtime = st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None  # dirs: changed by later entries
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if content else 0,
                        mtime, content, link, xattrs)  # fmt: skip
    return out


def test_cp_a_in_and_out(mnt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    subprocess.run(["cp", "-a", str(src / "run1"), str(mnt.path)], check=True)
    assert describe(mnt / "run1") == describe(src / "run1")
    mnt.remount()
    assert describe(mnt / "run1") == describe(src / "run1")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cp", "-a", str(mnt / "run1"), str(out)], check=True)
    assert describe(out / "run1") == describe(src / "run1")
    subprocess.run(["diff", "-r", "--no-dereference", str(src / "run1"), str(out / "run1")], check=True)


def test_rsync_a_in_and_out(mnt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    rsync = ["rsync", "-aHX", "--numeric-ids"]  # -a plus hard links and xattrs, which -a leaves out
    subprocess.run([*rsync, str(src / "run1"), str(mnt.path)], check=True)
    assert describe(mnt / "run1") == describe(src / "run1")
    # a second run finds nothing to copy: sizes and mtimes came through exactly
    again = subprocess.run([*rsync, "--itemize-changes", str(src / "run1"), str(mnt.path)],
                           check=True, capture_output=True, text=True)  # fmt: skip
    assert [line for line in again.stdout.splitlines() if not line.startswith(".d")] == []
    mnt.remount()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([*rsync, str(mnt / "run1"), str(out)], check=True)
    assert describe(out / "run1") == describe(src / "run1")
    subprocess.run(["diff", "-r", "--no-dereference", str(src / "run1"), str(out / "run1")], check=True)


@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_update_in_place(mnt, tmp_path, tool):
    """Copy a tree over itself after a change: only the changed file differs afterwards."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    cmd = ["cp", "-a"] if tool == "cp" else ["rsync", "-aHX", "--inplace"]
    subprocess.run([*cmd, str(src / "run1"), str(mnt.path)], check=True)
    with open(src / "run1/checkpoint-100/model.bin", "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"changed")
    subprocess.run([*cmd, str(src / "run1"), str(mnt.path)], check=True)
    assert describe(mnt / "run1") == describe(src / "run1")
