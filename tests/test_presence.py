"""parley.presence: the in-memory store and the Redis store behave alike (first/last socket, expiry)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

import parley.presence
from parley.conf import parley_settings
from parley.presence import Member, MemoryPresence, RedisPresence, get_presence
from tests.conftest import require_redis

ADA, BOB, CAROL = Member(1, "ada"), Member(2, "Bob"), Member(3, "carol")


# The Redis store is tested in the run that has Redis (REDIS_URL); the SQLite run has none.
STORES = ["memory", "redis"] if os.environ.get("REDIS_URL") else ["memory"]


@pytest.fixture(params=STORES)
async def store(request) -> AsyncIterator[object]:
    if request.param == "memory":
        yield MemoryPresence()
        return
    require_redis()
    prefix = f"ptest-presence-{uuid.uuid4().hex[:8]}"
    s = RedisPresence(parley_settings.REDIS_URL, prefix)
    yield s
    keys = [k async for k in s._redis.scan_iter(f"{prefix}:*")]
    if keys:
        await s._redis.delete(*keys)
    await s._redis.aclose()


async def test_first_and_last_socket(store):
    assert await store.add(1, "ch-a1", ADA) is True
    assert await store.add(1, "ch-a2", ADA) is False   # second socket of the same user
    assert await store.add(1, "ch-b1", BOB) is True
    assert await store.add(2, "ch-a1", ADA) is True    # another room is independent
    assert [m.username for m in await store.members(1)] == ["ada", "Bob"]
    assert await store.remove(1, "ch-a1", ADA.id) is False  # ada still has ch-a2
    assert [m.username for m in await store.members(1)] == ["ada", "Bob"]
    assert await store.remove(1, "ch-a2", ADA.id) is True
    assert [m.username for m in await store.members(1)] == ["Bob"]
    assert await store.remove(1, "ch-b1", BOB.id) is True
    assert await store.members(1) == []
    assert [m.username for m in await store.members(2)] == ["ada"]


async def test_re_adding_the_same_socket_is_not_a_second_join(store):
    assert await store.add(1, "ch", ADA) is True
    # a socket that joins twice: re-adding its own entry must not make it look like another socket
    assert await store.add(1, "ch", ADA) in (True, False)
    assert await store.remove(1, "ch", ADA.id) is True
    assert await store.members(1) == []


async def test_members_sorted_case_insensitively_and_distinct(store):
    for i, member in enumerate([CAROL, ADA, BOB, ADA]):
        await store.add(7, f"ch{i}", member)
    assert [m.username for m in await store.members(7)] == ["ada", "Bob", "carol"]


async def test_remove_unknown_socket_is_harmless(store):
    assert await store.remove(9, "nope", ADA.id) is True
    assert await store.members(9) == []


async def test_touch_keeps_an_entry_alive(store, monkeypatch):
    monkeypatch.setattr(parley.presence, "presence_ttl_secs", lambda: 1)
    await store.add(1, "ch-a", ADA)
    await store.add(1, "ch-b", BOB)
    for _ in range(3):
        await asyncio.sleep(0.45)
        await store.touch(1, "ch-a", ADA)
    # ch-b was never touched: expired; ch-a kept alive by its heartbeats
    assert [m.username for m in await store.members(1)] == ["ada"]
    # an expired socket of a user does not count as "still online" for the first/last decision
    assert await store.add(1, "ch-b2", BOB) is True
    assert await store.remove(1, "ch-b2", BOB.id) is True


async def test_entries_expire_without_heartbeats(store, monkeypatch):
    monkeypatch.setattr(parley.presence, "presence_ttl_secs", lambda: 0)
    await store.add(3, "ghost", ADA)
    assert await store.members(3) == []
    assert await store.add(3, "fresh", ADA) is True  # the ghost does not block a new first join


async def test_touch_of_unknown_socket(store):
    await store.touch(4, "never-added", ADA)
    members = await store.members(4)
    assert members == [ADA]  # recorded: an entry lost (Redis restarted) comes back this way


def test_ttl_is_three_heartbeats(parley_settings):
    parley_settings.HEARTBEAT_INTERVAL_SECS = 10
    assert parley.presence.presence_ttl_secs() == 30


async def test_get_presence_picks_the_backend_and_is_per_loop():
    store = get_presence()
    assert store is get_presence()
    expected = RedisPresence if parley_settings.REDIS_URL else MemoryPresence
    assert isinstance(store, expected)


# --- Any frame keeps presence alive (the consumer) ----------------------------------------------

HEARTBEAT_SECS = 1  # presence entries then live 3 s; a silent socket is closed after 7 s


async def _chatter(client, room: str, seconds: float, tag: str) -> None:
    """Send a message every 0.25 s for `seconds`, and never a ping."""
    deadline = asyncio.get_running_loop().time() + seconds
    i = 0
    while asyncio.get_running_loop().time() < deadline:
        i += 1
        await client.say(room, f"{tag} {i}", client_id=f"{tag}-{i}")
        await asyncio.sleep(0.25)


@pytest.mark.django_db(transaction=True)
async def test_a_busy_sender_who_never_pings_stays_in_members(connect, parley_settings):
    from tests.conftest import make_room, make_user

    parley_settings.HEARTBEAT_INTERVAL_SECS = HEARTBEAT_SECS
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a = await connect(ada)
    await a.join("lobby")
    await _chatter(a, "lobby", 4.5 * HEARTBEAT_SECS, "a")  # past 3 heartbeats: the entry's life
    b = await connect(bob)
    joined = await b.join("lobby")
    assert [m["username"] for m in joined["members"]] == ["ada", "bob"]


@pytest.mark.django_db(transaction=True)
async def test_a_busy_sender_comes_back_after_redis_lost_the_presence(connect, settings, parley_settings):
    """Redis restarted (here: the room's presence hash deleted, on the shared Redis only this
    run's key): the sender's next frames write the entry again, and the room hears a join."""
    import redis.asyncio as aioredis

    from tests.conftest import make_room, make_user

    require_redis()
    parley_settings.HEARTBEAT_INTERVAL_SECS = HEARTBEAT_SECS
    ada, bob, carol = await make_user("ada"), await make_user("bob"), await make_user("carol")
    room = await make_room("lobby")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    key = f"{parley_settings.REDIS_PREFIX}:presence:{room.pk}"
    r = aioredis.Redis.from_url(parley_settings.REDIS_URL)
    try:
        assert await r.delete(key) == 1
    finally:
        await r.aclose()
    await _chatter(a, "lobby", 2 * HEARTBEAT_SECS, "a")
    back = await b.recv_type("presence", timeout=3)
    assert (back["event"], back["user"]["username"]) == ("join", "ada")
    c = await connect(carol)
    joined = await c.join("lobby")
    assert "ada" in [m["username"] for m in joined["members"]]


async def test_touch_re_creates_a_lost_entry_and_says_the_user_is_back(store):
    assert await store.touch(5, "ch-a", ADA) is True  # nothing was there: back
    assert await store.touch(5, "ch-a", ADA) is False  # alive: just pushed forward
    assert await store.touch(5, "ch-a2", ADA) is False  # another socket of a user still there
    assert [m.username for m in await store.members(5)] == ["ada"]
