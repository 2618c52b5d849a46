"""How long a user stays listed as online after they are gone, measured against real servers.

Three ways to go (docs/protocol.md §3 "How long a user who left stays listed"):
- their socket closes with a close frame (a tab closed, a page left: tests/browser/
  test_presence_bounds.py measures a real Chromium tab): at once;
- their server process is SIGKILLed (with Redis; the survivors' sockets watching): within
  4/3 × heartbeat (the dead process's liveness key outlives its last refresh by one heartbeat,
  and the survivors sweep every third of one);
- the network drops silently (no close frame, no FIN: a proxy that stops forwarding): within one
  heartbeat, because config/serve.py has uvicorn ping every socket each half heartbeat and drop
  it when no pong comes within another half. (Before, uvicorn's own 20 s + 20 s: up to 40 s, past
  the 25 s heartbeat; without uvicorn's ping, the server's watchdog: 2 × heartbeat + 5 s.)

Each test prints the figure it measured. PARLEY_TEST_PRESENCE_HEARTBEAT_SECS (default 4) sets
the servers' heartbeat: 25 measures the production default (slower).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import pytest
import websockets

from tests.support.fixtures import *  # noqa: F403  (servers, private_redis, make_room, make_user_token)
from tests.support.fixtures import make_room, make_user_token

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOM = "lobby"
HEARTBEAT_SECS = int(os.environ.get("PARLEY_TEST_PRESENCE_HEARTBEAT_SECS", "4"))
ENV = {"PARLEY_HEARTBEAT_INTERVAL_SECS": str(HEARTBEAT_SECS)}
SLACK_SECS = 2.0  # scheduling on a shared 2-core machine


class Watcher:
    """A chat socket that keeps every frame and pings each half heartbeat (so it never goes
    silent itself)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping())]

    @classmethod
    async def open(cls, url: str, token: str) -> Watcher:
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                      ping_interval=None, proxy=None)
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))

    async def _ping(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.sleep(HEARTBEAT_SECS / 2)
                await self.ws.send(json.dumps({"type": "ping"}))

    async def wait(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames:
                if pred(frame):
                    return frame
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such frame within {timeout} s; got {self.frames[-10:]}")

    async def join(self, room: str) -> dict[str, Any]:
        await self.ws.send(json.dumps({"type": "join", "ref": f"j-{room}", "room": room}))
        return await self.wait(lambda f: f.get("ref") == f"j-{room}", timeout=10)

    async def wait_leave(self, username: str, timeout: float) -> float:
        """Seconds until the room says `username` left (from the call)."""
        start = time.monotonic()
        await self.wait(lambda f: f.get("type") == "presence" and f.get("event") == "leave"
                        and f["user"]["username"] == username, timeout)
        return time.monotonic() - start

    async def close(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()
        await self.ws.close()
        await self._tasks[0]


class SilentProxy:
    """A TCP proxy on loopback that can go silent: stop forwarding in both directions and keep
    both connections open — no close frame, no FIN, no RST. What a pulled cable or a phone leaving
    Wi-Fi looks like to the server."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.pumps: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> SilentProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [writer, up_writer]
        self.pumps += [asyncio.create_task(self._pump(reader, up_writer)),
                       asyncio.create_task(self._pump(up_reader, writer))]

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    def go_silent(self) -> None:
        for pump in self.pumps:
            pump.cancel()

    async def close(self) -> None:
        self.go_silent()
        for w in self.writers:
            w.transport.abort()
        if self.server is not None:
            self.server.close()


async def test_a_silent_network_drop_lists_the_user_for_at_most_one_heartbeat(servers: Any) -> None:
    server = servers(extra_env=ENV)
    await make_room(ROOM)
    (_, watcher_token), (victim, victim_token) = await make_user_token(), await make_user_token()
    watcher = await Watcher.open(server.ws_url, watcher_token)
    await watcher.join(ROOM)
    proxy = await SilentProxy(server.port).start()
    ws_url = server.ws_url.replace(f":{server.port}/", f":{proxy.port}/")
    # The victim's client does not ping either: it has gone, it will not notice anything.
    gone = await websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {victim_token}"},
                                    ping_interval=None, proxy=None)
    await gone.send(json.dumps({"type": "join", "ref": "j", "room": ROOM}))
    await watcher.wait(lambda f: f.get("type") == "presence" and f.get("event") == "join", timeout=10)
    try:
        proxy.go_silent()
        took = await watcher.wait_leave(victim, timeout=2 * HEARTBEAT_SECS + 5 + 10)
        print(f"silent drop: listed {took:.1f} s after the network went silent (heartbeat {HEARTBEAT_SECS} s)")
        assert took <= HEARTBEAT_SECS + SLACK_SECS, f"{took:.1f} s: longer than one heartbeat ({HEARTBEAT_SECS} s)"
    finally:
        await proxy.close()
        gone.transport.abort()
        await watcher.close()


async def test_a_sigkilled_process_lists_its_users_for_at_most_four_thirds_of_a_heartbeat(
        servers: Any, private_redis: Any) -> None:
    prefix = f"bounds{private_redis.port}"
    s1 = servers(redis_url=private_redis.url, redis_prefix=prefix, extra_env=ENV)
    s2 = servers(redis_url=private_redis.url, redis_prefix=prefix, extra_env=ENV)
    await make_room(ROOM)
    (victim, victim_token), (_, watcher_token) = await make_user_token(), await make_user_token()
    gone = await Watcher.open(s1.ws_url, victim_token)
    await gone.join(ROOM)
    watcher = await Watcher.open(s2.ws_url, watcher_token)
    joined = await watcher.join(ROOM)
    assert victim in [m["username"] for m in joined["members"]]
    # The victim's own process keeps its liveness key fresh for a while: wait a refresh or two
    # so the kill lands at a random point of the refresh cycle, as it would in production.
    await asyncio.sleep(HEARTBEAT_SECS / 2)
    await asyncio.to_thread(s1.kill)
    took = await watcher.wait_leave(victim, timeout=3 * HEARTBEAT_SECS + 10)
    print(f"SIGKILL (Redis): listed {took:.1f} s after the kill (heartbeat {HEARTBEAT_SECS} s)")
    assert took <= HEARTBEAT_SECS * 4 / 3 + SLACK_SECS
    await watcher.close()
    gone._tasks[1].cancel()


async def test_a_closed_socket_leaves_at_once(servers: Any) -> None:
    """The close frame a browser sends when a tab closes, from a plain client (the browser
    itself: tests/browser/test_presence_bounds.py)."""
    server = servers(extra_env=ENV)
    await make_room(ROOM)
    (victim, victim_token), (_, watcher_token) = await make_user_token(), await make_user_token()
    watcher = await Watcher.open(server.ws_url, watcher_token)
    await watcher.join(ROOM)
    gone = await Watcher.open(server.ws_url, victim_token)
    await gone.join(ROOM)
    await watcher.wait(lambda f: f.get("type") == "presence" and f.get("event") == "join", timeout=10)
    await gone.close()
    took = await watcher.wait_leave(victim, timeout=10)
    print(f"close frame: listed {took:.2f} s after the close")
    assert took <= SLACK_SECS
    await watcher.close()
