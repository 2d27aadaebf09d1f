"""The hand-off ring between the mount daemon and an engine worker (chunkfs/writers/ring.py):
blocks never wrap, space comes back in reserve order, a full ring makes writers wait and
never loses or mixes bytes."""

from __future__ import annotations

import os
import threading

from chunkfs.writers.ring import Ring

KiB = 1024


def test_blocks_come_back_in_order_and_never_wrap():
    ring = Ring(64 * KiB)
    a = ring.reserve(40 * KiB)
    ring.put(a, b"a" * (40 * KiB))
    assert ring.reserve(30 * KiB) is None, "only 24 KiB are left"
    b = ring.reserve(20 * KiB)
    ring.put(b, b"b" * (20 * KiB))
    assert ring.take(a, 40 * KiB) == b"a" * (40 * KiB)
    ring.free(a)
    c = ring.reserve(30 * KiB)  # 4 KiB left at the end: it starts at the beginning again
    assert c % ring.size == 0
    ring.put(c, b"c" * (30 * KiB))
    assert ring.take(b, 20 * KiB) == b"b" * (20 * KiB), "the new block did not overwrite an older one"
    assert ring.take(c, 30 * KiB) == b"c" * (30 * KiB)


def test_space_is_free_only_once_every_block_before_it_is():
    ring = Ring(64 * KiB)
    first, second = ring.reserve(32 * KiB), ring.reserve(32 * KiB)
    ring.free(second)
    assert ring.reserve(1) is None, "the first block still holds the space before the second"
    ring.free(first)
    assert ring.used == 0 and ring.reserve(64 * KiB) is not None


def test_a_writer_waits_for_room_and_the_worker_shares_the_memory():
    ring = Ring(64 * KiB)
    worker_view = Ring(ring.size, fd=os.dup(ring.fd))  # what the worker process maps
    first = ring.reserve(48 * KiB)
    ring.put(first, os.urandom(48 * KiB))
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(ring.reserve(48 * KiB, wait=True)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "the writer did not wait for room"
    data = os.urandom(16 * KiB)
    worker_view.take(first, 48 * KiB)
    ring.free(first)
    waiter.join(5)
    assert got and got[0] is not None
    ring.put(got[0], data)
    assert worker_view.take(got[0], len(data)) == data
    worker_view.close()
    ring.close()


def test_free_all_wakes_everyone_when_the_worker_is_gone():
    ring = Ring(64 * KiB)
    ring.reserve(64 * KiB)
    waiter = threading.Thread(target=lambda: ring.reserve(KiB, wait=True))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    ring.free_all()
    waiter.join(5)
    assert not waiter.is_alive()
