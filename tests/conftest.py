"""Shared fixtures: users, tokens, and connected WebSocket clients on the real ASGI application.

The backends come from the environment (scripts/test runs the suite twice): no DATABASE_URL /
REDIS_URL means SQLite and Parley's in-memory hub and presence; with them, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import override_settings

from config.asgi import application
from parley import services
from parley.conf import parley_settings as _parley_settings

ORIGIN = b"http://localhost"
HOST = b"localhost"  # the Host header every real client sends; ORIGIN is same-origin with it
REQUIRE_SERVICES = os.environ.get("PARLEY_REQUIRE_SERVICES") == "1"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    """Keep each phase's report on the item (item.rep_call …): fixtures read it at teardown to
    tell a failed test (tests/support/fixtures.servers prints its servers' logs then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def require_redis() -> None:
    """Skip a test that needs Redis in the run without REDIS_URL.

    scripts/test runs the suite twice, the second time with REDIS_URL; whether Redis is there
    at all is its check (loud, and fatal under PARLEY_REQUIRE_SERVICES=1), not this one's.
    """
    if not _parley_settings.REDIS_URL:
        pytest.skip("needs Redis: runs in scripts/test's PostgreSQL + Redis pass (REDIS_URL)")


class override_parley(override_settings):
    """`@override_parley(MAX_ROOMS_PER_SOCKET=2)` (or `with override_parley(...)`): those keys of
    the PARLEY setting for the test, the other keys as they were when it starts (the suite's own
    PARLEY dict, filled from tests/bootstrap_env.py's environment, raises the rate limits)."""

    def __init__(self, **overrides: Any) -> None:
        self.parley_overrides = overrides
        super().__init__()

    def enable(self) -> None:
        self.options = {"PARLEY": {**getattr(settings, "PARLEY", {}), **self.parley_overrides}}
        super().enable()


class ParleyOverrides:
    """The `parley_settings` fixture: reads give parley.conf.parley_settings' values, and
    `parley_settings.KEY = value` (or `parley_settings(KEY=value, ...)`) sets those keys of the
    PARLEY setting through pytest-django's `settings` fixture, which undoes it after the test."""

    def __init__(self, django_settings: Any) -> None:
        object.__setattr__(self, "_settings", django_settings)

    def __call__(self, **overrides: Any) -> None:
        self._settings.PARLEY = {**getattr(self._settings, "PARLEY", {}), **overrides}

    def __getattr__(self, key: str) -> Any:
        return getattr(_parley_settings, key)

    def __setattr__(self, key: str, value: Any) -> None:
        self(**{key: value})


@pytest.fixture
def parley_settings(settings: Any) -> ParleyOverrides:
    return ParleyOverrides(settings)


@pytest.fixture(autouse=True)
def _flush_redis() -> Iterator[None]:
    """Each test ends with none of this run's keys in Redis (presence outlives a test otherwise).

    Synchronous (redis-py's blocking client): an async autouse fixture would need an event loop
    of its own, which the browser tests cannot have (Playwright's sync API keeps one running)."""
    yield
    if _parley_settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(_parley_settings.REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{_parley_settings.REDIS_PREFIX}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture(autouse=True)
def _fresh_process_state() -> None:
    """Each test starts with none of this process's caches and budgets keyed by database ids.

    On SQLite a test's rows are rolled back, and with them the id sequences: the next test's
    first user and room get the same ids again. A slug → id hint, a "this RoomState exists"
    mark, a "not a DM" mark or a user's spent history budget left by one test would otherwise
    apply to another test's different rows (a join refused as rate_limited, a room's read
    state never written), depending on which tests ran before it.
    """
    import parley.commands
    import parley.opened_rooms
    import parley.receivers
    import parley.session
    import parley.throttles
    from parley import limits

    parley.session._room_ids.clear()
    parley.opened_rooms.clear()
    parley.receivers._not_dm.clear()
    for module in (limits, parley.throttles):
        for value in vars(module).values():
            if isinstance(value, limits.BucketMap):
                value._buckets.clear()
    budget = parley.commands._history_budget
    budget._buckets.clear()
    budget._total = None


PASSWORD = "correct-horse-battery"  # every test user's, unless a test says otherwise


def user(name: str, **extra: Any) -> Any:
    """A user with PASSWORD and any model fields given (e.g. is_active=False), saved."""
    u = services.user_create(username=name, password=PASSWORD)
    for key, value in extra.items():
        setattr(u, key, value)
    if extra:
        u.save()
    return u


@database_sync_to_async
def make_user(username: str) -> Any:
    return services.user_create(username=username, password=PASSWORD)


@database_sync_to_async
def make_token(user: Any) -> str:
    return services.token_create(user=user, name="test")[1]


@database_sync_to_async
def make_room(slug: str, *, owner: Any = None, private: bool = False) -> Any:
    return services.room_create(slug=slug, title=slug.title(), owner=owner, is_private=private)


class Client:
    """A connected test client: a WebsocketCommunicator that speaks JSON frames."""

    def __init__(self, communicator: WebsocketCommunicator, user: Any, hello: dict[str, Any],
                 rooms: dict[str, Any] | None = None) -> None:
        self.ws = communicator
        self.user = user
        self.hello = hello
        self.rooms = rooms  # a version 2 socket's `rooms` frame, which follows hello (protocol.md §11)
        self._ref = 0
        self.inbox: list[dict[str, Any]] = []  # frames read while waiting for something else

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json_to(frame)

    async def recv(self, timeout: float = 3) -> dict[str, Any]:
        if self.inbox:
            return self.inbox.pop(0)
        return await self.ws.receive_json_from(timeout=timeout)

    async def _take(self, match: Any, timeout: float) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if match(frame):
                return self.inbox.pop(i)
        while True:
            frame = await self.ws.receive_json_from(timeout=timeout)
            if match(frame):
                return frame
            self.inbox.append(frame)

    async def recv_type(self, kind: str, timeout: float = 3) -> dict[str, Any]:
        """The next frame of this type; frames of other types stay queued for later."""
        return await self._take(lambda f: f["type"] == kind, timeout)

    async def request(self, frame: dict[str, Any], timeout: float = 3) -> dict[str, Any]:
        """Send a frame with a fresh ref and return the reply (or error) carrying that ref."""
        self._ref += 1
        ref = f"r{self._ref}"
        await self.send({**frame, "ref": ref})
        return await self._take(lambda f: f.get("ref") == ref, timeout)

    async def join(self, room: str, *, timeout: float = 3, **extra: Any) -> dict[str, Any]:
        reply = await self.request({"type": "join", "room": room, **extra}, timeout=timeout)
        assert reply["type"] == "joined", reply
        return reply

    async def say(self, room: str, text: str, client_id: str | None = None) -> dict[str, Any]:
        frame = {"type": "send", "room": room, "text": text}
        if client_id:
            frame["client_id"] = client_id
        reply = await self.request(frame)
        assert reply["type"] == "ack", reply
        return reply

    async def messages(self, count: int, timeout: float = 3) -> list[dict[str, Any]]:
        return [(await self.recv_type("message", timeout))["message"] for _ in range(count)]

    async def nothing(self, kind: str = "message", timeout: float = 0.3) -> bool:
        """True if no frame of this type is queued or arrives within the timeout.

        Never times out inside receive_json_from: asgiref cancels the application on that.
        """
        await asyncio.sleep(timeout)
        while not self.ws.output_queue.empty():
            self.inbox.append(await self.ws.receive_json_from())
        return not any(frame["type"] == kind for frame in self.inbox)

    async def close(self) -> None:
        await self.ws.disconnect()


async def open_socket(*, headers: list[tuple[bytes, bytes]],
                      path: str = "/ws/chat/") -> tuple[bool, WebsocketCommunicator]:
    """A handshake with these headers, plus `Host: localhost` unless they name a host."""
    if not any(name == b"host" for name, _ in headers):
        headers = [*headers, (b"host", HOST)]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return connected, communicator


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """`await connect(user)` → a Client authenticated by a fresh bearer token, hello consumed;
    `connect(user, protocol=2)` asks for that protocol version (docs/protocol.md §10), and its
    `rooms` frame after hello is consumed too (Client.rooms, §11)."""
    opened: list[Client] = []

    async def _connect(user: Any, *, origin: bytes | None = ORIGIN, protocol: int | None = None) -> Client:
        token = await make_token(user)
        headers = [(b"authorization", f"Bearer {token}".encode())]
        if origin is not None:
            headers.append((b"origin", origin))
        path = "/ws/chat/" if protocol is None else f"/ws/chat/?protocol={protocol}"
        connected, communicator = await open_socket(headers=headers, path=path)
        assert connected, "handshake refused"
        hello = await communicator.receive_json_from(timeout=3)
        assert hello["type"] == "hello"
        rooms = None
        if hello["protocol"] >= 2:
            rooms = await communicator.receive_json_from(timeout=3)
            assert rooms["type"] == "rooms", rooms
        client = Client(communicator, user, hello, rooms)
        opened.append(client)
        return client

    yield _connect
    # Close what the test left open, so each consumer's disconnect() runs: per-process counters
    # (sockets per user) and presence must not leak into the next test.
    for client in opened:
        try:
            await client.ws.disconnect()
        except (Exception, asyncio.CancelledError):  # already closed, or cancelled by a receive timeout
            pass


@pytest.fixture(autouse=True)
def _close_worker_connection() -> Any:
    """After each test, close the DB connections of asgiref's shared sync thread and of
    Parley's database threads (parley.realtime.dbthread's, parley.revocation's periodic check,
    parley.roomwatch's, and parley.receivers' signal thread).

    database_sync_to_async (the tests' own ORM calls) and the consumers run ORM calls on those
    threads, and their connections otherwise outlive the run: PostgreSQL then refuses to
    drop the test database ("being accessed by other users") and leaves it behind.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from parley.realtime.dbthread import database_thread
    from parley.revocation import revocation_thread
    from parley.roomwatch import watch_thread

    try:
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
        database_thread.run(connections.close_all, timeout=10)
        revocation_thread.run(connections.close_all, timeout=10)
        watch_thread.run(connections.close_all, timeout=10)
        from parley import receivers
        if receivers._signal_thread is not None:
            receivers._signal_thread.submit(connections.close_all).result(timeout=10)
    except Exception:
        pass
