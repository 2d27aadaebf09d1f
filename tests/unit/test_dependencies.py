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


OPTIONAL = {"chunkfs/torch/": "torch"}
"""Subpackages that need an extra (``pip install chunkfs[torch]``): what they import may be
declared there instead; nothing else imports them."""


def _names(deps: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def _declared(where: list[str] = ()) -> set[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    names = _names(project["dependencies"])
    extras = {OPTIONAL[prefix] for prefix in OPTIONAL if where and all(w.startswith(prefix) for w in where)}
    for extra in extras:
        names |= _names(project["optional-dependencies"][extra])
    return names


def test_every_runtime_import_is_a_declared_dependency():
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & _declared(where):
            missing.append(f"{module} (imported by {', '.join(sorted(set(where))[:3])}; from {sorted(dists)})")
    assert not missing, "not in [project] dependencies: " + "; ".join(missing)


def test_nothing_else_imports_what_needs_an_extra():
    """``pip install chunkfs`` without extras must run every command: no module outside an
    optional subpackage imports it."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for prefix in OPTIONAL:
                package = prefix.rstrip("/").replace("/", ".")
                if not rel.startswith(prefix) and any(n == package or n.startswith(package + ".") for n in names):
                    problems.append(f"{rel} imports {package}")
    assert not problems, problems
