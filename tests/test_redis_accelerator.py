"""Redis is an accelerator, never a single point of delivery (real server processes).

A process hands each event to its own sockets before it publishes to Redis (parley.realtime.hub),
so with Redis down the sockets of one process keep chatting, typing and seeing each other come
and go; presence answers from the process's own sockets meanwhile (parley.presence). And a
SIGKILLed process's users leave the room within about one heartbeat, announced by the survivors
(the processes' liveness keys), instead of lingering until their entries expire.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from tests.support.fixtures import *  # noqa: F403  (servers, private_redis, make_room, make_user_token)
from tests.support.fixtures import make_room, make_user_token

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOM = "lobby"
HEARTBEAT_SECS = 2  # liveness keys live 2 s, refreshed every 0.67 s


class Socket:
    """One raw chat socket that keeps every frame it receives, and pings each heartbeat."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())
        self._pinger = asyncio.create_task(self._ping())

    @classmethod
    async def open(cls, url: str, token: str) -> Socket:
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass

    async def _ping(self) -> None:
        try:
            while True:
                await asyncio.sleep(HEARTBEAT_SECS / 2)
                await self.ws.send(json.dumps({"type": "ping"}))
        except websockets.ConnectionClosed:
            pass

    async def wait(self, pred: Any, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames:
                if pred(frame):
                    return frame
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such frame within {timeout} s; got {self.frames[-10:]}")

    async def join(self, room: str) -> dict[str, Any]:
        await self.ws.send(json.dumps({"type": "join", "ref": f"j-{room}", "room": room}))
        return await self.wait(lambda f: f.get("ref") == f"j-{room}")

    async def close(self) -> None:
        self._pinger.cancel()
        await self.ws.close()
        await self._reader


def usernames(joined: dict[str, Any]) -> list[str]:
    return [m["username"] for m in joined["members"]]


async def test_with_redis_down_one_process_s_sockets_still_chat_type_and_see_each_other(
        servers: Any, private_redis: Any) -> None:
    server = servers(redis_url=private_redis.url, redis_prefix=f"acc{private_redis.port}")
    await make_room(ROOM)
    tokens = {name: (await make_user_token(name))[1] for name in ("ann", "ben", "cat")}
    ann, ben = await Socket.open(server.ws_url, tokens["ann"]), await Socket.open(server.ws_url, tokens["ben"])
    await ann.join(ROOM)
    await ben.join(ROOM)

    await asyncio.to_thread(private_redis.kill)
    await ann.ws.send(json.dumps({"type": "send", "room": ROOM, "text": "while redis is down",
                                  "client_id": "down-1"}))
    await ann.wait(lambda f: f["type"] == "ack" and f["client_id"] == "down-1")
    # Redis stays down for the whole wait: only the local path can bring it.
    got = await ben.wait(lambda f: f["type"] == "message" and f["message"]["client_id"] == "down-1")
    assert got["message"]["text"] == "while redis is down"

    await ben.ws.send(json.dumps({"type": "typing", "room": ROOM}))
    typing = await ann.wait(lambda f: f["type"] == "typing")
    assert typing["user"]["username"] == "ben"

    cat = await Socket.open(server.ws_url, tokens["cat"])
    joined = await cat.join(ROOM)
    assert joined["type"] == "joined" and usernames(joined) == ["ann", "ben", "cat"]  # this process's
    seen = await ann.wait(lambda f: f["type"] == "presence" and f["user"]["username"] == "cat")
    assert seen["event"] == "join"
    assert "presence: Redis unavailable" in server.log_tail(200)

    await asyncio.to_thread(private_redis.start)
    await ann.ws.send(json.dumps({"type": "send", "room": ROOM, "text": "redis is back", "client_id": "up-1"}))
    for sock in (ben, cat):
        await sock.wait(lambda f: f["type"] == "message" and f["message"]["client_id"] == "up-1")
    # Each message once, in seq order, for everyone who was there.
    msgs = [f["message"]["client_id"] for f in ben.frames if f["type"] == "message"]
    assert msgs == ["down-1", "up-1"]
    for sock in (ann, ben, cat):
        await sock.close()


async def test_a_sigkilled_process_s_users_leave_the_room_within_about_a_heartbeat(
        servers: Any, private_redis: Any) -> None:
    env = {"PARLEY_HEARTBEAT_INTERVAL_SECS": str(HEARTBEAT_SECS)}
    prefix = f"live{private_redis.port}"
    s1 = servers(redis_url=private_redis.url, redis_prefix=prefix, extra_env=env)
    s2 = servers(redis_url=private_redis.url, redis_prefix=prefix, extra_env=env)
    await make_room(ROOM)
    tokens = {name: (await make_user_token(name))[1] for name in ("ann", "ben", "cat")}
    ann = await Socket.open(s1.ws_url, tokens["ann"])
    await ann.join(ROOM)
    ben = await Socket.open(s2.ws_url, tokens["ben"])
    assert usernames(await ben.join(ROOM)) == ["ann", "ben"]

    await asyncio.to_thread(s1.kill)
    killed_at = time.monotonic()
    # Before liveness keys no `leave` came at all: ann's entry just expired after 3 heartbeats.
    left = await ben.wait(lambda f: f["type"] == "presence" and f["event"] == "leave", timeout=20)
    took = time.monotonic() - killed_at
    print(f"leave announced {took:.2f} s after the SIGKILL (heartbeat {HEARTBEAT_SECS} s)")
    assert left["user"]["username"] == "ann" and left["members"] == 1

    cat = await Socket.open(s2.ws_url, tokens["cat"])
    assert usernames(await cat.join(ROOM)) == ["ben", "cat"]
    for sock in (ben, cat):
        await sock.close()
