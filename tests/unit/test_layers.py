"""The layering of DESIGN.md, checked on every import statement of the package.

Data flows one way: a module may import only from its own layer or the layers
below it; only index/ imports lmdb, only fs/ imports pyfuse3 (and trio, which
the FUSE loop needs), only the S3 backend imports boto3. The FUSE adapter (fs/)
only translates: it may use the library API and nothing beneath it. A violation
names the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import chunkfs

PACKAGE = Path(chunkfs.__file__).parent

# Higher number = higher layer. Vocabulary modules are layer 0 and import nothing above.
LAYERS = {
    "errors": 0, "types": 0, "config": 0, "clock": 0, "background": 0,
    "index": 1,
    "store": 2,
    "engine": 3,
    "namespace": 4, "cluster": 4,
    "repo": 5, "mounts": 5,
    "openfiles": 6, "writers": 6, "ops": 6, "metrics": 6,
    "fs": 7, "torch": 7,
    "cli": 8,
}  # fmt: skip

ONLY_IN = {"lmdb": {"index"}, "pyfuse3": {"fs"}, "trio": {"fs"}, "boto3": {"store/backends/s3.py"}, "botocore": {"store/backends/s3.py"},
           "prometheus_client": {"metrics"}, "torch": {"torch"}, "safetensors": {"torch"}}

FS_API = {"chunkfs.repo", "chunkfs.mounts", "chunkfs.openfiles", "chunkfs.namespace.snapshots", "chunkfs.errors", "chunkfs.types",
          "chunkfs.config", "chunkfs.clock", "chunkfs.metrics"}
"""What fs/ may import from the rest of the package: engine, store and index objects stay behind these."""


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue
        yield path, rel.parts[0].removesuffix(".py"), rel.as_posix()


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_every_module_has_a_layer():
    assert {layer for _, layer, _ in _modules()} <= set(LAYERS)


def test_imports_flow_downward_and_third_party_stays_in_its_layer():
    problems = []
    for path, layer, rel in _modules():
        for line, name in _imports(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
            if top == "chunkfs" and name != "chunkfs":
                target = name.split(".")[1]
                if LAYERS[target] > LAYERS[layer]:
                    problems.append(f"{where} (layer {layer} may not import the higher layer {target})")
            elif top in ONLY_IN and not ({layer, rel} & ONLY_IN[top]):
                problems.append(f"{where} (only {', '.join(sorted(ONLY_IN[top]))} may import {top})")
    assert not problems, "\n".join(problems)


def test_fs_imports_only_the_library_api():
    problems = []
    for path, layer, rel in _modules():
        if layer != "fs":
            continue
        for line, name in _imports(path):
            if name.startswith("chunkfs.") and not name.startswith("chunkfs.fs.") and name not in FS_API:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} (fs/ may use only {sorted(FS_API)})")
    assert not problems, "\n".join(problems)
