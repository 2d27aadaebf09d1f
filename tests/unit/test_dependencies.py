"""Every module chunkfs imports at run time is a declared dependency (pyproject.toml).

``pip install chunkfs`` (no extras) followed by ``chunkfs --help`` once died because
engine/codec.py imported numpy, which only the test extra declared. .ci/run also
installs the package into a fresh virtualenv and runs the CLI (tools/check_install.sh).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import chunkfs

PACKAGE = Path(chunkfs.__file__).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


def _third_party_imports() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "chunkfs" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(PACKAGE.parent)))
    return found


def _declared() -> set[str]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_runtime_import_is_a_declared_dependency():
    declared = _declared()
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (imported by {', '.join(sorted(set(where))[:3])}; from {sorted(dists)})")
    assert not missing, "not in [project] dependencies: " + "; ".join(missing)
