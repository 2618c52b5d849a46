"""parley_client: its parts on their own (backoff, pacing, outbox, reorder/dedup), then the whole
client against real server subprocesses (outbox across a dead server, catch-up after a refused
resume, reset on a new epoch, 4401, bad tokens, the server's rate limits, history)."""

from __future__ import annotations  # noqa: I001  (tests.support must come before parley_client)

import asyncio
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from parley_client import AuthError, Backoff, Outbox, ParleyClient, ParleyError, RoomState
from parley_client.pacing import TokenBucket, bucket_from_limits
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import Collector, closing_db, fast_client, make_room, make_user_token, wait_for

ROOM = "lobby"


# --- backoff -----------------------------------------------------------------------------------

def test_backoff_ceiling_grows_exponentially_and_is_capped() -> None:
    b = Backoff(base=0.5, cap=8.0, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert b.ceiling(10_000) == 8.0  # no float overflow after a very long outage
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_full_jitter_spans_zero_to_ceiling() -> None:
    b = Backoff(base=1.0, cap=4.0, rng=lambda: 0.0)
    assert b.next_delay() == 0.0  # full jitter: the lower bound is zero, not ceiling/2
    rng = random.Random(1)
    b = Backoff(base=1.0, cap=4.0, rng=rng.random)
    b.attempt = 5  # ceiling is the cap now
    samples = []
    for _ in range(4000):
        samples.append(b.next_delay())
        b.attempt = 5
    assert 0.0 <= min(samples) < 0.05 and 3.95 < max(samples) <= 4.0
    assert abs(statistics.mean(samples) - 2.0) < 0.1  # uniform over [0, cap]


@given(base=st.floats(0.001, 10), cap=st.floats(0.001, 120), factor=st.floats(1, 4),
       attempts=st.integers(0, 200), seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_backoff_delay_never_exceeds_its_bounds(base: float, cap: float, factor: float, attempts: int, seed: int) -> None:
    rng = random.Random(seed)
    b = Backoff(base=base, cap=cap, factor=factor, rng=rng.random)
    for n in range(attempts):
        delay = b.next_delay()
        try:
            ceiling = min(cap, base * factor**n)
        except OverflowError:
            ceiling = cap
        assert 0.0 <= delay <= ceiling * (1 + 1e-9)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


def test_token_bucket_paces_after_the_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=5, burst=10, clock=lambda: now[0])
    assert [bucket.take() for _ in range(10)] == [0.0] * 10
    assert bucket.take() == pytest.approx(0.2)
    now[0] += 0.2
    assert bucket.take() == 0.0
    now[0] += 100
    assert sum(bucket.take() == 0.0 for _ in range(20)) == 10  # refills to the burst, no more


def test_token_bucket_wait_does_not_take() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=1, clock=lambda: now[0])
    assert bucket.wait() == 0.0 and bucket.wait() == 0.0
    assert bucket.take() == 0.0
    assert bucket.wait() == pytest.approx(0.5) and bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0


def test_buckets_from_hello_limits_keep_headroom_below_the_server() -> None:
    """The client's bucket must run out before the server's does (jitter bunches frames)."""
    frames = bucket_from_limits({"frames_per_sec": 20, "frames_burst": 40}, "frames_per_sec", "frames_burst")
    assert frames is not None and 0 < frames.rate < 20 and 1 <= frames.burst < 40
    old_server = bucket_from_limits({"messages_per_sec": 5}, "messages_per_sec", "messages_burst")
    assert old_server is not None and old_server.burst <= 10  # no burst announced: 2x the rate, less headroom
    for limits in ({}, {"frames_per_sec": 0}, {"frames_per_sec": None}, {"frames_per_sec": True}):
        assert bucket_from_limits(limits, "frames_per_sec", "frames_burst") is None


# --- outbox ------------------------------------------------------------------------------------

async def test_outbox_gives_each_send_a_client_id_and_keeps_it() -> None:
    box = Outbox()
    a, b = box.add("r", "one"), box.add("r", "two")
    assert a.client_id != b.client_id and a.client_id.startswith("c-")
    assert box.add("r", "one again", client_id=a.client_id) is a  # same id: same pending send
    with pytest.raises(ValueError):
        box.add("other-room", "x", client_id=a.client_id)
    # Connection 1 carries both, oldest first, and never twice.
    assert [e.client_id for e in box.to_transmit(1)] == [a.client_id, b.client_id]
    assert box.to_transmit(1) == []
    # Connection 2 (after a reconnect) carries both again with the same ids.
    assert [e.frame("x")["client_id"] for e in box.to_transmit(2)] == [a.client_id, b.client_id]
    assert a.attempts == 2
    box.acked(a.client_id, {"type": "ack", "seq": 1})
    assert await a.future == {"type": "ack", "seq": 1}
    assert len(box) == 1 and a.client_id not in box
    box.acked(a.client_id, {"type": "ack", "seq": 1})  # a late duplicate ack is harmless
    box.fail(b.client_id, ParleyError("text_too_long"))
    with pytest.raises(ParleyError):
        await b.future
    assert len(box) == 0


async def test_outbox_filters_by_room_and_limit() -> None:
    box = Outbox()
    entries = [box.add("a" if i % 2 else "b", f"m{i}") for i in range(6)]
    assert [e.text for e in box.to_transmit(1, {"a"}, limit=2)] == ["m1", "m3"]
    assert box.waiting(1, {"a"}) == 1 and box.waiting(1) == 4
    box.mark_unsent(entries[1].client_id)
    assert [e.text for e in box.to_transmit(1, {"a"})] == ["m1", "m5"]


# --- dedup and ordering ------------------------------------------------------------------------

def _msg(seq: int) -> dict[str, Any]:
    return {"seq": seq, "text": f"m{seq}"}


def test_room_state_drops_duplicates_and_reorders() -> None:
    room = RoomState("r", epoch="e", high_seq=3)
    assert room.offer(_msg(3)) == [] and room.stats.duplicates == 1
    assert room.offer(_msg(5)) == [] and room.gap() == (4, 5)
    assert room.offer(_msg(5)) == [] and room.stats.duplicates == 2
    assert [m["seq"] for m in room.offer(_msg(4))] == [4, 5]
    assert room.high_seq == 5 and room.gap() is None
    room.offer(_msg(9))
    assert [m["seq"] for m in room.skip_to(8)] == [9]
    room.offer(_msg(12))
    room.reset("new-epoch", 0)
    assert room.pending == {} and room.high_seq == 0 and room.epoch == "new-epoch"


@given(st.lists(st.integers(1, 40), max_size=200), st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_room_state_delivers_each_seq_once_in_order(arrivals: list[int], n: int) -> None:
    """Whatever order and multiplicity frames arrive in, delivery is 1..k once each, ascending."""
    room = RoomState("r", epoch="e")
    delivered = []
    for seq in arrivals + list(range(1, n + 1)):  # the tail fills every gap up to n
        delivered += [m["seq"] for m in room.offer(_msg(seq))]
    assert delivered == list(range(1, len(delivered) + 1))
    assert len(delivered) >= n


# --- the client against real servers -----------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@closing_db
def _token_with_id(username: str) -> tuple[str, int]:
    from parley import services

    user = services.user_create(username=username)
    row, raw = services.token_create(user=user, name="t")
    return raw, row.pk


@closing_db
def _recreate_room(slug: str) -> str:
    from parley import services
    from parley.models import Room

    Room.objects.filter(slug=slug).delete()
    return services.room_create(slug=slug, title="Again").epoch


@pytestmark_db
async def test_send_while_the_server_is_down_is_stored_once_after_restart(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, token = await make_user_token("ada")
    client = fast_client(server.ws_url, token)
    await client.start()
    await client.join(ROOM)
    await client.send(ROOM, "first")
    await asyncio.to_thread(server.kill)
    pending = [asyncio.create_task(client.send(ROOM, f"while down {i}")) for i in range(3)]
    await asyncio.sleep(0.5)
    assert not any(t.done() for t in pending) and client.pending_sends == 3
    await asyncio.to_thread(server.start)
    acks = await asyncio.wait_for(asyncio.gather(*pending), 15)
    assert sorted(a["seq"] for a in acks) == [2, 3, 4]
    assert [m["text"] for m in server.all_messages(ROOM, token)] == ["first"] + [f"while down {i}" for i in range(3)]
    assert client.pending_sends == 0
    await client.close()


@pytest.mark.slow
@pytestmark_db
async def test_refused_resume_of_the_same_log_is_caught_up_from_history(servers: Any) -> None:
    """Gap > PARLEY_RESUME_MAX_GAP gives recovered: false; the client pages history itself."""
    env = {"PARLEY_RESUME_MAX_GAP": "3", "PARLEY_HISTORY_PAGE_MAX": "4", "PARLEY_HISTORY_PAGE_DEFAULT": "4"}
    s1 = servers(extra_env=env)
    s2 = servers(extra_env=env)  # same database, another process
    await make_room(ROOM)
    _, tok_a = await make_user_token("ada")
    _, tok_b = await make_user_token("bob")
    a = fast_client(s1.ws_url, tok_a)
    await a.start()
    collector = Collector(a)
    await a.join(ROOM)
    await a.send(ROOM, "a1")
    await asyncio.to_thread(s1.kill)
    async with fast_client(s2.ws_url, tok_b) as b:
        await b.join(ROOM)
        for i in range(11):
            await b.send(ROOM, f"b{i}")
    await asyncio.to_thread(s1.start)
    await wait_for(lambda: collector.seqs(ROOM)[-1:] == [12], 15, "ada to catch up to seq 12")
    await asyncio.sleep(0.3)
    assert collector.seqs(ROOM) == list(range(1, 13))
    assert a.stats.resumes_refused == 1 and a.stats.catchups == 1
    room = a.room(ROOM)
    assert room.stats.resets == 0 and room.stats.gap_fills >= 2  # pages of 4
    assert room.stats.duplicates == 0
    # Messages only in the gap: the catch-up passed over no entry, so nothing may be stale.
    assert not [e for e in collector.events if e["type"] in ("reset", "stale")]
    assert room.stats.skipped == 0
    await a.close()
    await collector.stop()


@pytest.mark.slow
@pytestmark_db
async def test_new_epoch_resets_the_room_and_live_delivery_follows_the_new_log(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, token = await make_user_token("ada")
    a = fast_client(server.ws_url, token)
    await a.start()
    collector = Collector(a)
    await a.join(ROOM)
    for i in range(3):
        await a.send(ROOM, f"old {i}")
    await wait_for(lambda: len(collector.seqs(ROOM)) == 3, 5, "old log delivered")
    await asyncio.to_thread(server.kill)
    new_epoch = await _recreate_room(ROOM)  # deleted and created again: a new log
    await asyncio.to_thread(server.start)
    await wait_for(lambda: any(e["type"] == "reset" for e in collector.events), 15, "a reset event")
    reset = next(e for e in collector.events if e["type"] == "reset")
    assert reset["epoch"] == new_epoch and reset["messages"] == []
    ack = await a.send(ROOM, "new log")
    assert ack["seq"] == 1
    await wait_for(lambda: collector.seqs(ROOM)[-1:] == [1], 5, "seq 1 of the new log delivered")
    assert collector.seqs(ROOM) == [1, 2, 3, 1]
    assert a.room(ROOM).epoch == new_epoch
    await a.close()
    await collector.stop()


@pytestmark_db
async def test_revoked_token_4401_stops_the_client(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    token, token_id = await _token_with_id("ada")
    client = fast_client(server.ws_url, token)
    await client.start()
    collector = Collector(client)
    await client.join(ROOM)
    await asyncio.to_thread(server.api, "DELETE", f"/api/tokens/{token_id}", token)
    await asyncio.wait_for(collector.task, 10)  # events() ends
    assert collector.events[-1]["type"] == "closed"
    assert any(e["type"] == "disconnected" and e["code"] == 4401 for e in collector.events)
    with pytest.raises(AuthError):
        await client.send(ROOM, "after revocation")
    assert client.stats.connections == 1  # it did not try to reconnect with a dead token
    await client.close()


@pytestmark_db
async def test_bad_token_fails_fast_instead_of_retrying(servers: Any) -> None:
    server = servers()
    client = ParleyClient(server.ws_url, token="prl_not-a-token")
    t0 = time.monotonic()
    with pytest.raises(AuthError):
        await asyncio.wait_for(client.start(), 10)
    assert time.monotonic() - t0 < 5
    await client.close()


@pytest.mark.slow
@pytestmark_db
async def test_client_stays_inside_the_default_rate_limits(servers: Any) -> None:
    """Default PARLEY_MESSAGES_PER_SEC (5, burst 10): 24 concurrent sends are paced, not refused
    into a 4429 close; each is stored once."""
    server = servers(default_limits=True)
    await make_room(ROOM)
    _, token = await make_user_token("ada")
    async with fast_client(server.ws_url, token) as client:
        await client.join(ROOM)
        rate = client.hello["limits"].get("messages_per_sec")
        t0 = time.monotonic()
        acks = await asyncio.wait_for(asyncio.gather(*(client.send(ROOM, f"m{i}") for i in range(24))), 30)
        elapsed = time.monotonic() - t0
        assert sorted(a["seq"] for a in acks) == list(range(1, 25))
        assert client.stats.connections == 1, "the server closed the socket (4429?)"
        if rate:
            assert elapsed >= (24 - 2 * rate) / rate * 0.8
        texts = [m["text"] for m in server.all_messages(ROOM, token)]
        assert sorted(texts) == sorted(f"m{i}" for i in range(24))


@pytestmark_db
async def test_history_backlog_and_permanent_send_errors(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, token = await make_user_token("ada")
    async with fast_client(server.ws_url, token) as writer:
        await writer.join(ROOM)
        for i in range(30):
            await writer.send(ROOM, f"m{i + 1}")
    async with fast_client(server.ws_url, token, emit_backlog=True) as reader:
        collector = Collector(reader)
        joined = await reader.join(ROOM)
        assert [m["seq"] for m in joined["messages"]] == list(range(1, 31))[-50:]
        page = await reader.history(ROOM, before=11, limit=5)
        assert [m["seq"] for m in page["messages"]] == [6, 7, 8, 9, 10] and page["has_more"]
        await wait_for(lambda: len(collector.seqs(ROOM)) == 30, 5, "backlog delivered as events")
        with pytest.raises(ParleyError) as err:
            await reader.send(ROOM, "x" * 5000)
        assert err.value.code == "text_too_long" and reader.pending_sends == 0
        with pytest.raises(ParleyError):
            await reader.join("no-such-room", timeout=5)
        with pytest.raises(ParleyError):
            await reader.send("never-joined", "hi")
        await collector.stop()


def _start_echo_bot(url: str, token: str) -> subprocess.Popen[bytes]:
    script = Path(__file__).resolve().parents[1] / "clients" / "python" / "examples" / "echo_bot.py"
    return subprocess.Popen([sys.executable, str(script), "--url", url, "--token", token, ROOM],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytestmark_db
async def test_echo_bot_example_answers_once(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, bot_token = await make_user_token("echobot")
    _, token = await make_user_token("ada")
    bot = await asyncio.to_thread(_start_echo_bot, server.ws_url, bot_token)
    try:
        async with fast_client(server.ws_url, token) as client:
            collector = Collector(client)
            await client.join(ROOM)
            await wait_for(lambda: any(e["type"] == "presence" and e["user"]["username"] == "echobot"
                                       for e in collector.events)
                           or any(m["username"] == "echobot" for m in client.room(ROOM).last_joined["members"]),
                           15, "the bot to join")
            await client.send(ROOM, "!echo hello there")
            await wait_for(lambda: len(collector.seqs(ROOM)) >= 2, 10, "the bot's reply")
            await client.send(ROOM, "no command")
            await asyncio.sleep(0.5)
            texts = [m["text"] for m in collector.messages[ROOM]]
            assert texts == ["!echo hello there", "ada said: hello there", "no command"]
            await collector.stop()
    finally:
        bot.terminate()
        await asyncio.to_thread(bot.wait, 10)


@closing_db
def _make_rooms(slugs: list[str]) -> None:
    from parley import services

    for slug in slugs:
        services.room_create(slug=slug, title=slug)


@pytest.mark.slow
@pytestmark_db
async def test_rejoining_150_rooms_after_a_reconnect_stays_inside_the_frame_rate(servers: Any) -> None:
    """Default frame limits (20/s, burst 40, 30 strikes close with 4429): 150 joins at once, then a
    reconnect that resumes all 150 while sends to some of the rooms are made. Unpaced, the joins
    alone overrun the burst by more than the strikes allow (the socket is closed with 4429, again
    on every reconnect); paced by hello.limits, nothing is refused."""
    n = 150
    server = servers(default_limits=True, extra_env={"PARLEY_MAX_ROOMS_PER_SOCKET": str(n)})
    slugs = [f"r{i:03d}" for i in range(n)]
    await _make_rooms(slugs)
    _, token = await make_user_token("ada")
    async with fast_client(server.ws_url, token, request_timeout=30.0) as client:
        collector = Collector(client)
        assert client.hello["limits"]["frames_per_sec"] == 20
        await asyncio.wait_for(asyncio.gather(*(client.join(slug) for slug in slugs)), 60)
        client.abort_connection()
        await wait_for(lambda: client.stats.connections == 2, 10, "the reconnect")
        sends = [asyncio.create_task(client.send(slug, f"hi {slug}")) for slug in slugs[::15]]
        await wait_for(lambda: all(client.room(s).joined_on == client.stats.connections for s in slugs),
                       60, "all 150 rooms rejoined")
        acks = await asyncio.wait_for(asyncio.gather(*sends), 30)
        assert [a["seq"] for a in acks] == [1] * len(sends)
        assert client.stats.resumes_recovered == n and client.stats.connections == 2
        assert client.stats.paced_waits > 0  # the frames did wait for tokens
        closes = [e["code"] for e in collector.events if e["type"] == "disconnected"]
        refusals = [e for e in collector.events if e["type"] == "error" and e.get("code") == "rate_limited"]
        assert len(closes) == 1 and 4429 not in closes and refusals == [], (closes, refusals[:3])
        await collector.stop()
