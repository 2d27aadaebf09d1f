"""The shared log's entry encoding and the publisher's rule for where an entry may end."""

from __future__ import annotations

import pytest

from chunkfs.cluster import entries
from chunkfs.cluster.publish import _before_creation
from chunkfs.errors import CorruptData
from chunkfs.types import ChunkLocation, PackInfo, PackState, Tier


def test_an_entry_round_trips_with_its_pack_and_chunk_locations():
    pack, chunk = bytes(range(16)), bytes(range(32))
    e = entries.Entry(
        "n1", 123, (4, 6), [{"op": "create", "path": "/a\udcff", "mode": 0o100644}],
        {pack: PackInfo(Tier.WARM, PackState.SEALED, 1000, 3, "/run", 99)},
        {chunk: ChunkLocation(pack, 24, 500, 800, 1)},
    )  # fmt: skip
    back = entries.decode(entries.encode(e), "log/1")
    assert back == e


@pytest.mark.parametrize(
    "data",
    [b"", b"not an entry", entries.MAGIC + b"\x28\xb5\x2f\xfd garbage", entries.encode(entries.Entry("n", 1, (1, 1), []))[:-3]],
)
def test_a_damaged_or_foreign_entry_is_refused_with_its_name(data):
    with pytest.raises(CorruptData, match="log/7"):
        entries.decode(data, "log/7")


def test_an_entry_ends_before_the_creation_of_a_file_whose_content_waits():
    ops = [
        {"op": "create", "path": "/d", "versioned": True},
        {"op": "create", "path": "/d/x.tmp", "versioned": False},
        {"op": "rename", "path": "/d/x.tmp", "to": "/d/x"},
        {"op": "create", "path": "/d/other", "versioned": False},
    ]
    assert _before_creation(ops, "/d/x") == 1  # the file appears elsewhere with its content
    assert _before_creation(ops, "/d/elsewhere") == 4  # created before this entry: nothing to hold
    assert _before_creation([{"op": "create", "path": "/l", "versioned": True}], "/l") == 1
