"""Cluster-wide counters (parley.shared_limits): two real server processes on one Redis count
each user's sockets, each user's messages and each address's and user's handshakes together,
so two processes allow each limit once, not twice; a killed process's sockets stop counting
within one heartbeat interval; and with Redis stopped the limits hold per process, then are
the cluster's again once it is back.

The processes share the test's Redis (the PostgreSQL + Redis pass) under one prefix of their own,
or a private RedisProcess that the outage test stops and starts.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
import redis
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import require_redis
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import make_room, make_user_token
from tests.support.server import RedisProcess, ServerProcess, redis_url_for_tests

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOM = "lobby"
HEARTBEAT_SECS = 3  # the servers' PARLEY_HEARTBEAT_INTERVAL_SECS: a dead process's sockets count this long


def pair(servers: Any, redis_url: str, **env: str) -> tuple[ServerProcess, ServerProcess]:
    """Two server processes on one Redis and one prefix (a cluster), with these settings."""
    prefix = f"sl{uuid.uuid4().hex[:8]}"
    extra = {"PARLEY_HEARTBEAT_INTERVAL_SECS": str(HEARTBEAT_SECS), **env}  # (env may override it)
    return (servers(redis_url=redis_url, redis_prefix=prefix, extra_env=extra),
            servers(redis_url=redis_url, redis_prefix=prefix, extra_env=extra))


async def open_ws(server: ServerProcess, token: str | None, **headers: str) -> Any:
    """A socket with its hello read; raises InvalidStatus when the handshake is refused."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    ws = await websockets.connect(server.ws_url, additional_headers=headers, open_timeout=10)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    ws.hello = hello
    return ws


async def request(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    ref = uuid.uuid4().hex[:8]
    await ws.send(json.dumps({**frame, "ref": ref}))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if reply.get("ref") == ref:
            return reply


async def joined(server: ServerProcess, token: str) -> Any:
    ws = await open_ws(server, token)
    assert (await request(ws, {"type": "join", "room": ROOM}))["type"] == "joined"
    return ws


async def say(ws: Any, text: str) -> dict[str, Any]:
    return await request(ws, {"type": "send", "room": ROOM, "text": text, "client_id": uuid.uuid4().hex})


def post(server: ServerProcess, token: str, text: str) -> int:
    """POST /api/rooms/lobby/messages; the HTTP status."""
    req = urllib.request.Request(f"{server.http_url}/api/rooms/{ROOM}/messages", method="POST",
                                 data=json.dumps({"text": text, "client_id": uuid.uuid4().hex}).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def refused_with(ws: Any) -> tuple[str, int]:
    """(error code, close code) of a socket the server refused after the handshake: its first
    frame (read by open_ws) is the error, then it closes."""
    error = ws.hello
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return error["code"], ws.close_code


async def test_sockets_per_user_are_counted_across_processes(servers):
    require_redis()
    a, b = pair(servers, redis_url_for_tests(), PARLEY_MAX_SOCKETS_PER_USER="4")
    _, token = await make_user_token()
    tabs = [await open_ws(a, token), await open_ws(b, token), await open_ws(a, token), await open_ws(b, token)]
    for server in (a, b):  # each process has 2 of the user's 4: either refuses a fifth
        assert await refused_with(await open_ws(server, token)) == ("too_many_sockets", 4409)
    await tabs[0].close()  # closed on A: the slot is free on B at once
    fifth = await open_ws(b, token)
    assert fifth.hello["type"] == "hello"
    for ws in [*tabs[1:], fifth]:
        await ws.close()


async def test_a_killed_process_sockets_stop_counting_within_a_heartbeat(servers):
    require_redis()
    a, b = pair(servers, redis_url_for_tests(), PARLEY_MAX_SOCKETS_PER_USER="4")
    _, token = await make_user_token()
    on_a = [await open_ws(a, token), await open_ws(a, token)]
    on_b = [await open_ws(b, token), await open_ws(b, token)]
    a.kill()  # SIGKILL: A never says its two sockets are gone
    # The documented bound is one heartbeat interval; the margin is for a loaded machine only.
    deadline = time.monotonic() + 3 * HEARTBEAT_SECS + 10
    while True:
        ws = await open_ws(b, token)
        if ws.hello["type"] == "hello":
            break
        await ws.close()
        assert time.monotonic() < deadline, "the killed process's sockets still count"
        await asyncio.sleep(0.2)
    # The slots freed are A's two, not more: B's own still count. Each of A's entries expires on
    # its own (a heartbeat after its socket's last refresh), so the second may come a moment
    # after the first: wait for it too (a busy CI box once saw it 1 handshake late).
    while True:
        again = await open_ws(b, token)
        if again.hello["type"] == "hello":
            break
        await again.close()
        assert time.monotonic() < deadline, "the killed process's second socket still counts"
        await asyncio.sleep(0.2)
    assert await refused_with(await open_ws(b, token)) == ("too_many_sockets", 4409)
    for s in [*on_a, *on_b, ws, again]:
        await s.close()


async def test_the_message_rate_is_shared_across_processes_and_the_http_api(servers):
    require_redis()
    # A burst of 6 and one token per 1,000 s: nothing refills during the test.
    a, b = pair(servers, redis_url_for_tests(), PARLEY_MESSAGES_PER_SEC="0.001", PARLEY_MESSAGES_BURST="6")
    await make_room(ROOM)
    _, token = await make_user_token()
    ws_a, ws_b = await joined(a, token), await joined(b, token)
    for i in range(2):
        assert (await say(ws_a, f"a{i}"))["type"] == "ack"
        assert (await say(ws_b, f"b{i}"))["type"] == "ack"
    assert await asyncio.to_thread(post, a, token, "http a") == 201
    assert await asyncio.to_thread(post, b, token, "http b") == 201
    # Six sent, three on each process: the seventh is refused everywhere, on either path.
    for ws in (ws_a, ws_b):
        refused = await say(ws, "one too many")
        assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
    for server in (a, b):
        assert await asyncio.to_thread(post, server, token, "one too many") == 429
    await ws_a.close()
    await ws_b.close()


def security_lines(server: ServerProcess, text: str) -> int:
    return server.log_path.read_text(errors="replace").count(text)


async def test_handshakes_per_address_and_per_user_are_counted_across_processes(servers):
    require_redis()
    a, b = pair(servers, redis_url_for_tests(), PARLEY_HANDSHAKES_PER_IP_PER_MIN="4",
                PARLEY_HANDSHAKES_PER_USER_PER_MIN="3")
    # Refused handshakes from 127.0.0.1 (no Origin, no token), alternately on A and B: all are
    # refused, but only the first 4 get as far as the Origin check (and its log line).
    for i in range(10):
        with pytest.raises(InvalidStatus) as refused:
            await open_ws((a, b)[i % 2], None)
        assert refused.value.response.status_code == 403
    line = "refused WebSocket handshake without Origin or token"
    assert security_lines(a, line) + security_lines(b, line) == 4
    # Handshakes that authenticate spend their user's budget, not the (spent) address's: 3 of
    # them, across both processes, then the user's is spent too.
    _, token = await make_user_token()
    for server in (a, b, a):
        await (await open_ws(server, token)).close()
    for server in (a, b):
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(server, token)
        assert refused.value.response.status_code == 403
    assert security_lines(a, "handshake rate limit") + security_lines(b, "handshake rate limit") == 2


async def counted_in_redis(client: redis.Redis, prefix: str, server: ServerProcess) -> bool:
    """Whether a fresh socket of a fresh user on `server` is counted in this Redis."""
    _, probe = await make_user_token()
    ws = await open_ws(server, probe)
    try:
        key = f"{prefix}:limit:sockets:{ws.hello['user']['id']}"
        return bool(await asyncio.to_thread(client.zcard, key))
    finally:
        await ws.close()


async def test_with_redis_stopped_sends_work_under_per_process_limits_then_redis_counts_again(servers):
    from tests.support.fixtures import require_redis_server

    require_redis_server()
    private = RedisProcess().start()
    try:
        await run_outage(servers, private)
    finally:
        private.stop()


async def run_outage(servers: Any, private: RedisProcess) -> None:
    # The default heartbeat: a socket must not be closed as silent while Redis is away and its
    # neighbour's sends are slow.
    a, b = pair(servers, private.url, PARLEY_MESSAGES_PER_SEC="0.001", PARLEY_MESSAGES_BURST="2",
                PARLEY_HEARTBEAT_INTERVAL_SECS="25")
    prefix = a.redis_prefix
    client = redis.Redis.from_url(private.url)
    await make_room(ROOM)
    _, token = await make_user_token()
    ws_a, ws_b = await joined(a, token), await joined(b, token)
    for ws in (ws_a, ws_b):
        assert (await say(ws, "on redis"))["type"] == "ack"
    assert (await say(ws_a, "over"))["code"] == "rate_limited"  # the cluster's burst is spent

    private.kill()  # Redis is gone: each process counts on its own, and nobody is refused for it
    outage_began = time.monotonic()
    for ws in (ws_a, ws_b):
        for i in range(2):
            assert (await say(ws, f"no redis {i}"))["type"] == "ack"
        assert (await say(ws, "over"))["code"] == "rate_limited"  # the per-process limit holds
    # Sends there wait on the hub's Redis retries (seconds each); the limits' warning is logged
    # once, then at most once per WARN_INTERVAL_SECS, however many sends fell back.
    from parley.shared_limits import WARN_INTERVAL_SECS

    most = 1 + int((time.monotonic() - outage_began) // WARN_INTERVAL_SECS)
    for server in (a, b):
        assert 1 <= security_lines(server, "Redis unavailable for the cluster-wide limits") <= most

    private.start()  # an empty Redis on the same port
    for server in (a, b):
        deadline = time.monotonic() + 30
        while not await counted_in_redis(client, prefix, server):
            assert time.monotonic() < deadline, "the process did not go back to Redis"
            await asyncio.sleep(0.3)
        assert security_lines(server, "the limits are cluster-wide again") >= 1
    _, fresh = await make_user_token()
    ws_a2, ws_b2 = await joined(a, fresh), await joined(b, fresh)
    for ws in (ws_a2, ws_b2):
        assert (await say(ws, "on redis again"))["type"] == "ack"
    for ws in (ws_a2, ws_b2):  # shared again: 2 in all, not 2 per process
        assert (await say(ws, "over"))["code"] == "rate_limited"
    for ws in (ws_a, ws_b, ws_a2, ws_b2):
        await ws.close()
    client.close()
