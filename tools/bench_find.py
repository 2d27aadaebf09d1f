#!/usr/bin/env python3
"""Registry query benchmark: ``chunkfs find`` and ``@latest``/``@best`` on 10,000 checkpoints.

Builds a repository whose tree is MODEL/BASE/ADAPTER/RUN/checkpoint-STEP
(default 5 x 2 x 5 x 10 runs x 20 steps = 10,000 checkpoint directories), each
with a Hugging Face-style ``trainer_state.json`` and a ``chunkfs.json`` fed to
the registry's hooks, all in one index transaction (the directories are made
with the index's typed API: making 10,000 directories one commit at a time
would time fsyncs, not the registry). Then it times, in a repository opened
read-only as the CLI opens it:

* ``find --model M --latest``           newest checkpoint of a model (2,000 of them here)
* ``find --run R --step N``             one run at one step, the run named alone
* ``find --where 'eval_loss<0.3' --sort eval_loss --limit 5``   a full scan with metadata
* ``latest()``/``best()`` at each level, and ``links()`` (what a FUSE lookup of @latest costs)
* the whole ``chunkfs find`` command in a new process (interpreter start-up included)

Each figure is the median of ``--repeat`` runs. Examples::

    python tools/bench_find.py
    python tools/bench_find.py --runs 50 --steps 40 --json
"""

from __future__ import annotations

import argparse
import json
import random
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chunkfs import clock
from chunkfs.namespace.registry import Registry
from chunkfs.repo import Repository
from chunkfs.types import InodeRecord


@dataclass(frozen=True)
class Shape:
    models: int = 5
    bases: int = 2
    adapters: int = 5
    runs: int = 10
    steps: int = 20
    step_every: int = 500

    @property
    def total(self) -> int:
        return self.models * self.bases * self.adapters * self.runs * self.steps


def _trainer_state(step: int, eval_loss: float) -> bytes:
    epoch = step / 10000
    history = [
        {"epoch": epoch, "grad_norm": 1.2, "learning_rate": 2e-4, "loss": eval_loss + 0.1, "step": step - 10},
        {"epoch": epoch, "eval_loss": eval_loss, "eval_accuracy": 1 - eval_loss, "step": step},
    ]
    state = {
        "best_metric": eval_loss, "best_model_checkpoint": f"out/checkpoint-{step}", "epoch": step / 10000,
        "global_step": step, "log_history": history, "max_steps": 100000, "train_batch_size": 8,
    }  # fmt: skip
    return json.dumps(state, indent=2, sort_keys=True).encode()


def build(repo_path: Path, shape: Shape, seed: int = 0) -> float:
    """Create the repository and its checkpoint records; seconds it took."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    Repository.create(repo_path).close()
    with Repository(repo_path) as repo:
        reg = Registry(repo.index, repo.settings.registry)
        now = clock.now_ns()
        with repo.index.write() as t:
            made: dict[str, int] = {"": 1}

            def mkdir(path: str) -> int:
                if path in made:
                    return made[path]
                parent, name = path.rsplit("/", 1)
                pino = mkdir(parent)
                ino = t.next_inode()
                t.inode_put(ino, InodeRecord(stat.S_IFDIR | 0o755, 0, 0, 2, 0, now, now, now))
                t.dirent_put(pino, name.encode(), ino)
                made[path] = ino
                reg.on_dir_changed(t, ino, path)
                return ino

            for m in range(shape.models):
                for b in range(shape.bases):
                    for a in range(shape.adapters):
                        for r in range(shape.runs):
                            floor = 0.05 if r == 0 else rng.uniform(0.05, 0.6)  # each adapter has a good run
                            for s in range(1, shape.steps + 1):
                                step = s * shape.step_every
                                path = f"/model{m}/base{b}/adapter{a}/run-{m}-{b}-{a}-{r}/checkpoint-{step}"
                                ino = mkdir(path)
                                loss = round(floor + 0.5 * (1 - s / shape.steps) + rng.uniform(0, 0.05), 4)
                                state = _trainer_state(step, loss)
                                reg.on_file_committed(ino, "trainer_state.json", state, txn=t)
                                user = {"git_commit": f"{rng.getrandbits(40):010x}", "hardware": "8xH100"}
                                reg.on_file_committed(ino, "chunkfs.json", json.dumps(user).encode(), txn=t)
    return time.perf_counter() - t0


def _time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, result


def _count(result) -> int:
    if result is None:
        return 0
    return len(result) if isinstance(result, (list, dict)) else 1


def measure(repo_path: Path, shape: Shape, repeat: int) -> dict[str, dict]:
    """Median milliseconds and result counts of each query."""
    last = f"{shape.runs - 1}"
    run_dir = f"/model0/base0/adapter0/run-0-0-0-{last}"
    step = shape.step_every * (shape.steps // 2 or 1)
    with Repository(repo_path, writable=False) as repo:
        reg = Registry(repo.index, repo.settings.registry)
        queries = {
            "find --model M --latest": lambda: reg.find(model="model0", latest=True),
            "find --run R --step N": lambda: reg.find(run=f"run-0-0-0-{last}", step=step),
            "find --model M --base B --adapter A --run R --step N": lambda: reg.find(
                model="model0", base="base0", adapter="adapter0", run=f"run-0-0-0-{last}", step=step
            ),
            "find --latest (everything)": lambda: reg.find(latest=True),
            "find --where 'eval_loss<0.3' --sort eval_loss --limit 5": lambda: reg.find(
                where="eval_loss<0.3", sort="eval_loss", limit=5
            ),
            "find --model M --where 'eval_loss<0.3' --sort eval_loss --limit 5": lambda: reg.find(
                model="model0", where="eval_loss<0.3", sort="eval_loss", limit=5
            ),
            "latest(model dir)": lambda: reg.latest("/model0"),
            "latest(base dir)": lambda: reg.latest("/model0/base0"),
            "latest(adapter dir)": lambda: reg.latest("/model0/base0/adapter0"),
            "latest(run dir)": lambda: reg.latest(run_dir),
            "best(model dir)": lambda: reg.best("/model0"),
            "best(base dir)": lambda: reg.best("/model0/base0"),
            "best(adapter dir)": lambda: reg.best("/model0/base0/adapter0"),
            "best(run dir)": lambda: reg.best(run_dir),
            "links(model dir): @latest + @best": lambda: reg.links("/model0"),
            "links(run dir): @latest + @best": lambda: reg.links(run_dir),
            "level_of(adapter dir)": lambda: reg.level_of("/model0/base0/adapter0"),
        }
        out = {}
        for name, fn in queries.items():
            ms, result = _time(fn, repeat)
            out[name] = {"ms": round(ms, 3), "results": _count(result)}
    return out


def measure_cli(repo_path: Path, repeat: int) -> dict[str, dict]:
    """Wall time of whole ``chunkfs find`` commands (a new Python process each)."""
    out = {}
    for name, args in (
        ("chunkfs find --model M --latest (process)", ["--model", "model0", "--latest"]),
        (
            "chunkfs find --where ... --limit 5 (process)",
            ["--where", "eval_loss<0.3", "--sort", "eval_loss", "--limit", "5"],
        ),
    ):
        cmd = [sys.executable, "-m", "chunkfs", "find", "--repo", str(repo_path), "--json", *args]
        ms, done = _time(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True, check=True),
                         repeat)  # fmt: skip
        out[name] = {"ms": round(ms, 1), "results": len(json.loads(done.stdout))}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import chunkfs.cli.main"], check=True)
    startup_ms = round((time.perf_counter() - t0) * 1000, 1)
    out["python -c 'import chunkfs.cli.main' (start-up alone)"] = {"ms": startup_ms, "results": 0}
    return out


def run(repo_path: Path, shape: Shape, repeat: int = 5, cli: bool = False) -> dict:
    build_s = build(repo_path, shape)
    figures = {
        "checkpoints": shape.total,
        "build_s": round(build_s, 2),
        "queries": measure(repo_path, shape, repeat),
    }
    if cli:
        figures["cli"] = measure_cli(repo_path, max(1, repeat // 2))
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in vars(Shape()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"default {default}")
    p.add_argument("--repeat", type=int, default=7, help="runs per query (median)")
    p.add_argument("--dir", type=Path, help="where to build the repository (default: a temporary directory)")
    p.add_argument("--no-cli", action="store_true", help="skip the whole-command timings")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    shape = Shape(**{k: getattr(args, k) for k in vars(Shape())})
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        figures = run(Path(tmp) / "repo", shape, args.repeat, cli=not args.no_cli)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{figures['checkpoints']} checkpoints, built in {figures['build_s']} s")
    rows = {**figures["queries"], **figures.get("cli", {})}
    width = max(map(len, rows))
    for name, r in rows.items():
        print(f"  {name:<{width}}  {r['ms']:>9.3f} ms  ({r['results']} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
