"""Who is online in each room: ephemeral state, kept apart from the database on purpose.

Two stores with one interface. Without Redis there is one server process, so a dict in it is the
truth. With Redis (REDIS_URL) every process shares one hash per room. Each entry carries an expiry
that the socket's frames — any frame, pings included — push forward, so a process that dies
(SIGKILL) cannot leave ghosts for longer than presence_ttl_secs(), and an entry that Redis lost
comes back with the socket's next frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import orjson

from parley.conf import parley_settings
from parley.realtime.loops import per_loop


def presence_ttl_secs() -> int:
    return 3 * parley_settings.HEARTBEAT_INTERVAL_SECS


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    username: str


class PresenceStore(Protocol):
    async def add(self, room_id: int, channel: str, member: Member) -> bool:
        """Record a socket in a room; True if it is this user's first live socket there."""

    async def remove(self, room_id: int, channel: str, user_id: int) -> bool:
        """Forget a socket; True if the user has no live socket left in the room."""

    async def touch(self, room_id: int, channel: str, member: Member) -> bool:
        """Push the socket's expiry forward (every frame of the socket does, at most once per
        half heartbeat), re-creating the entry if it is gone (Redis restarted or was flushed);
        True if that brought the user back: no live entry of theirs was left in the room."""

    async def members(self, room_id: int) -> list[Member]:
        """Online users, each once, ordered by username."""


def _distinct(entries: list[tuple[Member, float]], now: float) -> list[Member]:
    seen: dict[int, Member] = {}
    for member, expires in entries:
        if expires > now:
            seen[member.id] = member
    return sorted(seen.values(), key=lambda m: m.username.lower())


class MemoryPresence:
    def __init__(self) -> None:
        self._rooms: dict[int, dict[str, tuple[Member, float]]] = {}

    async def add(self, room_id: int, channel: str, member: Member) -> bool:
        now = time.monotonic()
        sockets = self._rooms.setdefault(room_id, {})
        first = not any(m.id == member.id and exp > now for m, exp in sockets.values())
        sockets[channel] = (member, now + presence_ttl_secs())
        return first

    async def remove(self, room_id: int, channel: str, user_id: int) -> bool:
        sockets = self._rooms.get(room_id, {})
        sockets.pop(channel, None)
        now = time.monotonic()
        last = not any(m.id == user_id and exp > now for m, exp in sockets.values())
        if not sockets:
            self._rooms.pop(room_id, None)
        return last

    async def touch(self, room_id: int, channel: str, member: Member) -> bool:
        now = time.monotonic()
        sockets = self._rooms.setdefault(room_id, {})
        mine = sockets.get(channel)
        revived = (mine is None or mine[1] <= now) and not any(
            m.id == member.id and exp > now for m, exp in sockets.values())
        sockets[channel] = (member, now + presence_ttl_secs())
        return revived

    async def members(self, room_id: int) -> list[Member]:
        return _distinct(list(self._rooms.get(room_id, {}).values()), time.monotonic())


class RedisPresence:
    """One Redis hash per room: field = socket's channel name, value = [user id, name, expiry]."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        from parley.realtime.redis_options import redis_client_options

        self._redis = aioredis.Redis.from_url(url, max_connections=parley_settings.REDIS_MAX_CONNECTIONS,
                                              **redis_client_options())
        self._prefix = prefix

    def _key(self, room_id: int) -> str:
        return f"{self._prefix}:presence:{room_id}"

    async def _entries(self, room_id: int) -> list[tuple[str, Member, float]]:
        raw = await self._redis.hgetall(self._key(room_id))
        out = []
        for channel, value in raw.items():
            uid, name, expires = orjson.loads(value)
            out.append((channel.decode() if isinstance(channel, bytes) else channel, Member(uid, name), expires))
        return out

    async def add(self, room_id: int, channel: str, member: Member) -> bool:
        now = time.time()
        entries = await self._entries(room_id)
        first = not any(m.id == member.id and exp > now and ch != channel for ch, m, exp in entries)
        await self._write(room_id, channel, member)
        return first

    async def remove(self, room_id: int, channel: str, user_id: int) -> bool:
        await self._redis.hdel(self._key(room_id), channel)
        now = time.time()
        entries = await self._entries(room_id)
        expired = [ch for ch, _, exp in entries if exp <= now]
        if expired:
            await self._redis.hdel(self._key(room_id), *expired)
        return not any(m.id == user_id and exp > now for _, m, exp in entries)

    async def touch(self, room_id: int, channel: str, member: Member) -> bool:
        now = time.time()
        old = await self._write(room_id, channel, member)
        if old is not None and orjson.loads(old)[2] > now:
            return False  # the usual case: one round trip
        entries = await self._entries(room_id)
        return not any(m.id == member.id and exp > now and ch != channel for ch, m, exp in entries)

    async def _write(self, room_id: int, channel: str, member: Member) -> bytes | None:
        """Write the socket's entry with a fresh expiry; what it held before (None: absent).
        HSET re-creates an entry, and the hash, that a Redis restart or flush lost."""
        key, ttl = self._key(room_id), presence_ttl_secs()
        value = orjson.dumps([member.id, member.username, time.time() + ttl])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, channel)
            pipe.hset(key, channel, value)
            pipe.expire(key, ttl * 2)
            old, _, _ = await pipe.execute()
        return old

    async def members(self, room_id: int) -> list[Member]:
        return _distinct([(m, exp) for _, m, exp in await self._entries(room_id)], time.time())


@per_loop
def get_presence() -> PresenceStore:
    """The running loop's presence store: Redis-backed when REDIS_URL is set."""
    if parley_settings.REDIS_URL:
        return RedisPresence(parley_settings.REDIS_URL, parley_settings.REDIS_PREFIX)
    return MemoryPresence()
