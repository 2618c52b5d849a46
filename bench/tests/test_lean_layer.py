"""bench.baselines.lean_layer: the parley-layer baseline's layer still expires, but walks its channels
at most once a second."""

from __future__ import annotations

import pytest
from channels.layers import InMemoryChannelLayer

from bench.baselines import lean_layer as layers


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(layers.time, "monotonic", lambda: now[0])
    return now


async def test_receives_do_not_each_walk_every_channel(clock, monkeypatch):
    layer = layers.LeanInMemoryChannelLayer()
    walks = []
    monkeypatch.setattr(InMemoryChannelLayer, "_clean_expired", lambda self: walks.append(1))
    for i in range(50):
        await layer.send(f"c{i}", {"type": "x"})
        await layer.receive(f"c{i}")
    assert len(walks) == 1
    clock[0] += layers.CLEAN_INTERVAL_SECS
    await layer.send("c0", {"type": "x"})
    await layer.receive("c0")
    assert len(walks) == 2


async def test_expired_messages_and_their_groups_are_still_dropped(clock, monkeypatch):
    layer = layers.LeanInMemoryChannelLayer(expiry=60)
    await layer.group_add("g", "gone")
    await layer.send("gone", {"type": "never read"})
    wall = layers.time.time()
    monkeypatch.setattr("channels.layers.time.time", lambda: wall + 61)  # the message expired
    clock[0] += layers.CLEAN_INTERVAL_SECS
    layer._clean_expired()
    assert "gone" not in layer.channels and "gone" not in layer.groups.get("g", {})

