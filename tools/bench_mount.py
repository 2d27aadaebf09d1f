#!/usr/bin/env python3
"""Mount benchmark: checkpoint writes and reads through a chunkfs mount, beside a plain directory.

One run measures, through ``chunkfs mount`` (a fresh repository, mounted in a
temporary directory, always unmounted at the end) and through a plain directory
on the same disk, with the same bytes, interleaved (the order rotates from pass
to pass), ``--repeat`` times (medians reported):

1. fresh write   — a new safetensors file of random bf16 tensors (``--size``),
                   written with 1 MiB write() calls, fsync, close; then the same
                   without the fsync (write and close: what the FUSE path allows,
                   compared with the null filesystem below);
2. 10% changed   — the same file with ``--changed`` of its tensors (by bytes)
                   changed, written under a new name; prints the storage it added
                   (median, and the worst pass if that one misses the target);
3. 4 writers     — ``--writers`` processes writing ``--shard-size`` shards at
                   once (aggregate MB/s) vs one process writing one shard;
4. cold read     — the fresh file read back with 1 MiB reads after sync +
                   ``echo 3 > /proc/sys/vm/drop_caches`` (the mount is also
                   remounted first, so the daemon's chunk cache is empty).

Beside each figure: the ratio to the plain directory, the daemon's CPU seconds
per GB and, beside it, its engine worker processes' (user + system, from /proc:
much less sensitive than wall time to other load on a shared machine), the daemon's peak RSS (VmHWM of the pid in
REPO/lock), the mount's read_ahead_kb, and the targets. Phases 1 and 4 also run
on tools/nullfs.py (a pyfuse3 filesystem that stores nothing), directly and
through trio.to_thread: the FUSE ceiling of this machine (``--no-ceiling`` skips it).

Sources are generated once (``--sources DIR`` keeps them for the next run) and
read from the page cache, so the write side is what is measured. Must run as
root (FUSE mounts, drop_caches). ``--size 2G`` takes 4–6 minutes on 2 cores.

``--profile DIR`` adds one extra, unmeasured pass with ``py-spy record`` attached
to the daemon during each phase (raw collapsed stacks in DIR, summarised by
tools/pyspy_summary.py).

``--read-ab TREE --read-ab TREE …`` replaces the phases by an A/B of code versions
on the cold read, where one 3-pass run is too noisy to show a 10–20% change: one
repository, mounted in turn by the chunkfs of each source tree (``python -m
chunkfs`` run from TREE, e.g. ``git worktree add /tmp/base HEAD~2``), read cold
``--repeat`` rounds in alternating order beside a plain copy; medians per tree.
``--write-ab TREE --write-ab TREE …`` does the same for the fresh write: each
round writes the checkpoint to a plain directory and into a new repository
mounted by each tree in turn (daemon CPU seconds and minor page faults beside).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import numpy as np
from benchlib import MiB

TARGETS = {
    "fresh": "≥ 0.65× plain; daemon ≤ 0.6 CPU s/GB",
    "nosync": "≥ 0.75× null FS",
    "changed": "≥ 3× faster than fresh, ≤ 12% new storage",
    "writers": "≥ 0.65× plain, ≥ 1.3× one writer",
    "read": "≥ 0.80× plain",
    "rss": "< 512 MiB",
}


# -- mounting -------------------------------------------------------------------------------------


class Mount:
    """A chunkfs repository mounted with the CLI; unmounted on exit whatever happens."""

    def __init__(self, chunkfs: list[str], repo: Path, mnt: Path, cwd: Path | None = None) -> None:
        """``cwd``: run chunkfs (and so its daemon, ``python -m chunkfs``) from this source tree."""
        self.chunkfs, self.repo, self.mnt, self.cwd = chunkfs, repo, mnt, cwd
        self.mounted = False
        self.peak_rss_kb = 0

    def run(self, *args: str) -> None:
        done = subprocess.run([*self.chunkfs, *args], capture_output=True, check=False, text=True,
                              cwd=self.cwd)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"chunkfs {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")

    def init(self) -> None:
        self.run("init", str(self.repo))

    def mount(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        self.run("mount", str(self.repo), str(self.mnt))
        self.mounted = True

    @property
    def pid(self) -> int:
        return int((self.repo / "lock").read_text().split()[1])

    def rss_kb(self) -> int:
        """VmHWM (peak resident set) of the daemon, in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def umount(self) -> None:
        if not self.mounted:
            return
        try:
            self.peak_rss_kb = max(self.peak_rss_kb, self.rss_kb())
        except (OSError, ValueError, IndexError):
            pass
        try:
            self.run("umount", str(self.mnt))
        except RuntimeError:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, check=False)
            raise
        finally:
            self.mounted = False

    def remount(self) -> None:
        self.umount()
        self.mount()

    def read_ahead_kb(self) -> int | None:
        return read_ahead_kb(self.mnt)


def worker_pids(pid: int) -> list[int]:
    """The engine worker processes of the mount daemon ``pid`` (its children)."""
    kids = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(k) for k in (task / "children").read_text().split()]
    except OSError:
        return []
    return kids


def workers_cpu_seconds(pid: int) -> float:
    """CPU seconds of the daemon's engine workers so far (a worker that ended is not counted)."""
    total = 0.0
    for kid in worker_pids(pid):
        try:
            total += cpu_seconds(kid)
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def read_ahead_kb(mnt: Path) -> int | None:
    """The kernel read-ahead of the filesystem mounted at ``mnt`` (what sizes its FUSE reads)."""
    with open("/proc/self/mountinfo") as f:
        dev = [ln.split()[2] for ln in f if ln.split()[4] == str(mnt.resolve())]
    try:
        return int(Path(f"/sys/class/bdi/{dev[-1]}/read_ahead_kb").read_text()) if dev else None
    except OSError:
        return None


class NullMount:
    """tools/nullfs.py mounted at ``mnt``: the FUSE ceiling."""

    def __init__(self, mnt: Path, to_thread: bool, extra: list[str] | None = None) -> None:
        """``extra``: more arguments of nullfs.py (``--max-background 64``, ...)."""
        self.mnt, self.to_thread, self.extra = mnt, to_thread, list(extra or [])
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kb = 0

    def mount(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        ready = self.mnt.with_name(self.mnt.name + ".ready")
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "nullfs.py"), str(self.mnt), "--ready-file", str(ready)]
        cmd += ["--to-thread"] if self.to_thread else []
        self.proc = subprocess.Popen(cmd + self.extra, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nullfs did not mount at {self.mnt}")
            time.sleep(0.05)

    def umount(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, check=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, check=False)
            self.proc.kill()
        self.proc = None


_MOUNTS: list[Mount] = []


def _cleanup() -> None:
    for m in _MOUNTS:
        try:
            m.umount()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            bl.log(f"unmount {m.mnt}: {e}")


def _on_signal(signum, frame):
    _cleanup()
    sys.exit(128 + signum)


# -- profiling ------------------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to the daemon for the duration of one phase."""

    def __init__(self, pyspy: str | None, outdir: Path | None, extra: list[str]) -> None:
        self.pyspy, self.outdir, self.extra = pyspy, outdir, extra
        self.proc: subprocess.Popen | None = None

    def start(self, pid: int, name: str) -> None:
        if not self.pyspy or not self.outdir:
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        out = self.outdir / f"{name}.txt"
        self.proc = subprocess.Popen(
            [self.pyspy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
             "--rate", "250", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # attached before the phase starts

    def stop(self) -> None:
        if self.proc is None:
            return
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None


# -- the phases -----------------------------------------------------------------------------------


def _writer(src: str, dst: str, block: int, go, out) -> None:
    go.wait()
    try:
        bl.copy_file(Path(src), Path(dst), block)
        out.put(None)
    except OSError as e:
        out.put(f"{dst}: {e}")


def concurrent_writes(srcs: list[Path], dst_dir: Path, block: int) -> float:
    """Wall time of len(srcs) processes each writing one source into ``dst_dir``."""
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(s), str(dst_dir / f"shard-{i:02d}.safetensors"), block, go, out))
        for i, s in enumerate(srcs)
    ]
    for p in procs:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    go.set()
    errors = [e for e in (out.get() for _ in procs) if e]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    if errors:
        raise OSError(f"{len(errors)} of {len(procs)} writers failed: {errors[0]}")
    return wall


@dataclass
class Sources:
    fresh: Path
    fresh2: Path  # another checkpoint of the same shape and size, other bytes (the no-fsync phase)
    changed: Path
    shards: list[Path]  # shards[0] for the single writer, the rest for the concurrent ones
    changed_fraction: float
    size: int
    shard_size: int


def make_sources(d: Path, size: int, shard_size: int, writers: int, changed: float, seed: int) -> Sources:
    d.mkdir(parents=True, exist_ok=True)
    shapes = bl.transformer_layout(size)
    _, spans = bl.safetensors_header(shapes)
    change = bl.pick_fraction(spans, changed, seed)
    frac = sum(e - b for n, b, e in spans if n in change) / sum(e - b for _, b, e in spans)
    stamp = d / "sources.json"
    want = {"size": size, "shard_size": shard_size, "writers": writers, "changed": changed, "seed": seed}
    fresh, fresh2, chg = d / "fresh.safetensors", d / "fresh2.safetensors", d / "changed.safetensors"
    shards = [d / f"shard-{i:02d}.safetensors" for i in range(writers + 1)]
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in [fresh, fresh2, chg, *shards]):
        bl.log(f"reusing sources in {d}")
    else:
        t0 = time.perf_counter()
        bl.write_safetensors(fresh, shapes, seed)
        bl.write_safetensors(fresh2, shapes, seed + 50)
        bl.write_safetensors(chg, shapes, seed + 1, base=fresh, change=change)
        for i, p in enumerate(shards):
            bl.write_safetensors(p, bl.random_layout(shard_size, np.random.default_rng(i)), seed + 100 + i)
        stamp.write_text(json.dumps(want))
        os.sync()  # the sources' dirty pages must not be written back during the measurements
        bl.log(f"generated sources in {d} ({time.perf_counter() - t0:.0f}s)")
    return Sources(fresh, fresh2, chg, shards, frac, fresh.stat().st_size, shards[0].stat().st_size)


def one_pass(src: Sources, m: Mount, plain: Path, nulls: dict[str, NullMount], block: int, writers: int,
             rotation: int, prof: Profiler | None = None) -> dict:  # fmt: skip
    """Every phase once on every target, in an order rotated from pass to pass; seconds and bytes."""
    r: dict = {}
    mnt = m.mnt
    hot = m.repo / "hot"

    pids = {"chunkfs": lambda: m.pid, **{k: (lambda n=n: n.proc.pid) for k, n in nulls.items()}}

    def measure(phase: str, fns: dict[str, callable]) -> None:
        def profiled(fn):
            def run():
                if prof:
                    prof.start(m.pid, phase)
                try:
                    return fn()
                finally:
                    if prof:
                        prof.stop()

            return run

        def cpu_counted(target, fn):
            def run():
                pid = pids[target]()
                c0, w0 = cpu_seconds(pid), workers_cpu_seconds(pid)
                t = fn()
                r[phase][f"{target}_cpu_s"] = cpu_seconds(pid) - c0
                if target == "chunkfs":
                    r[phase]["workers_cpu_s"] = workers_cpu_seconds(pid) - w0
                return t

            return run

        fns = {k: profiled(f) if k == "chunkfs" else f for k, f in fns.items()}
        fns = {k: cpu_counted(k, f) if k in pids else f for k, f in fns.items()}
        order = list(fns)
        k = rotation % len(order)
        r[phase] = {}
        for target in order[k:] + order[:k]:
            try:
                r[phase][f"{target}_s"] = fns[target]()
            except OSError as e:  # reported, not fatal: the other phases still run
                bl.log(f"{phase} on {target} FAILED: {e}")
                r[phase][f"{target}_s"] = None
                r[phase][f"{target}_error"] = str(e)

    def write(source: Path, target: Path, fsync: bool = True):
        return lambda: bl.timed(bl.copy_file, source, target, block, fsync)[0]

    for base in (mnt, plain, *(n.mnt for n in nulls.values())):
        for sub in ("ckpt-0", "ckpt-1", "nosync", "single", "shards"):
            (base / sub).mkdir()
    for p in [src.fresh, src.fresh2, src.changed, *src.shards]:
        bl.warm(p)
    os.sync()
    name = src.fresh.name

    # 1. fresh write (and the FUSE ceiling: the same bytes into a filesystem that drops them)
    before = bl.tree_bytes(hot)
    measure("fresh", {"plain": write(src.fresh, plain / "ckpt-0" / name), "chunkfs": write(src.fresh, mnt / "ckpt-0" / name),
                      **{k: write(src.fresh, n.mnt / "ckpt-0" / name) for k, n in nulls.items()}})  # fmt: skip
    r["fresh"]["stored"] = bl.tree_bytes(hot) - before
    # another checkpoint of the same shape (no dedup with the first), written and closed, no fsync
    bl.warm(src.fresh2)
    measure("nosync", {"plain": write(src.fresh2, plain / "nosync" / name, False),
                       "chunkfs": write(src.fresh2, mnt / "nosync" / name, False),
                       **{k: write(src.fresh2, n.mnt / "nosync" / name, False) for k, n in nulls.items()}})  # fmt: skip
    os.sync()

    # 2. the same checkpoint with 10% of its tensors changed, under a new name
    bl.warm(src.changed)
    before = bl.tree_bytes(hot)
    measure("changed", {"plain": write(src.changed, plain / "ckpt-1" / name),
                        "chunkfs": write(src.changed, mnt / "ckpt-1" / name)})  # fmt: skip
    r["changed"]["stored"] = bl.tree_bytes(hot) - before

    # 3. one writer, then N writers at once (different data: no dedup between them)
    for p in src.shards:
        bl.warm(p)
    os.sync()
    measure("single", {"plain": write(src.shards[0], plain / "single" / "shard.safetensors"),
                       "chunkfs": write(src.shards[0], mnt / "single" / "shard.safetensors")})  # fmt: skip
    shards = src.shards[1 : writers + 1]
    measure("writers", {"plain": lambda: concurrent_writes(shards, plain / "shards", block),
                        "chunkfs": lambda: concurrent_writes(shards, mnt / "shards", block)})  # fmt: skip

    # 4. cold read of the fresh checkpoint: remount (empty daemon cache), drop the page cache
    m.remount()
    r["read_ahead_kb"] = m.read_ahead_kb()

    def cold(path: Path):
        def run() -> float:
            if not bl.drop_caches():
                raise RuntimeError("cannot drop the page cache (run as root)")
            return bl.timed(bl.read_file, path, block)[0]

        return run

    measure("read", {"plain": cold(plain / "ckpt-0" / name), "chunkfs": cold(mnt / "ckpt-0" / name),
                     **{k: cold(n.mnt / "ckpt-0" / name) for k, n in nulls.items()}})  # fmt: skip
    return r


def compare_reads(trees: list[Path], src: Sources, work: Path, block: int, rounds: int) -> dict:
    """Cold reads of one repository through each source tree's chunkfs in turn: code versions A/B.

    The fresh checkpoint is written once (through the first tree's mount) and a plain
    copy of it kept on the same disk; each round reads the plain copy and then, in an
    order that alternates from round to round, the checkpoint through a fresh mount
    by each tree (empty daemon cache, page cache dropped before every read).
    """
    repo, mnt, plain = work / "ab" / "repo", work / "ab" / "mnt", work / "ab" / "plain"
    plain.parent.mkdir()
    bl.copy_file(src.fresh, plain, block)
    m = Mount([sys.executable, "-m", "chunkfs"], repo, mnt, trees[0])
    _MOUNTS.append(m)
    m.init()
    m.mount()
    bl.copy_file(src.fresh, mnt / "ckpt", block)
    m.umount()
    _MOUNTS.remove(m)
    res: dict = {"plain": {"mb_s": []}}
    for tree in trees:
        res[str(tree)] = {"mb_s": [], "cpu_s_per_gb": [], "read_ahead_kb": []}
    gb = src.size / 1e9
    for r in range(rounds):
        if not bl.drop_caches():
            raise RuntimeError("cannot drop the page cache (run as root)")
        res["plain"]["mb_s"].append(src.size / 1e6 / bl.timed(bl.read_file, plain, block)[0])
        for tree in trees if r % 2 == 0 else trees[::-1]:
            m = Mount([sys.executable, "-m", "chunkfs"], repo, mnt, tree)
            _MOUNTS.append(m)
            m.mount()
            try:
                x = res[str(tree)]
                x["read_ahead_kb"].append(m.read_ahead_kb())
                bl.drop_caches()
                c0 = cpu_seconds(m.pid)
                x["mb_s"].append(src.size / 1e6 / bl.timed(bl.read_file, mnt / "ckpt", block)[0])
                x["cpu_s_per_gb"].append((cpu_seconds(m.pid) - c0) / gb)
            finally:
                m.umount()
                _MOUNTS.remove(m)
        bl.log(f"round {r + 1}: " + ", ".join(f"{k} {v['mb_s'][-1]:.0f} MB/s" for k, v in res.items()))
    for x in res.values():
        x["median_mb_s"] = bl.median(x["mb_s"])
        if "cpu_s_per_gb" in x:
            x["median_cpu_s_per_gb"] = bl.median(x["cpu_s_per_gb"])
            x["ratio"] = bl.median(a / b for a, b in zip(x["mb_s"], res["plain"]["mb_s"]))
    return res


def compare_writes(trees: list[Path], src: Sources, work: Path, block: int, rounds: int) -> dict:
    """Fresh writes through each source tree's chunkfs in turn: code versions A/B on the write path.

    Each round writes the fresh checkpoint (write() calls, fsync, close) to a plain
    directory and then, in an order that alternates from round to round, into a new
    repository mounted by each tree; the daemon's CPU seconds and minor page faults
    are counted around the write. The repository is removed after each write, so
    every write is fresh (nothing to dedup against).
    """
    res: dict = {"plain": {"mb_s": []}}
    for tree in trees:
        res[str(tree)] = {"mb_s": [], "cpu_s_per_gb": [], "faults_per_gib": []}
    gb = src.size / 1e9
    bl.warm(src.fresh)
    for r in range(rounds):
        plain = work / "ab-plain"
        os.sync()
        res["plain"]["mb_s"].append(src.size / 1e6 / bl.timed(bl.copy_file, src.fresh, plain, block)[0])
        plain.unlink()
        for i, tree in enumerate(trees if r % 2 == 0 else trees[::-1]):
            m = Mount([sys.executable, "-m", "chunkfs"], work / f"ab-repo-{i}", work / f"ab-mnt-{i}", tree)
            _MOUNTS.append(m)
            m.init()
            m.mount()
            try:
                x = res[str(tree)]
                os.sync()
                c0, f0 = cpu_seconds(m.pid), minor_faults(m.pid)
                x["mb_s"].append(src.size / 1e6 / bl.timed(bl.copy_file, src.fresh, m.mnt / "ckpt", block)[0])
                x["cpu_s_per_gb"].append((cpu_seconds(m.pid) - c0) / gb)
                x["faults_per_gib"].append((minor_faults(m.pid) - f0) * MiB * 1024 / src.size)
            finally:
                m.umount()
                _MOUNTS.remove(m)
                shutil.rmtree(m.repo)
        bl.log(f"round {r + 1}: " + ", ".join(f"{k} {v['mb_s'][-1]:.0f} MB/s" for k, v in res.items()))
    for x in res.values():
        x["median_mb_s"] = bl.median(x["mb_s"])
        if "cpu_s_per_gb" in x:
            x["median_cpu_s_per_gb"] = bl.median(x["cpu_s_per_gb"])
            x["median_faults_per_gib"] = bl.median(x["faults_per_gib"])
            x["ratio"] = bl.median(a / b for a, b in zip(x["mb_s"], res["plain"]["mb_s"]))
    return res


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(passes: list[dict], src: Sources, writers: int, peak_rss_kb: int) -> dict:
    med = bl.median
    size, shard = src.size, src.shard_size
    nbytes = {"fresh": size, "nosync": size, "changed": size, "single": shard, "writers": writers * shard, "read": size}
    out: dict = {}
    for phase, b in nbytes.items():
        t = lambda p, target, phase=phase: p[phase].get(f"{target}_s")
        out[phase] = {
            "bytes": b,
            "plain_mb_s": med(_div(b / 1e6, t(p, "plain")) for p in passes),
            "chunkfs_mb_s": med(_div(b / 1e6, t(p, "chunkfs")) for p in passes),
            "ratio": med(_div(t(p, "plain"), t(p, "chunkfs")) for p in passes),
            "failures": [p[phase][k] for p in passes for k in p[phase] if k.endswith("_error")],
        }
        for target in ("chunkfs", "workers", "null", "null_thread"):
            if f"{target}_cpu_s" in passes[0][phase]:
                out[phase][f"{target}_cpu_s_per_gb"] = med(
                    p[phase][f"{target}_cpu_s"] / (b / 1e9) if p[phase].get("chunkfs_s" if target == "workers" else f"{target}_s") else None
                    for p in passes
                )
        for null in ("null", "null_thread"):
            if f"{null}_s" in passes[0][phase]:
                out[phase][f"{null}_mb_s"] = med(_div(b / 1e6, t(p, null)) for p in passes)
                out[phase][f"{null}_ratio"] = med(_div(t(p, "plain"), t(p, null)) for p in passes)
                out[phase][f"chunkfs_vs_{null}"] = med(_div(t(p, null), t(p, "chunkfs")) for p in passes)
    out["fresh"]["stored_fraction"] = med(p["fresh"]["stored"] / size for p in passes)
    out["changed"]["stored_fraction"] = med(p["changed"]["stored"] / size for p in passes)
    out["changed"]["stored_fraction_worst"] = max(p["changed"]["stored"] / size for p in passes)
    out["changed"]["changed_fraction"] = src.changed_fraction
    out["changed"]["speedup_vs_fresh"] = med(_div(p["fresh"]["chunkfs_s"], p["changed"]["chunkfs_s"]) for p in passes)
    out["changed"]["speedup_vs_fresh_plain"] = med(_div(p["fresh"]["plain_s"], p["changed"]["plain_s"]) for p in passes)
    for target in ("chunkfs", "plain"):
        out["writers"][f"vs_single_{target}"] = med(
            _div(writers * p["single"][f"{target}_s"], p["writers"][f"{target}_s"])
            if p["single"][f"{target}_s"] else None
            for p in passes
        )
    out["rss_mib"] = peak_rss_kb / 1024
    out["read_ahead_kb"] = passes[0].get("read_ahead_kb")
    ge = lambda v, x: not math.isnan(v) and v >= x
    le = lambda v, x: v is not None and not math.isnan(v) and v <= x
    nosync_vs_null = out["nosync"].get("chunkfs_vs_null")
    out["verdict"] = {
        "fresh": ge(out["fresh"]["ratio"], 0.65) and le(out["fresh"].get("chunkfs_cpu_s_per_gb"), 0.6),
        "nosync": nosync_vs_null is not None and ge(nosync_vs_null, 0.75),
        "changed": ge(out["changed"]["speedup_vs_fresh"], 3) and out["changed"]["stored_fraction_worst"] <= 0.12,
        "writers": ge(out["writers"]["ratio"], 0.65) and ge(out["writers"]["vs_single_chunkfs"], 1.3)
        and not out["writers"]["failures"],
        "read": ge(out["read"]["ratio"], 0.8),
        "rss": out["rss_mib"] < 512,
    }
    return out


def print_report(s: dict, args, src: Sources) -> None:
    ok = lambda k: "[green]yes[/green]" if s["verdict"][k] else "[red]NO[/red]"
    cpu = lambda x, t="chunkfs": x.get(f"{t}_cpu_s_per_gb")
    wcpu = lambda x: x.get("workers_cpu_s_per_gb")
    f, ns, c, w, sg, rd = s["fresh"], s["nosync"], s["changed"], s["writers"], s["single"], s["read"]
    vs_null = f"{ns['chunkfs_vs_null']:.2f}× null FS" if "chunkfs_vs_null" in ns else "(no null FS run)"
    rows = [
        ["1. fresh write + fsync", f["plain_mb_s"], f["chunkfs_mb_s"], f"{f['ratio']:.2f}×", cpu(f), wcpu(f),
         f"stored {f['stored_fraction']:.1%} of size", TARGETS["fresh"], ok("fresh")],
        ["1b. fresh write, no fsync", ns["plain_mb_s"], ns["chunkfs_mb_s"], f"{ns['ratio']:.2f}×", cpu(ns), wcpu(ns),
         vs_null, TARGETS["nosync"], ok("nosync")],
        [f"2. {c['changed_fraction']:.0%} changed", c["plain_mb_s"], c["chunkfs_mb_s"], f"{c['ratio']:.2f}×", cpu(c), wcpu(c),
         f"{c['speedup_vs_fresh']:.2f}× faster than fresh; new storage {c['stored_fraction']:.1%}"
         + (f" (worst pass {c['stored_fraction_worst']:.0%})" if c["stored_fraction_worst"] > 0.12 else ""),
         TARGETS["changed"], ok("changed")],
        ["3a. one writer", sg["plain_mb_s"], sg["chunkfs_mb_s"], f"{sg['ratio']:.2f}×", cpu(sg), wcpu(sg), "", "", ""],
        [f"3b. {args.writers} writers", w["plain_mb_s"], w["chunkfs_mb_s"], f"{w['ratio']:.2f}×", cpu(w), wcpu(w),
         f"aggregate {w['vs_single_chunkfs']:.2f}× one writer (plain {w['vs_single_plain']:.2f}×)"
         + (f"; {len(w['failures'])} FAILED runs: {w['failures'][0][-40:]}" if w["failures"] else ""),
         TARGETS["writers"], ok("writers")],
        ["4. cold read", rd["plain_mb_s"], rd["chunkfs_mb_s"], f"{rd['ratio']:.2f}×", cpu(rd), wcpu(rd),
         f"mount read_ahead_kb {s['read_ahead_kb']}", TARGETS["read"], ok("read")],
        ["daemon peak RSS", None, None, "", None, None, f"{s['rss_mib']:.0f} MiB", TARGETS["rss"], ok("rss")],
    ]  # fmt: skip
    for null, label in (("null", "null FS"), ("null_thread", "null FS + to_thread")):
        for phase, x in (("fresh write + fsync", f), ("fresh write, no fsync", ns), ("cold read", rd)):
            if f"{null}_mb_s" in x:
                rows.append([f"ceiling: {label}, {phase}", x["plain_mb_s"], x[f"{null}_mb_s"],
                             f"{x[f'{null}_ratio']:.2f}×", cpu(x, null), None,
                             f"chunkfs reaches {x[f'chunkfs_vs_{null}']:.2f}× of it", "", ""])  # fmt: skip
    bl.print_table(
        f"mount benchmark: {src.size / MiB:,.0f} MiB checkpoint, {src.shard_size / MiB:,.0f} MiB shards "
        f"(median of {args.repeat})",
        ["phase", "plain MB/s", "chunkfs MB/s", "ratio", "daemon CPU s/GB", "workers CPU s/GB", "", "target", "met"],
        rows,
        note="ratio = throughput / plain directory on the same disk, same bytes, same run; "
        "ceiling rows: tools/nullfs.py (stores nothing) in the chunkfs MB/s column",
    )



def _report_ab(args, key: str, title: str, ab: dict, last_column: str, last_value) -> None:
    """Print an A/B comparison (``--read-ab``, ``--write-ab``): JSON, or a table with the plain
    directory first and ``last_value(row)`` in its last column."""
    if args.json:
        json.dump({"args": vars(args), key: ab}, sys.stdout, indent=2)
        print()
        return
    bl.print_table(
        f"{title} (median of {args.repeat} rounds)",
        ["chunkfs source tree", "MB/s", "ratio to plain", "daemon CPU s/GB", last_column],
        [["plain directory", ab["plain"]["median_mb_s"], "", None, ""]]
        + [[k, x["median_mb_s"], f"{x['ratio']:.2f}×", x["median_cpu_s_per_gb"], last_value(x)]
           for k, x in ab.items() if k != "plain"],
    )  # fmt: skip

def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--size", default="2G", help="checkpoint size (default 2G)")
    p.add_argument("--shard-size", default=None, help="size of each concurrent writer's shard (default SIZE/4)")
    p.add_argument("--writers", type=int, default=4, help="concurrent writer processes (default 4)")
    p.add_argument("--changed", type=float, default=0.10, help="fraction of tensors changed in phase 2 (default 0.10)")
    p.add_argument("--block", default="1M", help="write()/read() size (default 1M)")
    p.add_argument("--repeat", type=int, default=3, help="measured passes; medians are reported (default 3)")
    p.add_argument("--workdir", default="/var/tmp", help="disk under test (default /var/tmp)")
    p.add_argument("--sources", default=None, help="directory to keep generated sources in and reuse (default: temporary)")
    p.add_argument("--chunkfs", default=None, help="command that runs chunkfs (default: this python -m chunkfs)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the null-filesystem reference (tools/nullfs.py)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="one extra unmeasured pass with py-spy attached to the daemon; raw stacks in DIR")  # fmt: skip
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable (for --profile)")
    p.add_argument("--py-spy-arg", action="append", default=[], help="extra py-spy record argument (e.g. --gil)")
    p.add_argument("--read-ab", action="append", default=[], metavar="TREE",
                   help="instead of the phases: cold reads only, through the chunkfs of each source "
                   "TREE given (a git worktree of the base commit, this one…), --repeat rounds")  # fmt: skip
    p.add_argument("--write-ab", action="append", default=[], metavar="TREE",
                   help="instead of the phases: fresh writes only, into a new repository mounted by the "
                   "chunkfs of each source TREE given, --repeat rounds")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("must run as root (FUSE mounts and drop_caches)")
    size = bl.parse_size(args.size)
    shard = bl.parse_size(args.shard_size) if args.shard_size else size // 4
    block = bl.parse_size(args.block)
    chunkfs = args.chunkfs.split() if args.chunkfs else [sys.executable, "-m", "chunkfs"]
    if args.profile and not args.py_spy:
        p.error("--profile needs py-spy (pip install py-spy, or --py-spy PATH)")

    atexit.register(_cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="chunkfs-bench-mount-", dir=args.workdir))
    src_dir = Path(args.sources) if args.sources else work / "src"
    t_start = time.perf_counter()
    try:
        src = make_sources(src_dir, size, shard, args.writers, args.changed, args.seed)
        if args.read_ab:
            ab = compare_reads([Path(t).resolve() for t in args.read_ab], src, work, block, args.repeat)
            _report_ab(args, "read_ab", f"cold read A/B: {src.size / MiB:,.0f} MiB checkpoint", ab,
                       "read_ahead_kb", lambda x: x["read_ahead_kb"][0])  # fmt: skip
            return 0
        if args.write_ab:
            ab = compare_writes([Path(t).resolve() for t in args.write_ab], src, work, block, args.repeat)
            _report_ab(args, "write_ab", f"fresh write A/B: {src.size / MiB:,.0f} MiB checkpoint", ab,
                       "minor faults/GiB", lambda x: f"{x['median_faults_per_gib']:,.0f}")  # fmt: skip
            return 0
        passes = []
        peak = 0
        plan = [(i, False) for i in range(args.repeat)] + ([(args.repeat, True)] if args.profile else [])
        for i, profiled in plan:
            run = work / f"pass-{i}"
            run.mkdir()
            plain = run / "plain"
            plain.mkdir()
            m = Mount(chunkfs, run / "repo", run / "mnt")
            nulls = {} if args.no_ceiling or profiled else {
                "null": NullMount(run / "null", False), "null_thread": NullMount(run / "null-thread", True)}  # fmt: skip
            _MOUNTS.extend([m, *nulls.values()])
            m.init()
            m.mount()
            for n in nulls.values():
                n.mount()
            prof = Profiler(args.py_spy, Path(args.profile), args.py_spy_arg) if profiled else None
            t0 = time.perf_counter()
            try:
                r = one_pass(src, m, plain, nulls, block, args.writers, rotation=i, prof=prof)
            finally:
                for x in [m, *nulls.values()]:
                    x.umount()
                    _MOUNTS.remove(x)
            bl.log(f"pass {i + 1}{' (profiled, not counted)' if profiled else ''}: {time.perf_counter() - t0:.0f}s")
            if not profiled:
                passes.append(r)
                peak = max(peak, m.peak_rss_kb)
            shutil.rmtree(run)
        if not passes:
            bl.log("no measured passes (--repeat 0)")
            return 0
        summary = summarise(passes, src, args.writers, peak)
        summary["wall_s"] = time.perf_counter() - t_start
        if args.json:
            json.dump({"args": vars(args), "code": bl.code_version(), "summary": summary, "passes": passes}, sys.stdout, indent=2)
            print()
        else:
            print_report(summary, args, src)
            code = bl.code_version()
            bl.log(f"chunkfs at {code['head']}{' + uncommitted changes' if code['dirty'] else ''}")
    finally:
        _cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
