"""History reads are charged to a byte budget, and the group commit never waits behind a read.

tests/test_server_reads.py shows the effect in a real server process under a flood; these tests
pin each rule down on the ASGI app itself.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async

from parley import commands, consumer_db, limits, selectors, services
from tests.conftest import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_budget(monkeypatch):
    """A budget of the test's own: buckets are per process and must not carry between tests."""
    monkeypatch.setattr(commands, "_history_budget", limits.ByteBudget(
        limits.HISTORY_BYTES_PER_SEC, limits.HISTORY_BURST_BYTES,
        limits.HISTORY_PROCESS_BYTES_PER_SEC, limits.HISTORY_PROCESS_BURST_BYTES))


@database_sync_to_async
def fill(room, author, count: int, chars: int) -> None:
    for i in range(count):
        services.message_create(room_id=room.pk, author=author, text=(f"{i} " + "x" * chars)[:chars],
                                client_id=None)


def test_byte_budget_reserves_first_then_settles_per_user_and_for_the_process(monkeypatch, parley_settings):
    clock = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    parley_settings.HISTORY_BYTES_PER_SEC, parley_settings.HISTORY_BURST_BYTES = 1000, 3000
    parley_settings.HISTORY_PROCESS_BYTES_PER_SEC, parley_settings.HISTORY_PROCESS_BURST_BYTES = 2000, 5000
    budget = limits.ByteBudget(limits.HISTORY_BYTES_PER_SEC, limits.HISTORY_BURST_BYTES,
                               limits.HISTORY_PROCESS_BYTES_PER_SEC, limits.HISTORY_PROCESS_BURST_BYTES)
    assert budget.reserve("ann", 2000) == (0.0, 2000)
    assert budget.reserve("ann", 2000) == (pytest.approx(1.0), 0.0)  # 1,000 left: wait 1 s
    budget.settle("ann", 2000, 100)  # the page was small: the rest comes back
    assert budget.reserve("ann", 2000) == (0.0, 2000)
    budget.settle("ann", 2000, 2900)  # bigger than reserved: the excess is taken (900 → 0)
    assert budget.reserve("ann", 100) == (pytest.approx(0.1), 0.0)
    # The process's bucket is shared: ann's reads left 2,000 of its 5,000 for everyone.
    assert budget.reserve("ben", 3000) == (pytest.approx(0.5), 0.0)
    clock[0] += 10  # everything refills, up to each burst
    assert budget.reserve("ann", 10**9) == (0.0, 3000)  # a cost above a burst is cut to it
    assert budget.reserve("ben", 3000) == (pytest.approx(0.5), 0.0)


async def test_history_is_refused_with_retry_after_once_the_users_byte_budget_is_spent(connect, parley_settings):
    parley_settings.HISTORY_BYTES_PER_SEC = 1  # no refill worth speaking of within the test
    parley_settings.HISTORY_BURST_BYTES = 800_000
    ada, bob = await make_user("ada"), await make_user("bob")
    room = await make_room("lobby")
    await fill(room, ada, 100, 4000)
    client = await connect(ada)
    await client.join("lobby", limit=1)
    pages = 0
    for _ in range(10):
        reply = await client.request({"type": "history", "room": "lobby", "limit": 100})
        if reply["type"] == "error":
            break
        pages += 1
    # 800,000 bytes of budget, less the join's small page; a page of 100 × 4,000 characters is
    # ~410 KB, and a request reserves the most its reply can be (~787 KB: 1 KiB +
    # PARLEY_REPLY_MAX_BYTES) before reading.
    assert pages == 1
    assert reply["code"] == "rate_limited" and reply["room"] == "lobby" and reply["retry_after_ms"] > 1000
    # Small pages cost what they carry: the budget left still buys a good number of them.
    small = 0
    for _ in range(5):
        reply = await client.request({"type": "history", "room": "lobby", "limit": 1})
        small += reply["type"] == "history"
    assert small == 5
    # Per user: another user's budget is untouched.
    other = await connect(bob)
    await other.join("lobby", limit=1)
    assert (await other.request({"type": "history", "room": "lobby", "limit": 100}))["type"] == "history"


async def test_joins_are_charged_to_the_users_budget_and_refused_while_it_is_in_debt(connect, parley_settings):
    """protocol.md §3 `history`: a join reads a page too, so its reply is charged to the user's
    budget after the read (into debt if need be); a join while in debt is refused with
    rate_limited, and nothing was subscribed. Another user's joins are not affected."""
    parley_settings.HISTORY_BYTES_PER_SEC = 1  # no refill worth speaking of within the test
    parley_settings.HISTORY_BURST_BYTES = 500_000
    ada, bob = await make_user("ada"), await make_user("bob")
    room = await make_room("lobby")
    await fill(room, ada, 100, 4000)
    client = await connect(ada)
    joined = []
    for _ in range(4):  # a join/leave loop: each join is a page of 100 × 4,000 characters
        reply = await client.request({"type": "join", "room": "lobby", "limit": 100})
        joined.append(reply["type"])
        if reply["type"] == "joined":
            await client.request({"type": "leave", "room": "lobby"})
    assert joined == ["joined", "joined", "error", "error"]  # ~410 KB each: the 2nd went into debt
    assert reply["code"] == "rate_limited" and reply["room"] == "lobby" and reply["retry_after_ms"] > 1000
    other = await connect(bob)
    assert (await other.request({"type": "join", "room": "lobby", "limit": 100}))["type"] == "joined"


async def test_history_is_refused_once_the_process_budget_is_spent(connect, parley_settings):
    parley_settings.HISTORY_PROCESS_BYTES_PER_SEC = 1
    parley_settings.HISTORY_PROCESS_BURST_BYTES = 1_300_000
    users = [await make_user(f"u{i}") for i in range(3)]
    room = await make_room("lobby")
    await fill(room, users[0], 100, 4000)
    outcomes = []
    for user in users:
        client = await connect(user)
        await client.join("lobby", limit=1)
        outcomes.append((await client.request({"type": "history", "room": "lobby", "limit": 100}))["type"])
    # Each reserves ~787 KB and is settled to ~410 KB: two fit in 1.3 MB for everyone, a third not.
    assert outcomes == ["history", "history", "error"]


def test_a_history_request_reserves_the_largest_reply_it_could_get(parley_settings):
    parley_settings.MAX_TEXT_CHARS, parley_settings.REPLY_MAX_BYTES = 4000, 512 * 1024
    per_message = 4 * 4000 + consumer_db.MESSAGE_FIELDS_BYTES
    assert consumer_db.history_reserve_bytes(1) == consumer_db.HISTORY_MIN_COST_BYTES + per_message
    assert consumer_db.history_reserve_bytes(100) == consumer_db.HISTORY_MIN_COST_BYTES + 512 * 1024


async def test_a_send_goes_before_the_reads_waiting_for_the_database(connect, monkeypatch):
    """Writes have the database thread's first lane (parley.realtime.dbthread): a send that arrives behind
    ten slow history reads from ten sockets is committed, acked and delivered after at most the
    one read already running, not after all ten (FIFO made it wait ~2 s here)."""
    users = [await make_user(f"r{i}") for i in range(10)]
    bob = await make_user("bob")
    await make_room("lobby")
    readers = [await connect(u) for u in users]
    sender = await connect(bob)
    for r in readers:
        await r.join("lobby")
    await sender.join("lobby")
    page = selectors.message_page
    READ_SECS = 0.2

    def slow_page(**kwargs):
        time.sleep(READ_SECS)
        return page(**kwargs)

    monkeypatch.setattr(selectors, "message_page", slow_page)
    for i, r in enumerate(readers):
        await r.send({"type": "history", "ref": f"slow{i}", "room": "lobby"})
    await asyncio.sleep(0.05)  # the first read is running, nine wait
    started = time.monotonic()
    ack = await sender.request({"type": "send", "room": "lobby", "text": "first lane", "client_id": "k"},
                               timeout=10)
    waited = time.monotonic() - started
    assert ack["type"] == "ack"
    assert waited < 5 * READ_SECS, f"the send waited {waited:.2f} s behind the reads"
    for i, r in enumerate(readers):
        assert (await r.recv_type("history", timeout=10))["ref"] == f"slow{i}"


def test_reads_and_writes_share_the_database_thread():
    """One connection for both lanes: every read sees each commit that came before it."""
    from parley.realtime.dbthread import database_thread, read_thread

    assert read_thread.run(lambda: threading.current_thread().name, timeout=5) == "parley-db"
    assert database_thread.run(lambda: threading.current_thread().name, timeout=5) == "parley-db"

