"""The command line as users run it: ``python -m chunkfs ARGS`` in a subprocess, with one contract.

``chunkfs(*args, env=None, cwd=None, timeout=300, expect=0)``:

* runs ``sys.executable -m chunkfs`` with ``str()`` of each argument, in ``cwd``, with the
  environment of this process minus ``CHUNKFS_REPO`` (a test names its repository), updated
  with ``env`` when given;
* ``expect=0`` (the default): the command must succeed; the failure shows the command, its exit
  code, stdout and stderr;
* ``expect=NotFound`` (a ``chunkfs.errors`` class: its ``exit_code``) or ``expect=4`` (an exit
  code): the command must exit with exactly that code, its stderr must be one line
  ``chunkfs: error: …``, and no traceback anywhere — the contract of every error
  (docs/operations.md has the table of codes);
* ``expect=None``: nothing is checked (usage errors from argparse, whose message has the
  usage lines too; reports like ``fsck --json`` that fail with nothing on stderr; a process a
  test kills).

``cli_json(*args, **kw)``: the same with ``--json`` appended; it must succeed; the parsed output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from chunkfs.errors import ChunkfsError

CHUNKFS = [sys.executable, "-m", "chunkfs"]
"""The command, for a test that must start it itself (``subprocess.Popen`` of a foreground mount)."""


def chunkfs(
    *args: object,
    env: dict[str, str] | None = None,
    cwd: os.PathLike | str | None = None,
    timeout: float = 300,
    expect: int | type[ChunkfsError] | None = 0,
) -> subprocess.CompletedProcess:
    """Run ``chunkfs ARGS``; check its exit status as ``expect`` says (module docstring)."""
    if isinstance(expect, bool):
        raise TypeError("expect: an exit code, a chunkfs.errors class or None, not a bool")
    run_env = {k: v for k, v in os.environ.items() if k != "CHUNKFS_REPO"}
    run_env.update(env or {})
    argv = [str(a) for a in args]
    done = subprocess.run([*CHUNKFS, *argv], capture_output=True, check=False, text=True,
                          env=run_env, cwd=cwd, timeout=timeout)  # fmt: skip
    if expect is None:
        return done
    code = expect if isinstance(expect, int) else expect.exit_code
    what = f"chunkfs {' '.join(argv)}: exit {done.returncode}, expected {code}"
    shown = f"{what}\n--- stdout:\n{done.stdout}\n--- stderr:\n{done.stderr}"
    assert done.returncode == code, shown
    if code != 0:
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr + done.stdout, shown
        assert len(lines) == 1, f"not one line on stderr: {shown}"
        assert done.stderr.startswith("chunkfs: error: "), shown
    return done


def cli_json(*args: object, **kw):
    """``chunkfs ARGS --json``, which must succeed: the JSON it printed."""
    return json.loads(chunkfs(*args, "--json", expect=0, **kw).stdout)
