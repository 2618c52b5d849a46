"""Pytest fixtures and checks for tests that drive real server subprocesses with parley_client.

Use with `from tests.support.fixtures import *` in a test module (fixtures are then local to it).
"""

from __future__ import annotations  # noqa: I001  (tests.support must come before parley_client)

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

import tests.support  # noqa: F401  (puts clients/python on sys.path)
from parley_client import Backoff, ParleyClient
from tests.support.server import RedisProcess, ServerProcess, database_url_for_tests, redis_url_for_tests

REQUIRE_SERVICES = os.environ.get("PARLEY_REQUIRE_SERVICES") == "1"

__all__ = [
    "Collector",
    "RawSocket",
    "assert_exactly_once",
    "closing_db",
    "entry_seq",
    "fast_client",
    "make_room",
    "make_user_token",
    "private_redis",
    "require_redis_server",
    "servers",
    "start_clients",
    "wait_for",
]


def require_redis_server() -> None:
    """Skip loudly when there is no redis-server binary; under PARLEY_REQUIRE_SERVICES=1, fail."""
    if not RedisProcess.available():
        msg = "needs the redis-server binary for a private, restartable Redis"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (PARLEY_REQUIRE_SERVICES=1)")
        pytest.skip("SKIPPED LOUDLY: " + msg)


# These tests are about delivery, not abuse limits: several users sending fast from one address
# and reconnecting often would trip the per-user message rate and the per-IP handshake rate.
# (test_client.py checks the client against the default limits.)
RELAXED_LIMITS = {
    "PARLEY_MESSAGES_PER_SEC": "100000", "PARLEY_MESSAGES_BURST": "100000",
    "PARLEY_FRAMES_PER_SEC": "100000", "PARLEY_FRAMES_BURST": "100000",
    "PARLEY_HANDSHAKES_PER_IP_PER_MIN": "100000", "PARLEY_HANDSHAKES_PER_USER_PER_MIN": "100000",
}


@pytest.fixture
def servers(request: pytest.FixtureRequest, transactional_db: Any) -> Iterator[Callable[..., ServerProcess]]:
    """`servers(**kw)` → a started ServerProcess on the test's database and channel backend.

    When the test fails, each server's log tail is printed before its data dir (and the log in
    it) is deleted: pytest shows it under the failure ("Captured stdout teardown"). A resilience
    test failed once in CI with nothing left to read (docs/benchmarks.md, session notes).
    """
    made: list[ServerProcess] = []

    def make(*, default_limits: bool = False, **kw: Any) -> ServerProcess:
        if not default_limits:
            kw["extra_env"] = {**RELAXED_LIMITS, **kw.get("extra_env", {})}
        kw.setdefault("database_url", database_url_for_tests())
        kw.setdefault("redis_url", redis_url_for_tests())
        server = ServerProcess(**kw)
        made.append(server)
        return server.start()

    yield make
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        for i, server in enumerate(made):
            print(f"\n--- server {i} (port {server.port}, pid {server.pid}) log tail ---\n{server.log_tail(300)}")
    for server in made:  # SIGTERM all first: their graceful shutdowns overlap
        if server.running:
            server.resume()
            server.proc.terminate()  # type: ignore[union-attr]
    for server in made:
        server.cleanup()
    _wait_for_other_sessions_to_end()


def _wait_for_other_sessions_to_end(timeout: float = 5) -> None:
    """PostgreSQL: a killed server's backends linger a moment; the test database can only be
    flushed and dropped without them."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.05)


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    require_redis_server()
    redis = RedisProcess().start()
    yield redis
    redis.stop()


_names = itertools.count(1)


def closing_db(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run fn in a worker thread and close that thread's connection afterwards: a connection
    left open there keeps PostgreSQL from dropping the test database at the end of the session."""
    import functools

    from django.db import connection

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return database_sync_to_async(wrapper)


@closing_db
def make_user_token(name: str | None = None) -> tuple[str, str]:
    """(username, bearer token) of a fresh user, through the ORM of the test database."""
    from parley import services

    username = name or f"u{next(_names)}"
    user = services.user_create(username=username)
    return username, services.token_create(user=user, name="test")[1]


@closing_db
def make_room(slug: str) -> dict[str, Any]:
    from parley import services

    room = services.room_create(slug=slug, title=slug.title())
    return {"slug": room.slug, "epoch": room.epoch}


def fast_client(url: str, token: str, **kw: Any) -> ParleyClient:
    """A client with test-friendly timings (quick reconnects)."""
    kw.setdefault("backoff", Backoff(base=0.05, cap=0.5))
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("request_timeout", 10.0)
    return ParleyClient(url, token=token, **kw)


ENTRY_TYPES = ("message", "edit", "delete", "reaction")  # the log's entries (protocol §10)


def entry_seq(entry: dict[str, Any]) -> int:
    return entry["message"]["seq"] if entry["type"] == "message" else entry["seq"]


class Collector:
    """Reads a client's events() in the background; keeps message payloads per room, and every
    log entry (message, edit, delete, reaction) per room."""

    def __init__(self, client: ParleyClient) -> None:
        self.client = client
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            if event["type"] == "message":
                self.messages.setdefault(event["room"], []).append(event["message"])
            if event["type"] in ENTRY_TYPES:
                self.entries.setdefault(event["room"], []).append(event)

    def seqs(self, room: str) -> list[int]:
        return [m["seq"] for m in self.messages.get(room, [])]

    def entry_seqs(self, room: str) -> list[int]:
        return [entry_seq(e) for e in self.entries.get(room, [])]

    def state(self, room: str, start: list[dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
        """The room's messages as this client sees them: `start` (a page) with every entry
        received folded in by parley_client.apply."""
        from parley_client import apply

        me = (self.client.user or {}).get("id")
        state = {m["seq"]: dict(m) for m in start or []}
        for entry in self.entries.get(room, []):
            apply(state, entry, me=me)
        return state

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def start_clients(url: str, tokens: list[str], room: str, **kw: Any) -> list[tuple[ParleyClient, Collector]]:
    out = []
    for token in tokens:
        client = fast_client(url, token, **kw)
        await asyncio.wait_for(client.start(), 15)
        collector = Collector(client)
        await client.join(room, timeout=15)
        out.append((client, collector))
    return out


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def assert_exactly_once(room: str, acks: list[dict[str, Any]], db: list[dict[str, Any]],
                        collectors: list[Collector], *, expect_all_acked: bool = True,
                        server_order_checks: bool = True) -> None:
    """Nothing lost, nothing doubled, in order.

    - the database log is 1..N without holes; no client_id appears twice;
    - every ack names a message that is in the database with the same seq, id and client_id;
    - each acked client_id appears once (the acks themselves never disagree);
    - if every send was acked, the database holds exactly the acked messages, no more;
    - each member received every message of the log exactly once, in seq order, identical to
      the database row (text, id, client_id);
    - with server_order_checks, the server itself never sent a duplicate or out-of-order seq
      (the client would have hidden it; RoomStats counts it).
    """
    seqs = [m["seq"] for m in db]
    assert seqs == list(range(1, len(db) + 1)), f"database log has holes/disorder: {seqs[:20]}…"
    by_seq = {m["seq"]: m for m in db}
    cids = [m["client_id"] for m in db]
    assert len(cids) == len(set(cids)), "a client_id is stored twice"
    acked: dict[str, dict[str, Any]] = {}
    for ack in acks:
        row = by_seq.get(ack["seq"])
        assert row is not None, f"acked seq {ack['seq']} is not in the database"
        assert (row["id"], row["client_id"]) == (ack["id"], ack["client_id"]), (row, ack)
        prev = acked.setdefault(ack["client_id"], ack)
        assert prev["seq"] == ack["seq"], f"two acks for one client_id disagree: {prev} {ack}"
    if expect_all_acked:
        assert len(db) == len(acked), f"{len(db)} stored but {len(acked)} acked: doubled or stray messages"
    for collector in collectors:
        got = collector.messages.get(room, [])
        got_seqs = [m["seq"] for m in got]
        assert got_seqs == seqs, (
            f"{collector.client.user}: received {len(got_seqs)} of {len(seqs)}; "
            f"missing {sorted(set(seqs) - set(got_seqs))[:10]}, "
            f"extra/dup {[s for s in got_seqs if got_seqs.count(s) > 1][:10]}")
        for m in got:
            row = by_seq[m["seq"]]
            assert (m["id"], m["text"], m["client_id"]) == (row["id"], row["text"], row["client_id"])
        if server_order_checks:
            stats = collector.client.room(room).stats
            assert stats.duplicates == 0, f"server sent {stats.duplicates} duplicate message frames"
            assert stats.out_of_order == 0, f"server sent {stats.out_of_order} frames ahead of a gap"


class RawSocket:
    """A bare `websockets` connection speaking JSON frames, for requests the client never makes."""

    def __init__(self, ws: Any, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.inbox: list[dict[str, Any]] = []
        self._ref = 0

    @classmethod
    async def open(cls, url: str, token: str, max_size: int | None = 2**22) -> RawSocket:
        from websockets.asyncio.client import connect

        ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                           ping_interval=None, proxy=None, open_timeout=5, max_size=max_size)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert hello["type"] == "hello"
        return cls(ws, hello)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def take(self, match: Callable[[dict[str, Any]], bool], timeout: float = 5) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if match(frame):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            if match(frame):
                return frame
            self.inbox.append(frame)

    async def request(self, frame: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        self._ref += 1
        ref = f"x{self._ref}"
        await self.send({**frame, "ref": ref})
        return await self.take(lambda f: f.get("ref") == ref, timeout)

    async def drain(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until nothing has for `quiet` seconds (plus the inbox)."""
        out, self.inbox = self.inbox, []
        while True:
            try:
                out.append(json.loads(await asyncio.wait_for(self.ws.recv(), quiet)))
            except TimeoutError:
                return out

    def abort(self) -> None:
        self.ws.transport.abort()

    async def close(self) -> None:
        await self.ws.close()
