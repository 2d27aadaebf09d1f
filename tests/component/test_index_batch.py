"""``Index.batch``: one write transaction for a thread's writes, each a nested transaction that a
failure undoes alone; other threads see nothing of it until it commits (a shared repository's
replay of a log entry rests on it)."""

from __future__ import annotations

import threading

import pytest

from chunkfs.index import Index


@pytest.fixture
def index(tmp_path):
    ix = Index(tmp_path / "index", create=True)
    yield ix
    ix.close()


def _meta(index: Index, name: bytes) -> bytes | None:
    with index.read() as t:
        return t.meta_get(name)


def test_a_batch_commits_its_writes_together_and_undoes_a_failed_one_alone(index):
    seen_elsewhere = []
    with index.batch():
        with index.write() as t:
            t.meta_put(b"kept", b"1")
        with pytest.raises(ValueError), index.write() as t:
            t.meta_put(b"undone", b"2")
            raise ValueError("refused")
        assert _meta(index, b"kept") == b"1", "the batch reads its own writes"
        other = threading.Thread(target=lambda: seen_elsewhere.append(_meta(index, b"kept")))
        other.start()
        other.join()
    assert seen_elsewhere == [None], "another thread saw the batch before it committed"
    assert (_meta(index, b"kept"), _meta(index, b"undone")) == (b"1", None)


def test_a_batch_that_fails_leaves_nothing(index):
    with pytest.raises(KeyError), index.batch():
        with index.write() as t:
            t.meta_put(b"x", b"1")
        raise KeyError("crash")
    assert _meta(index, b"x") is None
    with index.write() as t:  # and the thread writes normally afterwards
        t.meta_put(b"y", b"1")
    assert _meta(index, b"y") == b"1"
