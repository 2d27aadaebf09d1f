"""fsck's check of the tree: the invariants index/keys.py states for names and the registry.

* ``parents`` is the reverse of ``dirents``: one record per directory entry, nothing else;
* every entry names an inode that exists, and a directory is linked under one name only;
* link counts: a file's ``nlink`` is the number of entries naming it, a directory's is 2
  plus its subdirectories;
* every inode with a link count is reachable from the root;
* the registry's databases agree (one ``ckpt_ino`` entry per record: ``Txn.ckpt_check``).

``repair`` mends what has one right answer: ``parents`` is rebuilt from ``dirents`` (the
entries are what readdir and lookup serve), link counts are recounted, an entry naming a
missing inode is dropped, an inode nothing names is linked into ``/lost+found`` under its
number (never deleted), and the registry is re-keyed from the tree (its metadata kept). A
directory linked twice is reported, not guessed at.
"""

from __future__ import annotations

import collections
import stat
from dataclasses import dataclass

from chunkfs.errors import AlreadyExists, NotFound
from chunkfs.repo import Repository
from chunkfs.types import ROOT_INODE, InodeRecord

LOST_FOUND = b"lost+found"


@dataclass
class TreeProblem:
    kind: str  # dangling_entry, parent_record, link_count, directory_links, unreachable, registry
    message: str
    repairable: bool = True


def check(repo: Repository) -> list[TreeProblem]:
    """Every way the tree and the registry break the invariants, in one read transaction."""
    with repo.index.read() as t:
        inodes = dict(t.inodes())
        entries = list(t.dirents_all())
        parents = set(t.parents_all())
        registry = t.ckpt_check()
    problems = []
    if ROOT_INODE not in inodes:
        problems.append(TreeProblem("dangling_entry", "the root directory (inode 1) is missing", repairable=False))
    reverse = {(child, parent, bytes(name)) for parent, name, child in entries}
    for child, parent, name in sorted(reverse - parents):
        problems.append(TreeProblem("parent_record", f"entry {_entry(parent, name)} → inode {child}: no parents record"))
    for child, parent, name in sorted(parents - reverse):
        problems.append(TreeProblem("parent_record", f"inode {child}: a parents record names {_entry(parent, name)}, "
                                                     f"which is not an entry"))  # fmt: skip
    for parent, name, child in entries:
        if child not in inodes:
            problems.append(TreeProblem("dangling_entry", f"entry {_entry(parent, name)} names inode {child}, which does not exist"))
    links, subdirs = _counts(inodes, entries)
    unreachable = _unreachable(inodes, entries)
    for ino, rec in sorted(inodes.items()):
        if stat.S_ISDIR(rec.mode) and links[ino] > 1:
            problems.append(TreeProblem("directory_links", f"directory inode {ino} is linked under {links[ino]} names",
                                        repairable=False))  # fmt: skip
        want = _nlink(ino, rec, links, subdirs)
        if ino not in unreachable and rec.nlink != want and not (rec.nlink == 0 and links[ino] == 0):
            problems.append(TreeProblem("link_count", f"inode {ino}: link count {rec.nlink}, {want} entries say"))
    for ino in sorted(unreachable):
        named = links[ino] > 0
        problems.append(TreeProblem("unreachable", f"inode {ino}: not reachable from the root"
                                    + (" (inside a cycle of directories)" if named else ""), repairable=not named))  # fmt: skip
    problems += [TreeProblem("registry", p) for p in registry]
    return problems


def repair(repo: Repository, problems: list[TreeProblem]) -> None:
    """Mend the repairable ``problems`` (``check``'s) in one write transaction, then re-key the registry."""
    if not any(p.repairable for p in problems):
        return
    found = _lost_found(repo) if any(p.kind == "unreachable" and p.repairable for p in problems) else None
    with repo.index.write() as t:
        inodes = dict(t.inodes())
        for parent, name, child in list(t.dirents_all()):
            if child not in inodes:
                t.link_delete(parent, name, child)
        if found is not None:
            entries = list(t.dirents_all())
            named = {child for _, _, child in entries}
            for ino in sorted(_unreachable(inodes, entries) - named):
                t.dirent_put(found, str(ino).encode(), ino)
        entries = list(t.dirents_all())
        reverse = {(child, parent, bytes(name)) for parent, name, child in entries}
        have = set(t.parents_all())
        for record in have - reverse:
            t.parent_delete(*record)
        for record in reverse - have:
            t.parent_put(*record)
        links, subdirs = _counts(inodes, entries)
        for ino, rec in inodes.items():
            want = _nlink(ino, rec, links, subdirs)
            if rec.nlink != want and not (rec.nlink == 0 and links[ino] == 0):
                rec.nlink = want
                t.inode_put(ino, rec)
    repo.registry.rebuild()


def _counts(inodes: dict[int, InodeRecord], entries) -> tuple[collections.Counter, collections.Counter]:
    """(entries naming each inode, subdirectories of each directory), over entries to existing inodes."""
    links, subdirs = collections.Counter(), collections.Counter()
    for parent, _name, child in entries:
        rec = inodes.get(child)
        if rec is not None:
            links[child] += 1
            if stat.S_ISDIR(rec.mode):
                subdirs[parent] += 1
    return links, subdirs


def _nlink(ino: int, rec: InodeRecord, links: collections.Counter, subdirs: collections.Counter) -> int:
    if stat.S_ISDIR(rec.mode):
        return 2 + subdirs[ino] if (links[ino] or ino == ROOT_INODE) else 0
    return links[ino]


def _unreachable(inodes: dict[int, InodeRecord], entries) -> set[int]:
    """Inodes with a link count that no path from the root reaches."""
    children = collections.defaultdict(list)
    for parent, _name, child in entries:
        children[parent].append(child)
    seen, todo = {ROOT_INODE}, [ROOT_INODE]
    while todo:
        for child in children[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return {ino for ino, rec in inodes.items() if ino not in seen and rec.nlink > 0}


def _lost_found(repo: Repository) -> int:
    """The inode of ``/lost+found``, made (mode 0700, root's) if the root has none."""
    try:
        ino, rec = repo.ns.lookup(ROOT_INODE, LOST_FOUND)
    except NotFound:
        return repo.ns.mkdir(ROOT_INODE, LOST_FOUND, 0o700, 0, 0)[0]
    if not stat.S_ISDIR(rec.mode):
        raise AlreadyExists(f"/{LOST_FOUND.decode()}: exists and is not a directory; rename it and repair again")
    return ino


def _entry(parent: int, name: bytes) -> str:
    return f"{name.decode(errors='replace')!r} in directory inode {parent}"
