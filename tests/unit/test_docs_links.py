"""The README and docs link only to files inside the repository, and every such link resolves.

Someone who clones the project has only the repository: a link to ../shared/DESIGN.md was
a dead link (the architecture is docs/architecture.md)."""

from __future__ import annotations

import re
from pathlib import Path

import chunkfs

ROOT = Path(chunkfs.__file__).parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_local_link_resolves_inside_the_repository():
    problems = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if ROOT.resolve() not in path.parents and path != ROOT.resolve():
                problems.append(f"{doc.name}: {target} points outside the repository")
            elif not path.exists():
                problems.append(f"{doc.name}: {target} does not exist")
    assert not problems, "\n".join(problems)
