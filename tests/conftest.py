"""Fixtures every test gets."""

from __future__ import annotations

import pytest

from chunkfs import clock


@pytest.fixture(autouse=True)
def restore_clock(monkeypatch):
    """Tests move chunkfs's clock forward (``clock.advance``); put it back afterwards.

    Left moved, it would date the next tests' versions in the future, which a
    gc in another process (on the real clock) sees as too new to drop.
    """
    monkeypatch.setattr(clock, "_offset_ns", clock._offset_ns)
