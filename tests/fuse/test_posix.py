"""POSIX semantics of the mount: attributes, directories, renames, links, xattrs, statfs, permissions."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest
from helpers.mount import RENAME_EXCHANGE, RENAME_NOREPLACE, is_mounted, renameat2


def test_chmod_chown_utime(mnt):
    p = mnt / "f"
    p.write_bytes(b"x")
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_111_111_111_123_456_789, 1_222_222_222_987_654_321))
    os.mkdir(mnt / "d", 0o700)
    os.chmod(mnt / "d", 0o2751)
    for _ in range(2):  # before and after a remount: attributes are stored, not just cached
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o640 and stat.S_ISREG(st.st_mode)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert st.st_atime_ns == 1_111_111_111_123_456_789
        assert st.st_mtime_ns == 1_222_222_222_987_654_321
        assert stat.S_IMODE(os.stat(mnt / "d").st_mode) == 0o2751
        mnt.remount()
    before = os.stat(p).st_ctime_ns
    os.chmod(p, 0o600)
    assert os.stat(p).st_ctime_ns >= before


def test_large_directory(mnt):
    d = mnt / "many"
    d.mkdir()
    names = {f"file-{i:05d}-{'x' * (i % 40)}" for i in range(5000)}
    for name in names:
        (d / name).touch()
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        seen = [e.name for e in it]
    assert len(seen) == len(names) and set(seen) == names  # no duplicates, nothing skipped
    # delete while iterating: every remaining entry is still listed exactly once
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            if i % 2:
                os.unlink(entry.path)
    remaining = os.listdir(d)
    assert len(remaining) == len(set(remaining)) == 2500
    mnt.remount()
    assert sorted(os.listdir(d)) == sorted(remaining)


def test_mkdir_rmdir(mnt):
    os.makedirs(mnt / "a/b/c")
    assert os.stat(mnt / "a").st_nlink == 3  # ., its entry in /, b's ..
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "a")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(mnt / "a")
    with pytest.raises(NotADirectoryError):
        (mnt / "file").touch()
        os.rmdir(mnt / "file")
    with pytest.raises(IsADirectoryError):
        os.unlink(mnt / "a")
    os.rmdir(mnt / "a/b/c")
    os.rmdir(mnt / "a/b")
    assert os.stat(mnt / "a").st_nlink == 2
    os.rmdir(mnt / "a")
    assert sorted(os.listdir(mnt.path)) == ["file"]


def test_rename(mnt):
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    os.rename(mnt / "a", mnt / "b")  # replaces an existing file
    assert os.listdir(mnt.path) == ["b"] and (mnt / "b").read_bytes() == b"A"

    os.makedirs(mnt / "d1/sub")
    (mnt / "d1/sub/f").write_bytes(b"in d1")
    os.mkdir(mnt / "d2")
    os.rename(mnt / "d1", mnt / "d2")  # over an empty directory
    assert (mnt / "d2/sub/f").read_bytes() == b"in d1" and not (mnt / "d1").exists()

    os.mkdir(mnt / "full")
    (mnt / "full/x").touch()
    with pytest.raises(OSError) as e:
        os.rename(mnt / "d2", mnt / "full")
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(IsADirectoryError):
        os.rename(mnt / "b", mnt / "full")
    with pytest.raises(NotADirectoryError):
        os.rename(mnt / "full", mnt / "b")
    with pytest.raises(OSError) as e:
        os.rename(mnt / "d2", mnt / "d2/sub/inside")
    assert e.value.errno == errno.EINVAL

    os.rename(mnt / "d2/sub", mnt / "sub")  # across directories: link counts follow
    assert os.stat(mnt / "d2").st_nlink == 2 and os.stat(mnt / "sub").st_nlink == 2

    with pytest.raises(FileExistsError):
        renameat2(mnt / "b", mnt / "sub/f", RENAME_NOREPLACE)
    renameat2(mnt / "b", mnt / "c", RENAME_NOREPLACE)
    renameat2(mnt / "c", mnt / "sub/f", RENAME_EXCHANGE)
    assert (mnt / "c").read_bytes() == b"in d1" and (mnt / "sub/f").read_bytes() == b"A"

    mnt.remount()
    assert sorted(os.listdir(mnt.path)) == ["c", "d2", "full", "sub"]
    assert (mnt / "sub/f").read_bytes() == b"A"


def test_rename_over_open_file(mnt):
    (mnt / "old").write_bytes(b"old content")
    (mnt / "new").write_bytes(b"new content")
    with open(mnt / "old", "rb") as r:
        os.rename(mnt / "new", mnt / "old")
        assert r.read() == b"old content"
        assert (mnt / "old").read_bytes() == b"new content"
    mnt.remount()
    assert mnt.stats()["logical_bytes"] == len(b"new content")


def test_symlinks(mnt):
    (mnt / "target").write_bytes(b"pointed to")
    os.symlink("target", mnt / "rel")
    os.symlink("/nonexistent/" + "x" * 200, mnt / "dangling")
    os.mkdir(mnt / "dir")
    os.symlink("../target", mnt / "dir/up")
    for _ in range(2):
        assert os.readlink(mnt / "rel") == "target"
        assert os.lstat(mnt / "rel").st_size == len("target")
        assert stat.S_ISLNK(os.lstat(mnt / "dangling").st_mode)
        assert os.lstat(mnt / "dangling").st_size == len("/nonexistent/") + 200
        assert (mnt / "rel").read_bytes() == b"pointed to"
        assert (mnt / "dir/up").read_bytes() == b"pointed to"
        assert not (mnt / "dangling").exists()
        mnt.remount()
    os.unlink(mnt / "rel")
    assert (mnt / "target").exists()


def test_hard_links(mnt):
    (mnt / "a").write_bytes(b"shared")
    os.mkdir(mnt / "d")
    os.link(mnt / "a", mnt / "d/b")
    assert os.stat(mnt / "a").st_nlink == 2
    assert os.stat(mnt / "a").st_ino == os.stat(mnt / "d/b").st_ino
    with open(mnt / "d/b", "ab") as f:
        f.write(b" and changed")
    assert (mnt / "a").read_bytes() == b"shared and changed"
    mnt.remount()
    assert os.stat(mnt / "d/b").st_nlink == 2
    assert (mnt / "a").read_bytes() == b"shared and changed"
    os.unlink(mnt / "a")
    assert os.stat(mnt / "d/b").st_nlink == 1
    assert (mnt / "d/b").read_bytes() == b"shared and changed"
    with pytest.raises(PermissionError):  # hard links to directories: EPERM from the kernel
        os.link(mnt / "d", mnt / "d2")


def test_xattrs(mnt):
    p = mnt / "f"
    p.write_bytes(b"x")
    os.setxattr(p, "user.model", b"llama-8b")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.big", bytes(range(256)) * 16)
    with pytest.raises(FileExistsError):
        os.setxattr(p, "user.model", b"other", os.XATTR_CREATE)
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.missing", b"v", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    os.setxattr(p, "user.model", b"llama-70b", os.XATTR_REPLACE)
    mnt.remount()
    assert sorted(os.listxattr(p)) == ["user.big", "user.empty", "user.model"]
    assert os.getxattr(p, "user.model") == b"llama-70b"
    assert os.getxattr(p, "user.empty") == b""
    assert os.getxattr(p, "user.big") == bytes(range(256)) * 16
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.missing")
    assert e.value.errno == errno.ENODATA
    os.removexattr(p, "user.empty")
    with pytest.raises(OSError) as e:
        os.removexattr(p, "user.empty")
    assert e.value.errno == errno.ENODATA
    assert sorted(os.listxattr(p)) == ["user.big", "user.model"]
    os.mkdir(mnt / "d")
    os.setxattr(mnt / "d", "user.run", b"r1")  # directories carry them too
    assert os.getxattr(mnt / "d", "user.run") == b"r1"
    assert subprocess.run(["getfattr", "-n", "user.model", "--only-values", str(p)],
                          capture_output=True, check=True).stdout == b"llama-70b"  # fmt: skip


def test_statfs_matches_hot_tier(mnt):
    ours, hot = os.statvfs(mnt.path), os.statvfs(mnt.repo / "hot")
    free = lambda s: s.f_bavail * s.f_frsize
    assert ours.f_blocks * ours.f_frsize == hot.f_blocks * hot.f_frsize
    assert abs(free(ours) - free(hot)) < 256 << 20  # others write to this disk at the same time
    assert ours.f_namemax == 255


def test_fsync_and_fsyncdir(mnt):
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert (mnt / "f").read_bytes() == b"durable"


def run_as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True, check=False,
                          text=True)  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (runuser)")
def test_permissions_other_user(make_mount):
    mnt = make_mount(options=["allow_other"])
    os.chmod(mnt.path, 0o755)
    (mnt / "secret").write_bytes(b"root only")
    os.chmod(mnt / "secret", 0o600)
    (mnt / "public").write_bytes(b"everyone")
    os.chmod(mnt / "public", 0o644)
    os.mkdir(mnt / "dir", 0o755)

    denied = run_as_nobody("cat", str(mnt / "secret"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = run_as_nobody("touch", str(mnt / "dir/x"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert not (mnt / "dir/x").exists()
    denied = run_as_nobody("rm", "-f", str(mnt / "public"))
    assert denied.returncode != 0 and (mnt / "public").exists()
    allowed = run_as_nobody("cat", str(mnt / "public"))
    assert allowed.returncode == 0 and allowed.stdout == "everyone"
    assert run_as_nobody("ls", str(mnt / "dir")).returncode == 0

    os.mkdir(mnt / "open")
    os.chmod(mnt / "open", 0o777)
    assert run_as_nobody("touch", str(mnt / "open/mine")).returncode == 0
    st = os.stat(mnt / "open/mine")
    assert (st.st_uid, st.st_gid) == (65534, 65534), "files belong to the user who created them"
    assert is_mounted(mnt.path)
