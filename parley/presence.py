"""Who is online in each room: ephemeral state, kept apart from the database on purpose.

Two stores with one interface. Without Redis there is one server process (or several that
each know their own sockets), so a dict in it is the truth. With Redis (REDIS_URL) every process
shares one hash per room. Each entry carries an expiry that the socket's frames — any frame,
pings included — push forward, and the process it lives on: a process that dies (SIGKILL) takes
its entries with it within about one heartbeat interval (RedisPresence's liveness keys), and an
entry that Redis lost comes back with the socket's next frame. While Redis is away each process
answers from its own sockets.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import orjson
from redis.exceptions import RedisError

from parley.conf import parley_settings
from parley.realtime.loops import per_loop
from parley.realtime.tasks import Periodic

log = logging.getLogger(__name__)
T = TypeVar("T")

# Presence's own Redis client gives up fast: a join or a leave waits at most about this long
# for Redis before answering from this process's sockets.
PRESENCE_REDIS_RETRIES = 2
PRESENCE_REDIS_TIMEOUT_SECS = 0.5
# After a failure Redis is asked again no sooner than this: meanwhile presence is per process.
PRESENCE_REDIS_RETRY_SECS = 2.0


def presence_ttl_secs() -> int:
    return 3 * parley_settings.HEARTBEAT_INTERVAL_SECS


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    username: str


class PresenceStore(Protocol):
    async def add(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
        """Record a socket in a room; True if it is this user's first live socket there."""

    async def remove(self, room_id: int, channel: str, user_id: int) -> bool:
        """Forget a socket; True if the user has no live socket left in the room."""

    async def touch(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
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

    async def add(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
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

    async def touch(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
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
    """One Redis hash per room: field = socket's channel name, value = [user id, name, expiry,
    origin]. `origin` names the server process; each process keeps a liveness key
    (`<prefix>:alive:<origin>`, expiring after one heartbeat interval, refreshed three times per
    interval), and an entry whose process key is gone counts as gone: a SIGKILLed process's
    users leave the room within about one heartbeat, announced to the room by the survivors
    (`sweep`), not after the entries' own expiry.

    Redis is an accelerator here too: every entry is also kept in a per-process MemoryPresence,
    which answers — this process's sockets only — while Redis does not (one warning when that
    starts, one line when Redis answers again; removals made meanwhile are replayed then).
    """

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.retry import Retry

        # Presence is best effort: a join must not wait the publisher's ~5 s of retries for it.
        self._redis = aioredis.Redis.from_url(
            url, max_connections=parley_settings.REDIS_MAX_CONNECTIONS,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.05), PRESENCE_REDIS_RETRIES),
            socket_timeout=PRESENCE_REDIS_TIMEOUT_SECS, socket_connect_timeout=PRESENCE_REDIS_TIMEOUT_SECS,
            socket_keepalive=True)
        self._prefix = prefix
        self.origin = uuid.uuid4().hex[:16]
        self.local = MemoryPresence()  # this process's own sockets
        self.slugs: dict[int, str] = {}  # room id → slug, for the leave frames sweep() sends
        self.degraded = False
        self._down_until = 0.0  # monotonic; while it is ahead, Redis is not asked
        self._unsynced_removals: set[tuple[int, str]] = set()
        self._liveness = _Liveness(self)

    def _key(self, room_id: int) -> str:
        return f"{self._prefix}:presence:{room_id}"

    def _alive_key(self, origin: str) -> str:
        return f"{self._prefix}:alive:{origin}"

    # --- the store's interface: Redis, or this process's sockets while Redis is away ---------

    async def add(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
        if slug:
            self.slugs[room_id] = slug
        self._unsynced_removals.discard((room_id, channel))
        first_here = await self.local.add(room_id, channel, member)
        self._liveness.ensure_running()
        return await self._redis_or(lambda: self._add(room_id, channel, member), first_here)

    async def remove(self, room_id: int, channel: str, user_id: int) -> bool:
        last_here = await self.local.remove(room_id, channel, user_id)
        if room_id not in self.local._rooms:
            self.slugs.pop(room_id, None)
        result = await self._redis_or(lambda: self._remove(room_id, channel, user_id), None)
        if result is None:
            self._unsynced_removals.add((room_id, channel))
            return last_here
        return result

    async def touch(self, room_id: int, channel: str, member: Member, *, slug: str = "") -> bool:
        if slug:
            self.slugs[room_id] = slug
        revived_here = await self.local.touch(room_id, channel, member)
        self._liveness.ensure_running()
        return await self._redis_or(lambda: self._touch(room_id, channel, member), revived_here)

    async def members(self, room_id: int) -> list[Member]:
        here = await self.local.members(room_id)
        return await self._redis_or(lambda: self._members(room_id), here)

    async def _redis_or(self, op: Callable[[], Awaitable[T]], fallback: T) -> T:
        if time.monotonic() < self._down_until:
            return fallback
        try:
            if self._unsynced_removals:
                await self._replay_removals()
            result = await op()
        except (RedisError, OSError):
            self._down_until = time.monotonic() + PRESENCE_REDIS_RETRY_SECS
            if not self.degraded:
                self.degraded = True
                log.warning("presence: Redis unavailable; rooms show this process's users only "
                            "until it answers (asked again every %.0f s)", PRESENCE_REDIS_RETRY_SECS)
            return fallback
        if self.degraded:
            self.degraded = False
            log.warning("presence: Redis answers again; presence is shared by every process again")
        return result

    async def _replay_removals(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for room_id, channel in self._unsynced_removals:
                pipe.hdel(self._key(room_id), channel)
            await pipe.execute()
        self._unsynced_removals.clear()

    # --- Redis ------------------------------------------------------------------------------

    async def _read(self, room_id: int) -> tuple[list[_Entry], set[str]]:
        """Every entry of the room, expired or not, and the origins among them whose process's
        liveness key is gone."""
        entries = []
        for field, value in (await self._redis.hgetall(self._key(room_id))).items():
            uid, name, expires, *rest = orjson.loads(value)
            entries.append(_Entry(field.decode() if isinstance(field, bytes) else field,
                                  Member(uid, name), str(rest[0]) if rest else "", expires))
        origins = sorted({e.origin for e in entries if e.origin and e.origin != self.origin})
        if not origins:
            return entries, set()
        alive = await self._redis.mget([self._alive_key(o) for o in origins])
        return entries, {o for o, flag in zip(origins, alive, strict=True) if flag is None}

    async def _entries(self, room_id: int) -> list[_Entry]:
        """The room's entries whose expiry is ahead and whose process is alive."""
        entries, dead = await self._read(room_id)
        return _live(entries, dead, time.time())

    async def _add(self, room_id: int, channel: str, member: Member) -> bool:
        entries = await self._entries(room_id)
        first = not any(e.member.id == member.id and e.channel != channel for e in entries)
        await self._write(room_id, channel, member)
        return first

    async def _remove(self, room_id: int, channel: str, user_id: int) -> bool:
        await self._redis.hdel(self._key(room_id), channel)
        return not any(e.member.id == user_id for e in await self._entries(room_id))

    async def _touch(self, room_id: int, channel: str, member: Member) -> bool:
        old = await self._write(room_id, channel, member)
        if old is not None and orjson.loads(old)[2] > time.time():
            return False  # the usual case: one round trip
        entries = await self._entries(room_id)
        return not any(e.member.id == member.id and e.channel != channel for e in entries)

    async def _members(self, room_id: int) -> list[Member]:
        entries, dead = await self._read(room_id)
        now = time.time()
        return _distinct([(e.member, e.expires) for e in entries if e.origin not in dead], now)

    async def _write(self, room_id: int, channel: str, member: Member) -> bytes | None:
        """Write the socket's entry with a fresh expiry, and this process's liveness key; what
        the entry held before (None: absent). HSET re-creates an entry, and the hash, that a Redis
        restart or flush lost."""
        key, ttl = self._key(room_id), presence_ttl_secs()
        value = orjson.dumps([member.id, member.username, time.time() + ttl, self.origin])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, channel)
            pipe.hset(key, channel, value)
            pipe.expire(key, ttl * 2)
            pipe.set(self._alive_key(self.origin), b"1", px=liveness_ttl_ms())
            old, *_ = await pipe.execute()
        return cast("bytes | None", old)

    async def sweep(self) -> list[tuple[int, Member, int]]:
        """Refresh this process's liveness key, and remove from each room this process has
        sockets in the entries of processes whose key expired. Returns (room id, member, members
        left) for each user who had no live socket left: the room is told they left. Of several
        survivors sweeping one room, only the one whose HDEL removed an entry reports it."""
        await self._redis.set(self._alive_key(self.origin), b"1", px=liveness_ttl_ms())
        gone: list[tuple[int, Member, int]] = []
        for room_id in list(self.local._rooms):
            entries, dead = await self._read(room_id)
            stale = [e for e in entries if e.origin in dead]
            if not stale:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in stale:
                    pipe.hdel(self._key(room_id), entry.channel)
                removed = await pipe.execute()
            live = _live(entries, dead, time.time())
            count = len({e.member.id for e in live})
            reported: set[int] = set()
            for entry, n in zip(stale, removed, strict=True):
                uid = entry.member.id
                if n and uid not in reported and not any(e.member.id == uid for e in live):
                    reported.add(uid)
                    gone.append((room_id, entry.member, count))
        return gone


@dataclass(frozen=True, slots=True)
class _Entry:
    channel: str
    member: Member
    origin: str  # "" for an entry written without one
    expires: float  # time.time()


def _live(entries: list[_Entry], dead: set[str], now: float) -> list[_Entry]:
    return [e for e in entries if e.expires > now and e.origin not in dead]


def liveness_ttl_ms() -> int:
    """A process's liveness key outlives its last refresh by one heartbeat interval."""
    return int(parley_settings.HEARTBEAT_INTERVAL_SECS * 1000)


class _Liveness(Periodic):
    """While this process has sockets in some room: refresh its liveness key and sweep the
    rooms for users of dead processes, three times per heartbeat interval."""

    what = "presence liveness round"

    def __init__(self, store: RedisPresence) -> None:
        super().__init__()
        self.store = store

    def interval_secs(self) -> float:
        return float(parley_settings.HEARTBEAT_INTERVAL_SECS) / 3

    def active(self) -> bool:
        return bool(self.store.local._rooms)

    async def round(self) -> None:
        if time.monotonic() < self.store._down_until:
            return
        nobody: list[tuple[int, Member, int]] = []
        gone = await self.store._redis_or(self.store.sweep, nobody)
        for room_id, member, count in gone:
            slug = self.store.slugs.get(room_id)
            if slug is not None:
                await _announce_leave(room_id, slug, member, count)


async def _announce_leave(room_id: int, slug: str, member: Member, count: int) -> None:
    from parley import fanout  # fanout imports the models; presence is imported before apps load

    log.info("presence: %s left %s with their server process", member.username, slug)
    await fanout.broadcast_presence(room_id=room_id, room_slug=slug, event="leave",
                                    user=_MemberUser(member), members=count, origin="")


@dataclass(frozen=True, slots=True)
class _MemberUser:
    """A Member in the shape parley.payloads.user_payload reads."""

    member: Member

    @property
    def pk(self) -> int:
        return self.member.id

    def get_username(self) -> str:
        return self.member.username


@per_loop
def get_presence() -> PresenceStore:
    """The running loop's presence store: Redis-backed when REDIS_URL is set."""
    if parley_settings.REDIS_URL:
        return RedisPresence(parley_settings.REDIS_URL, parley_settings.REDIS_PREFIX)
    return MemoryPresence()


def user_online_blocking(*, user_id: int, room_id: int) -> bool:
    """From synchronous code in any thread (a signal receiver): whether the user has a socket in
    this process, or — with REDIS_URL — a live presence entry in the room on any process.
    Without Redis, another process's sockets are unknown here (answered: not online)."""
    from parley.realtime.hub import local_user_hubs

    if any(("user", user_id) in hub.credentials for hub in local_user_hubs()):
        return True
    if not parley_settings.REDIS_URL:
        return False
    import redis

    client = redis.Redis.from_url(parley_settings.REDIS_URL, socket_timeout=PRESENCE_REDIS_TIMEOUT_SECS,
                                  socket_connect_timeout=PRESENCE_REDIS_TIMEOUT_SECS)
    try:
        values = client.hvals(f"{parley_settings.REDIS_PREFIX}:presence:{room_id}")
    except (RedisError, OSError):
        return False
    finally:
        client.close()
    now = time.time()
    return any(uid == user_id and expires > now for uid, _name, expires, *_ in map(orjson.loads, values))
