"""The per-process fan-out hub: from one committed message to every local socket, fast.

Why not `group_send`: the stock Channels path copies the event into every member channel's
queue, then every consumer wakes, dispatches and handles it — a deep copy and several task
switches per recipient (docs/benchmarks.md has the profile). The hub keeps, per process and
event loop, the local sockets of each room and hands each the same already-encoded frame in
one synchronous loop; each socket's bounded outbound queue (parley.realtime.outbound) does the writing.

Across processes (REDIS_URL set), a process hands each event to its own sockets first, then
PUBLISHes it once on a Redis channel per room, marked with the hub's origin id so that its own
subscription skips the copy. Each process holds one subscription per room that has local
sockets: Redis sends one copy per process, not per socket. Redis is an accelerator, not the
way home: while it is down a process's own sockets still get their events in real time, and
the publishes wait in a bounded queue (`PARLEY_REDIS_OUTBOX_MAX_EVENTS`) or are dropped. Redis pub/sub is
at-most-once anyway, so after the subscription connection drops and comes back, every local
socket reads what it missed from the database (`resync`).

Code off the event loop — a view's thread, a management command, a worker — hands events in
through parley.fanout.deliver_from_sync: a blocking PUBLISH (`publish_from_sync`) with Redis;
without it, `loop.call_soon_threadsafe` to each hub of the process (`local_hubs`). A process
without Redis hears other processes' messages only from the database: the product registers a
room-log watch (`set_room_log_watch`, parley.roomwatch) that each LocalHub starts for its rooms.

The stock Channels path (group_send) is kept for comparison as a benchmark baseline
(bench/baselines/parley_layer.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson

from parley.conf import parley_settings
from parley.realtime.loops import per_loop
from parley.realtime.tasks import spawn

log = logging.getLogger(__name__)

RESUBSCRIBE_BACKOFF_CAP_SECS = 5.0
# Publishes waiting for Redis, per hub: at most PARLEY_REDIS_OUTBOX_MAX_EVENTS (10,000). Its own
# sockets have had every event already; what the queue holds is only the other processes'
# copies, which they also read from the database once their subscription is back. Past the
# bound the oldest are dropped, so an outage cannot grow the process's memory without end.
# Published in one pipeline round trip when several are queued (a busy process, many rooms).
OUTBOX_BATCH_EVENTS = 256
# At most one "publish failed" warning per this many seconds: an outage fails every batch.
PUBLISH_WARNING_INTERVAL_SECS = 10.0

# ("token", ApiToken id) or ("user", user id): what a socket's right to stay open rests on.
Credential = tuple[str, int]


class Receiver(Protocol):
    def hub_event(self, event: dict[str, Any]) -> None:
        """Handle one room event synchronously (no awaits: the hub loops over many receivers)."""

    def hub_resync(self, room_id: int) -> None:
        """Events of this room may have been lost: catch up from the database."""

    def hub_credentials_revoked(self) -> None:
        """The API token this socket was opened with was revoked, or its user deactivated."""

    def hub_user_event(self, event: dict[str, Any]) -> None:
        """Handle one event addressed to this socket's user, not to a room (publish_user)."""


class RoomLogWatch(Protocol):
    def room_added(self, room_id: int) -> None:
        """The room got its first local socket: watch its log for messages stored elsewhere."""


# Made for each hub without Redis by the product (parley.roomwatch registers it): without Redis
# a message stored by another process reaches this one's sockets only through the room log.
_room_log_watch_factory: Callable[[LocalHub], RoomLogWatch] | None = None

# Every hub of this process, so code on other threads can hand a hub an event (local_hubs).
_hubs: weakref.WeakSet[LocalHub] = weakref.WeakSet()


class DeliveryStats:
    """What this process's hubs delivered, as plain integers (parley.metrics reads them when
    scraped): counted once per broadcast, never per socket, so the fan-out loop stays as it is."""

    __slots__ = ("broadcasts", "deliveries", "dropped_publishes")

    def __init__(self) -> None:
        self.broadcasts = 0  # room events delivered
        self.deliveries = 0  # sockets they were handed to, summed
        self.dropped_publishes = 0  # events whose other processes' copy never reached Redis


stats = DeliveryStats()


def set_room_log_watch(factory: Callable[[LocalHub], RoomLogWatch] | None) -> None:
    global _room_log_watch_factory
    _room_log_watch_factory = factory


class CredentialCheck(Protocol):
    def ensure_running(self) -> None:
        """A socket was recorded under a credential: make sure the periodic check runs."""


# Made once per hub by the product (parley.revocation registers it): the periodic check that
# asks the database which of the hub's credentials were revoked without anyone announcing it.
_credential_check_factory: Callable[[LocalHub], CredentialCheck] | None = None


def set_credential_check(factory: Callable[[LocalHub], CredentialCheck] | None) -> None:
    global _credential_check_factory
    _credential_check_factory = factory


def local_hubs() -> list[LocalHub]:
    """This process's hubs whose event loop is running and that have sockets in some room."""
    return [hub for hub in list(_hubs)
            if hub.rooms and hub.loop is not None and hub.loop.is_running() and not hub.loop.is_closed()]


def local_user_hubs() -> list[LocalHub]:
    """local_hubs for user events: the hubs with sockets, joined to a room or not."""
    return [hub for hub in list(_hubs)
            if hub.credentials and hub.loop is not None and hub.loop.is_running() and not hub.loop.is_closed()]


class LocalHub:
    """One process's rooms → local receivers. Used alone without Redis.

    It also knows which local sockets were opened with which credentials — an API token
    (`("token", id)`) and a user (`("user", id)`) — so that revoking a token or deactivating a
    user closes them (`revoke`), without a channel-layer group per token: that would give every
    socket a channel of its own — a queue, a receive task and, on Redis, a blocking pop — for
    an event that almost never happens. The same map is what parley.revocation's periodic check asks the database about, so that a
    revocation made in another process (without Redis) or without a signal closes them too.
    """

    # Whether this hub learns of messages stored by other processes from the room log (no
    # Redis); RedisHub hears them on its subscription.
    watches_room_log = True

    def __init__(self) -> None:
        self.rooms: dict[int, set[Receiver]] = {}
        self.credentials: dict[Credential, set[Receiver]] = {}
        # The highest seq delivered per room: the room-log watch skips what live delivery brought.
        self.seen: dict[int, int] = {}
        self._revocation_check: CredentialCheck | None = None
        self._room_log_watch: RoomLogWatch | None = None
        # Marks this hub's own publishes, so its subscription skips them (it delivered them
        # already); random, so two processes — or two hubs in one test process — never share one.
        self.origin = uuid.uuid4().hex[:16].encode()
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        _hubs.add(self)

    async def subscribe(self, room_id: int, receiver: Receiver) -> None:
        members = self.rooms.get(room_id)
        if members is None:
            members = self.rooms[room_id] = set()
            if self.watches_room_log and _room_log_watch_factory is not None:
                if self._room_log_watch is None:
                    self._room_log_watch = _room_log_watch_factory(self)
                self._room_log_watch.room_added(room_id)
        members.add(receiver)

    async def unsubscribe(self, room_id: int, receiver: Receiver) -> None:
        members = self.rooms.get(room_id)
        if members is not None:
            members.discard(receiver)
            if not members:
                del self.rooms[room_id]
                self.seen.pop(room_id, None)
                await self._room_emptied(room_id)

    async def _room_emptied(self, room_id: int) -> None:
        pass

    async def watch(self, credential: Credential, receiver: Receiver) -> None:
        self.watch_local(credential, receiver)

    def watch_local(self, credential: Credential, receiver: Receiver) -> None:
        """Record the socket under its credential, for close_local and the periodic check
        (which this starts if it is not running)."""
        self.credentials.setdefault(credential, set()).add(receiver)
        if self._revocation_check is None and _credential_check_factory is not None:
            self._revocation_check = _credential_check_factory(self)
        if self._revocation_check is not None:
            self._revocation_check.ensure_running()

    def unwatch(self, credential: Credential, receiver: Receiver) -> None:
        sockets = self.credentials.get(credential)
        if sockets is not None:
            sockets.discard(receiver)
            if not sockets:
                del self.credentials[credential]

    async def revoke(self, credential: Credential) -> None:
        """Close the sockets opened with this token (or by this user): at once in this process
        (RedisHub: in every process). Other processes without Redis notice within
        PARLEY_REVOCATION_CHECK_SECS (parley.revocation)."""
        self.close_local(credential)

    def close_local(self, credential: Credential) -> None:
        for receiver in tuple(self.credentials.pop(credential, ())):
            try:
                receiver.hub_credentials_revoked()
            except Exception:
                log.exception("closing a socket of revoked credentials failed")

    async def publish(self, room_id: int, event: dict[str, Any]) -> None:
        self.deliver(room_id, event)

    async def publish_user(self, user_id: int, event: dict[str, Any]) -> None:
        """Hand an event to every socket of one user (RedisHub: in every process)."""
        self.deliver_user(user_id, event)

    def deliver_user(self, user_id: int, event: dict[str, Any]) -> None:
        """An event for one user's sockets, not a room's: the sockets this hub watches under
        ("user", id) — every socket of a signed-in user is watched under it (for revocation),
        so a user's events need no subscription of their own."""
        for receiver in tuple(self.credentials.get(("user", user_id), ())):
            try:
                receiver.hub_user_event(event)
            except Exception:
                log.exception("delivering a user event to one socket failed")

    def deliver(self, room_id: int, event: dict[str, Any]) -> None:
        seq = event.get("seq")
        if seq is not None and seq > self.seen.get(room_id, 0) and room_id in self.rooms:
            self.seen[room_id] = seq
        receivers = tuple(self.rooms.get(room_id, ()))
        stats.broadcasts += 1
        stats.deliveries += len(receivers)
        for receiver in receivers:
            try:
                receiver.hub_event(event)
            except Exception:  # one broken socket must not cost the others their delivery
                log.exception("delivering a room event to one socket failed")


class RedisHub(LocalHub):
    """LocalHub + Redis pub/sub between processes: one subscription per process per room."""

    watches_room_log = False

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__()
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._prefix = f"{prefix}:room:"
        # One channel for every process's revocations: rare, so no per-token or per-user channel.
        self._control = f"{prefix}:control"
        # One channel for every user's events (rooms added or removed, read markers): each
        # process delivers to the users it has sockets of and drops the rest. One SUBSCRIBE
        # per process instead of one per connected user.
        self._user = user_channel(prefix)
        from parley.realtime.redis_options import redis_client_options

        # The publisher retries through a Redis restart, so a committed message still goes out.
        self._publisher = aioredis.Redis.from_url(url, **redis_client_options())
        # No silent internal retries on the subscriber: a reconnect must be seen, to resync.
        self._subscriber = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._drainer: asyncio.Future[Any] | None = None
        self._warned_at = float("-inf")
        self.dropped_publishes = 0  # events whose other-process copy never reached Redis
        self.subscribed = False  # whether the subscription connection is up (for /readyz, metrics)

    def _channel(self, room_id: int) -> str:
        return room_channel(self._prefix, room_id)

    async def subscribe(self, room_id: int, receiver: Receiver) -> None:
        first = room_id not in self.rooms
        await super().subscribe(room_id, receiver)
        if first:
            await self._subscribe_channel(self._channel(room_id))

    async def watch(self, credential: Credential, receiver: Receiver) -> None:
        await super().watch(credential, receiver)
        if self._pubsub is None or self._control.encode() not in self._pubsub.channels:
            await self._subscribe_channel(self._control)
        if self._user.encode() not in self._pubsub.channels:
            await self._subscribe_channel(self._user)

    async def publish_user(self, user_id: int, event: dict[str, Any]) -> None:
        self.deliver_user(user_id, event)
        self._enqueue(self._user, marked((self.origin,), {"user_id": user_id, "event": event}))

    async def revoke(self, credential: Credential) -> None:
        self.close_local(credential)
        self._enqueue(self._control, marked((self.origin,), {"revoke": list(credential)}))

    async def _subscribe_channel(self, channel: str) -> None:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._subscriber.pubsub()
            try:
                await self._pubsub.subscribe(channel)
            except Exception:
                log.warning("Redis subscribe failed; the listener will resubscribe", exc_info=True)
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._listen())

    async def _room_emptied(self, room_id: int) -> None:
        async with self._lock:
            if self._pubsub is not None and room_id not in self.rooms:
                try:
                    await self._pubsub.unsubscribe(self._channel(room_id))
                except Exception:
                    log.debug("Redis unsubscribe failed", exc_info=True)

    async def publish(self, room_id: int, event: dict[str, Any]) -> None:
        # Local sockets first and at once, whatever Redis is doing; each socket orders a room's
        # messages by seq (parley.realtime.ordering), so a message from another process that
        # arrives after a later local one waits for it, or is read from the database.
        self.deliver(room_id, event)
        self._enqueue(self._channel(room_id), marked((self.origin,), event))

    def _enqueue(self, channel: str, data: bytes) -> None:
        limit = max(1, int(parley_settings.REDIS_OUTBOX_MAX_EVENTS))
        while len(self._outbox) >= limit:
            self._outbox.popleft()
            self.dropped_publishes += 1
            stats.dropped_publishes += 1
            self._warn("Redis publish queue full (%d events): dropping the oldest", limit)
        self._outbox.append((channel, data))
        if self._drainer is None or self._drainer.done():
            self._drainer = spawn(self._drain())

    async def _drain(self) -> None:
        """Publish the queue in order, a pipeline of up to OUTBOX_BATCH_EVENTS at a time. A batch
        Redis refused after the client's retries (parley.realtime.redis_options) is dropped: the
        other processes lost their subscriptions too, and read it from the database on resync."""
        while self._outbox:
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), OUTBOX_BATCH_EVENTS))]
            try:
                if len(batch) == 1:
                    await self._publisher.publish(*batch[0])
                else:
                    async with self._publisher.pipeline(transaction=False) as pipe:
                        for channel, data in batch:
                            pipe.publish(channel, data)
                        await pipe.execute()
            except Exception:
                self.dropped_publishes += len(batch)
                stats.dropped_publishes += len(batch)
                self._warn("Redis publish failed; %d events reach other processes only from the "
                           "database (this process's sockets had them)", len(batch))

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= PUBLISH_WARNING_INTERVAL_SECS:
            self._warned_at = now
            log.warning(message, *args)

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                failures = 0
                self.subscribed = True
                if message is not None and message["type"] == "message":
                    origins, _, body = message["data"].partition(b"|")
                    if self.origin in origins.split(b","):
                        continue  # ours: delivered to our sockets before it was published
                    channel = message["channel"].decode()
                    if channel == self._control:
                        kind, ident = orjson.loads(body)["revoke"]
                        self.close_local((str(kind), int(ident)))
                    elif channel == self._user:
                        addressed = orjson.loads(body)
                        self.deliver_user(int(addressed["user_id"]), addressed["event"])
                    else:
                        self.deliver(int(channel[len(self._prefix):]), orjson.loads(body))
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                self.subscribed = False
                delay = random.uniform(0, min(RESUBSCRIBE_BACKOFF_CAP_SECS, 0.1 * 2**failures))
                log.warning("Redis subscription lost; resubscribing in %.2f s", delay, exc_info=failures == 1)
                await asyncio.sleep(delay)
                await self._resubscribe()

    async def _resubscribe(self) -> None:
        async with self._lock:
            old, self._pubsub = self._pubsub, self._subscriber.pubsub()
            try:
                await old.aclose()
            except Exception:
                log.debug("closing the lost subscription failed", exc_info=True)
            channels = [self._channel(room_id) for room_id in self.rooms]
            if self.credentials:
                channels += [self._control, self._user]
            if not channels:
                return
            try:
                await self._pubsub.subscribe(*channels)
            except Exception:
                # Still down: the next get_message fails too, and we retry with more backoff.
                log.warning("Redis still unavailable for resubscribe")
                return
        log.info("Redis subscription restored for %d rooms; catching up from the database", len(channels))
        for room_id, receivers in list(self.rooms.items()):
            for receiver in tuple(receivers):
                receiver.hub_resync(room_id)


def room_channel(prefix: str, room_id: int) -> str:
    """The Redis channel of a room's events; `prefix` ends with ":room:"."""
    return f"{prefix}{room_id}"


def user_channel(prefix: str) -> str:
    """The Redis channel of every user's events (publish_user)."""
    return f"{prefix}:user"


def marked(origins: Iterable[bytes], event: dict[str, Any]) -> bytes:
    """What goes on a Redis channel: the origin ids of the hubs that delivered the event to
    their sockets already (they skip it), then `|`, then the event as JSON."""
    return b",".join(origins) + b"|" + orjson.dumps(event)


_sync_publishers: dict[str, Any] = {}


def publish_from_sync(url: str, prefix: str, room_id: int, event: dict[str, Any],
                      delivered_by: Iterable[bytes] = ()) -> int:
    """PUBLISH one room event from synchronous code (any thread, any process): every server
    process subscribed to the room delivers it, as RedisHub.publish's would be, except the hubs
    whose origin ids are in `delivered_by` (they had it handed to them directly). Returns how
    many subscriptions received it (Redis's answer)."""
    return int(_sync_client(url).publish(room_channel(f"{prefix}:room:", room_id), marked(delivered_by, event)))


def publish_user_from_sync(url: str, prefix: str, user_id: int, event: dict[str, Any],
                           delivered_by: Iterable[bytes] = ()) -> int:
    """publish_from_sync's twin for an event addressed to one user's sockets (publish_user)."""
    body = marked(delivered_by, {"user_id": user_id, "event": event})
    return int(_sync_client(url).publish(user_channel(prefix), body))


def _sync_client(url: str) -> Any:
    """One blocking client per URL, made on first use."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    from parley.realtime.redis_options import HEALTH_CHECK_INTERVAL_SECS, RETRIES

    client = _sync_publishers.get(url)
    if client is None:
        # parley.realtime.redis_options' retries, in redis-py's blocking flavour.
        client = _sync_publishers[url] = redis.Redis.from_url(
            url, retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), RETRIES),
            health_check_interval=HEALTH_CHECK_INTERVAL_SECS, socket_keepalive=True)
    return client


@per_loop
def get_hub() -> LocalHub:
    """The running loop's hub: Redis-backed when REDIS_URL is set."""
    if parley_settings.REDIS_URL:
        return RedisHub(parley_settings.REDIS_URL, parley_settings.REDIS_PREFIX)
    return LocalHub()
