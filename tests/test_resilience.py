"""Nothing lost, nothing doubled: real clients (parley_client) against real server subprocesses.

Each test breaks something — the clients' TCP connections, the server process, Redis — while
three users send, and then checks every member against the database (assert_exactly_once):
every acked message is stored once and reached every member once, in seq order.

The server runs on the test process's own database (SQLite file or the PostgreSQL test
database) and channel backend (in-memory, or REDIS_URL), so both suite runs exercise it.
"""

from __future__ import annotations  # noqa: I001  (tests.support must come before parley_client)

import asyncio
import random
import time
from typing import Any

import pytest

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from parley_client import Backoff, ParleyClient
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import (
    Collector,
    RawSocket,
    assert_exactly_once,
    closing_db,
    fast_client,
    make_room,
    make_user_token,
    start_clients,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

ROOM = "lobby"


async def send_stream(client: ParleyClient, prefix: str, n: int, *, in_flight: int = 4,
                      pace: float = 0.01, until: asyncio.Task[Any] | None = None) -> list[dict[str, Any]]:
    """At least n sends (and more until `until` is done), up to in_flight unacked at once;
    returns the acks."""
    sem = asyncio.Semaphore(in_flight)
    tasks: list[asyncio.Task[dict[str, Any]]] = []

    async def one(i: int) -> dict[str, Any]:
        try:
            return await client.send(ROOM, f"{prefix} #{i}", timeout=60)
        finally:
            sem.release()

    i = 0
    while i < n or (until is not None and not until.done()):
        await sem.acquire()
        await asyncio.sleep(pace)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    return list(await asyncio.gather(*tasks))


async def three_members(server: Any) -> tuple[list[str], list[Any]]:
    await make_room(ROOM)
    tokens = [(await make_user_token(name))[1] for name in ("ada", "bob", "cy")]
    members = await start_clients(server.ws_url, tokens, ROOM)
    return tokens, members


async def settle(members: list[Any], total: int, timeout: float = 20) -> None:
    await wait_for(lambda: all(len(c.seqs(ROOM)) >= total for _, c in members), timeout,
                   f"every member to hold {total} messages; have {[len(c.seqs(ROOM)) for _, c in members]}")
    await asyncio.sleep(0.3)  # anything doubled would arrive now


async def close_all(members: list[Any]) -> None:
    for client, collector in members:
        await client.close()
        await collector.stop()


@pytest.mark.slow
async def test_dropped_sockets_mid_stream_lose_and_double_nothing(servers: Any) -> None:
    server = servers()
    tokens, members = await three_members(server)
    per_client = 30
    aborts = 0

    async def chaos() -> None:
        # Breaks connections until it has broken 8 (or 30 s passed); the streams keep sending
        # until then. It used to run beside a fixed number of sends, which faster group commit
        # finished before 5 connections had been broken.
        nonlocal aborts
        rng = random.Random(7)
        deadline = asyncio.get_running_loop().time() + 30
        while aborts < 8 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            client, _ = rng.choice(members)
            if client.connected:
                client.abort_connection()  # TCP gone, no close frame: as if the network broke
                aborts += 1

    chaos_task = asyncio.create_task(chaos())
    results = await asyncio.gather(*(send_stream(c, f"{i}", per_client, until=chaos_task)
                                     for i, (c, _) in enumerate(members)))
    await chaos_task
    acks = [a for r in results for a in r]
    await settle(members, len(acks))
    db = server.all_messages(ROOM, tokens[0])
    assert_exactly_once(ROOM, acks, db, [c for _, c in members])
    assert aborts >= 5, "the chaos task did not break enough connections to mean anything"
    assert sum(c.stats.connections for c, _ in members) >= 3 + aborts // 2
    assert sum(c.stats.resumes_recovered for c, _ in members) >= 1
    await close_all(members)


@pytest.mark.slow
async def test_server_sigkill_and_restart_lose_and_double_nothing(servers: Any) -> None:
    server = servers()
    tokens, members = await three_members(server)
    per_client = 30

    async def killer() -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            await asyncio.to_thread(server.kill)    # no close frames, no cleanup
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)   # same port, same database
            # Every client must come back to this instance before it dies too.
            await wait_for(lambda: all(c.connected and c.room(ROOM).joined_on is not None
                                       for c, _ in members), 15, "every client to resume")

    kill_task = asyncio.create_task(killer())
    results = await asyncio.gather(*(send_stream(c, f"{i}", per_client, pace=0.02, until=kill_task)
                                     for i, (c, _) in enumerate(members)))
    await kill_task
    acks = [a for r in results for a in r]
    await settle(members, len(acks), timeout=30)
    db = server.all_messages(ROOM, tokens[0])
    assert_exactly_once(ROOM, acks, db, [c for _, c in members])
    assert server.starts == 3
    for client, _ in members:
        assert client.stats.connections >= 3, client.stats  # reconnected after each kill on its own
    await close_all(members)


@pytest.mark.slow
async def test_redis_restart_delivery_resumes_and_nothing_acked_is_lost(servers: Any, private_redis: Any) -> None:
    """Only meaningful with Redis: a private redis-server is killed and restarted.

    Its data is gone afterwards (--save "" --appendonly no), like a Redis that failed over to an
    empty replica: the hub's subscriptions and presence vanish with it.
    """
    server = servers(redis_url=private_redis.url)
    tokens, members = await three_members(server)
    per_client = 30

    async def outage() -> None:
        await asyncio.sleep(0.4)
        await asyncio.to_thread(private_redis.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_redis.start)

    outage_task = asyncio.create_task(outage())
    results = await asyncio.gather(*(send_stream(c, f"{i}", per_client, pace=0.03)
                                     for i, (c, _) in enumerate(members)))
    await outage_task
    acks = [a for r in results for a in r]
    # Delivery resumes: messages sent well after the restart reach everyone, live.
    await asyncio.sleep(0.5)
    after = [await client.send(ROOM, f"after restart {i}", timeout=30) for i, (client, _) in enumerate(members)]
    acks += after
    db_count = 3 * per_client + len(after)
    try:
        await settle(members, db_count, timeout=15)
    finally:
        db = server.all_messages(ROOM, tokens[0])
        missing = {c.client.user["username"]: sorted(set(range(1, len(db) + 1)) - set(c.seqs(ROOM)))
                   for _, c in members}
        print("per-member missing seqs after the Redis restart:", missing)
        print("client stats:", [c.stats for c, _ in members])
        print("server log:", server.log_tail(60))
    assert_exactly_once(ROOM, acks, db, [c for _, c in members], server_order_checks=False)
    await close_all(members)


@pytest.mark.slow
async def test_retry_storm_same_client_id_yields_one_message(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, token = await make_user_token("storm")
    sockets = [await RawSocket.open(server.ws_url, token) for _ in range(4)]
    for sock in sockets:
        assert (await sock.request({"type": "join", "room": ROOM}))["type"] == "joined"
    frame = {"type": "send", "room": ROOM, "text": "once only", "client_id": "storm-1"}

    async def fire(sock: RawSocket, n: int) -> list[dict[str, Any]]:
        refs = [f"s{id(sock)}-{i}" for i in range(n)]
        for ref in refs:
            await sock.send({**frame, "ref": ref})
        return [await sock.take(lambda f, r=ref: f.get("ref") == r, 10) for ref in refs]

    replies = [r for batch in await asyncio.gather(*(fire(s, 10) for s in sockets)) for r in batch]
    assert all(r["type"] == "ack" for r in replies), [r for r in replies if r["type"] != "ack"][:3]
    assert {(r["seq"], r["id"]) for r in replies} == {(1, replies[0]["id"])}
    assert sum(not r["duplicate"] for r in replies) == 1
    for sock in sockets:  # each socket got the message event once
        events = [f for f in await sock.drain() if f["type"] == "message"]
        assert [e["message"]["seq"] for e in events] == [1]
        sock.abort()

    # After reconnects, on new sockets, and through the client's outbox: still one message.
    clients = [ParleyClient(server.ws_url, token=token, backoff=Backoff(base=0.05, cap=0.3)) for _ in range(3)]
    for client in clients:
        await client.start()
        await client.join(ROOM)
    acks = await asyncio.gather(*(c.send(ROOM, "once only", client_id="storm-1") for c in clients for _ in range(5)))
    clients[0].abort_connection()
    acks.append(await clients[0].send(ROOM, "once only", client_id="storm-1"))
    assert {(a["seq"], a["duplicate"]) for a in acks} == {(1, True)}
    db = server.all_messages(ROOM, token)
    assert [(m["seq"], m["client_id"], m["text"]) for m in db] == [(1, "storm-1", "once only")]
    for client in clients:
        await client.close()


@pytest.mark.slow
async def test_retry_storm_racing_first_send_on_many_sockets(servers: Any) -> None:
    """The first attempts race each other (none committed yet) on sockets of two server processes
    sharing the database: still one message, and exactly one non-duplicate ack."""
    server, other = servers(), servers()
    await make_room(ROOM)
    _, token = await make_user_token("racer")
    sockets = [await RawSocket.open((server if i % 2 else other).ws_url, token) for i in range(6)]
    for sock in sockets:
        await sock.request({"type": "join", "room": ROOM})
    for round_no in range(5):
        cid = f"race-{round_no}"
        replies = await asyncio.gather(*(s.request({"type": "send", "room": ROOM, "text": f"r{round_no}",
                                                     "client_id": cid}, timeout=15) for s in sockets))
        assert all(r["type"] == "ack" for r in replies), replies
        assert len({r["seq"] for r in replies}) == 1, replies
        assert sum(not r["duplicate"] for r in replies) == 1, replies
    db = server.all_messages(ROOM, token)
    assert [m["client_id"] for m in db] == [f"race-{i}" for i in range(5)]
    for sock in sockets:
        await sock.close()


async def test_resume_with_foreign_epoch_or_too_large_gap_is_not_recovered(servers: Any) -> None:
    server = servers(extra_env={"PARLEY_RESUME_MAX_GAP": "5"})
    room = await make_room(ROOM)
    _, token = await make_user_token("resumer")
    sock = await RawSocket.open(server.ws_url, token)
    await sock.request({"type": "join", "room": ROOM})
    for i in range(12):
        assert (await sock.request({"type": "send", "room": ROOM, "text": f"m{i}", "client_id": f"m{i}"}))["type"] == "ack"
    await sock.close()

    async def resume(**fields: Any) -> dict[str, Any]:
        s = await RawSocket.open(server.ws_url, token)
        reply = await s.request({"type": "join", "room": ROOM, **fields})
        await s.close()
        assert reply["type"] == "joined", reply
        return reply

    ok = await resume(after_seq=8, epoch=room["epoch"])  # gap 4 <= 5: recovered, exactly 9..12
    assert ok["recovered"] is True
    assert [m["seq"] for m in ok["messages"]] == [9, 10, 11, 12]
    edge = await resume(after_seq=7, epoch=room["epoch"])  # gap == PARLEY_RESUME_MAX_GAP: still recovered
    assert edge["recovered"] is True and [m["seq"] for m in edge["messages"]] == [8, 9, 10, 11, 12]
    assert (await resume(after_seq=12, epoch=room["epoch"]))["messages"] == []  # nothing missed

    for fields in ({"after_seq": 8, "epoch": "0" * 32},            # foreign/stale epoch
                   {"after_seq": 6, "epoch": room["epoch"]},       # gap 6: one over the limit
                   {"after_seq": 2, "epoch": room["epoch"]},       # gap 10 > PARLEY_RESUME_MAX_GAP
                   {"after_seq": 40, "epoch": room["epoch"]}):     # ahead of the log
        reply = await resume(**fields)
        assert reply["recovered"] is False, (fields, reply["recovered"])
        assert [m["seq"] for m in reply["messages"]] == list(range(1, 13)), fields  # the newest page
        assert reply["room"]["epoch"] == room["epoch"]

    fresh = await resume()
    assert fresh["recovered"] is None


@pytest.mark.slow
async def test_client_survives_a_hung_server_via_heartbeat(servers: Any) -> None:
    """SIGSTOP keeps the server's sockets open but silent: only the heartbeat can notice."""
    server = servers()
    await make_room(ROOM)
    _, token = await make_user_token("hb")
    client = ParleyClient(server.ws_url, token=token, heartbeat_secs=0.4, dead_after_secs=0.8,
                          connect_timeout=1.0, backoff=Backoff(base=0.05, cap=0.3))
    await client.start()
    await client.join(ROOM)
    first = await client.send(ROOM, "before the hang")
    server.pause()
    t0 = time.monotonic()
    try:
        pending = asyncio.create_task(client.send(ROOM, "during the hang"))
        await wait_for(lambda: client.stats.dead_connections >= 1, 5, "the heartbeat to declare the link dead")
        detected = time.monotonic() - t0
    finally:
        server.resume()
    ack = await asyncio.wait_for(pending, 20)
    assert detected < 3.0
    assert ack["seq"] == first["seq"] + 1
    db = server.all_messages(ROOM, token)
    assert [m["text"] for m in db] == ["before the hang", "during the hang"]
    await client.close()


@pytest.mark.slow
async def test_redis_restart_each_acked_message_reaches_live_members(servers: Any, private_redis: Any) -> None:
    """After Redis came back and everyone resumed, each single acked message must arrive live.

    No later message follows to trigger the server's gap fill, so a broadcast that Redis
    dropped would stay missing on every open socket until it reconnects.
    """
    server = servers(redis_url=private_redis.url)
    tokens, members = await three_members(server)
    (ada, _ada_c), *_ = members
    # Concurrent sends from all three: the server's Redis connection pools grow past one.
    await asyncio.gather(*(c.send(ROOM, f"warm-up {i}") for i in range(8) for c, _ in members))
    await settle(members, 24)
    await asyncio.to_thread(private_redis.kill)
    await asyncio.to_thread(private_redis.start)  # at once: the shortest possible outage
    # Sockets either die and the clients resume, or survive
    # (redis-py reconnected in time) and the server must resync them; either way, let it settle.
    await asyncio.sleep(2.0)
    await wait_for(lambda: all(c.connected and c.room(ROOM).joined_on is not None for c, _ in members),
                   15, "every client to be connected and joined")
    print("connections per client:", [c.stats.connections for c, _ in members])
    late: list[int] = []
    for i in range(6):
        ack = await ada.send(ROOM, f"after restart {i}", timeout=15)
        late.append(ack["seq"])
        try:
            await wait_for(lambda s=ack["seq"]: all(s in c.seqs(ROOM) for _, c in members), 3,
                           f"seq {ack['seq']} to reach every member live")
        finally:
            print(f"seq {ack['seq']}: held by",
                  [c.client.user["username"] for _, c in members if ack["seq"] in c.seqs(ROOM)])
    db = server.all_messages(ROOM, tokens[0])
    assert [m["seq"] for m in db][-6:] == late
    assert_exactly_once(ROOM, [], db, [c for _, c in members], expect_all_acked=False)
    await close_all(members)


@pytest.mark.slow
async def test_two_server_processes_one_killed_order_and_exactly_once(servers: Any, private_redis: Any) -> None:
    """Two processes share the database and a (private) Redis layer; senders on both race, so
    broadcasts can overtake each other (the server's reorder/gap-fill path). Then one process is
    SIGKILLed and its clients move to the other one."""
    prefix = "two" + str(private_redis.port)
    s1 = servers(redis_url=private_redis.url, redis_prefix=prefix)
    s2 = servers(redis_url=private_redis.url, redis_prefix=prefix)
    await make_room(ROOM)
    tokens = [(await make_user_token(name))[1] for name in ("ada", "bob", "cy", "dee")]
    # ada and cy on s1, bob and dee on s2; the s1 clients fail over to s2 when s1 dies.
    members = []
    for i, token in enumerate(tokens):
        url = (s1 if i % 2 == 0 else s2).ws_url
        members += await start_clients(url, [token], ROOM)

    async def failover() -> None:
        await asyncio.sleep(0.8)
        for client, _ in members[0::2]:
            client.url = s2.ws_url  # where a load balancer would send them next
        await asyncio.to_thread(s1.kill)

    kill_task = asyncio.create_task(failover())
    results = await asyncio.gather(*(send_stream(c, f"{i}", 25, in_flight=6, pace=0.005, until=kill_task)
                                     for i, (c, _) in enumerate(members)))
    await kill_task
    acks = [a for r in results for a in r]
    await settle(members, len(acks), timeout=30)
    db = s2.all_messages(ROOM, tokens[0])
    assert_exactly_once(ROOM, acks, db, [c for _, c in members])
    await close_all(members)


@closing_db
def _bulk_messages(slug: str, username: str, n: int, text: str) -> None:
    """n committed messages straight through the ORM (as if sent while a client was away)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from parley.models import Message, Room

    author = get_user_model().objects.get(username=username)
    with transaction.atomic():
        room = Room.objects.select_for_update().get(slug=slug)
        now = timezone.now()
        Message.objects.bulk_create([
            Message(room=room, seq=room.last_seq + i + 1, author=author, text=f"{i} {text}",
                    client_id=f"bulk-{i}", created_at=now) for i in range(n)])
        Room.objects.filter(pk=room.pk).update(last_seq=room.last_seq + n)


@pytest.mark.slow
async def test_resume_within_the_gap_limit_fits_the_outbound_budget(servers: Any) -> None:
    """A resume the server accepts (gap <= PARLEY_RESUME_MAX_GAP, default settings) must be
    deliverable. 1,000 legal messages of 3,990 'é' make a ~8 MB `joined` frame: more than
    PARLEY_OUTBOUND_MAX_BYTES (4 MiB). Before 0d724e1 (now PARLEY_REPLY_MAX_BYTES) the server
    closed the socket with 4413 here, and the client's next resume (same after_seq, as
    protocol §7 says for 4413) ended the same way: the client could never rejoin the room.
    Now the reply is `recovered: false` (or fits), and the client pages history.
    """
    server = servers()
    room = await make_room(ROOM)
    await make_user_token("writer")
    _, token = await make_user_token("reader")
    await _bulk_messages(ROOM, "writer", 1000, "é" * 3990)
    sock = await RawSocket.open(server.ws_url, token, max_size=None)
    try:
        reply = await sock.request({"type": "join", "room": ROOM, "after_seq": 0, "epoch": room["epoch"]}, timeout=20)
    except Exception as exc:
        pytest.fail(f"resume of 1,000 messages (gap within PARLEY_RESUME_MAX_GAP) was not answered: "
                    f"{exc!r}, close code {sock.ws.close_code}")
    assert reply["type"] == "joined"
    if reply["recovered"]:
        assert [m["seq"] for m in reply["messages"]] == list(range(1, 1001))
    await sock.close()


@pytest.mark.slow
async def test_client_away_for_a_large_but_resumable_gap_gets_back_in(servers: Any) -> None:
    """The same server bug seen by a client: 1,000 long messages arrive while it is away, and
    every resume is cut off with 4413. A client that just resumes again never gets back in (it
    spun through 115 closes in 12 s here); parley_client gives up resuming after two cut-off
    resumes, joins fresh and pages the gap from history, so it gets every message once."""
    server = servers()
    await make_room(ROOM)
    await make_user_token("writer")
    _, token = await make_user_token("reader")
    client = fast_client(server.ws_url, token)
    await client.start()
    collector = Collector(client)
    await client.join(ROOM)
    await asyncio.to_thread(server.kill)
    await _bulk_messages(ROOM, "writer", 1000, "é" * 3990)
    await asyncio.to_thread(server.start)
    try:
        await wait_for(lambda: len(collector.seqs(ROOM)) == 1000, 12, "the 1,000 missed messages")
    finally:
        closes = [e["code"] for e in collector.events if e["type"] == "disconnected"]
        print("close codes seen by the client:", closes[:10], "... total", len(closes))
        await client.close()
        await collector.stop()
    assert collector.seqs(ROOM) == list(range(1, 1001))
    assert client.room(ROOM).stats.duplicates == 0
