"""ChunkIO is shared by the FUSE worker threads: several files of one pack group written at once,
while packs fill up and get sealed under them."""

from __future__ import annotations

import random
import threading
import time

from chunkfs.config import PackSettings
from chunkfs.store.pack.store import PackStore


def test_threads_putting_chunks_while_packs_are_sealed_lose_nothing(repo, reopen, monkeypatch):
    repo.packs.settings = PackSettings(target_size=16 << 10, max_open=2)  # seal every few chunks
    # widen the window between picking a group's open pack and appending to it, where another
    # thread may fill and seal that pack
    pick = PackStore._writer
    monkeypatch.setattr(PackStore, "_writer", lambda self, group: (pick(self, group), time.sleep(0.001))[0])

    put: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        rng = random.Random(k)
        try:
            for i in range(60):
                data = rng.randbytes(rng.randint(600, 5000))
                put.append((repo.chunks.put(data, f"/run{i % 2}"), data))
        except BaseException as e:  # noqa: BLE001 — reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    repo.close()
    with reopen(writable=False) as r:
        for chunk, data in put:
            assert r.chunks.get(chunk, len(data)) == data
        with r.index.read() as t:
            assert t.chunk_count() == len({c for c, _ in put})
    assert len(list(repo.hot_path.rglob("*.pack"))) > 10
