"""One socket's session: who is on it, the rooms it joined, and what joining and leaving a room
take (the hub subscription, presence).

The consumer (parley.consumers) owns the socket and makes the session when the socket opens;
the command handlers (parley.commands) work on the session; its `delivery` (parley.delivery)
is what the hub hands room events to. Everything the session writes leaves through
`send_message`, the socket's bounded outbound queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from parley import consumer_db as db
from parley import fanout, protocol
from parley.conf import parley_settings
from parley.delivery import Delivery
from parley.presence import Member, get_presence
from parley.protocol import ProtocolError
from parley.realtime.hub import Credential, get_hub
from parley.realtime.ordering import Subscription

log = logging.getLogger(__name__)

# Room slug → id, learnt from joins, shared by this process's sockets; a hint only (every join
# re-reads the room and checks access).
_room_ids: dict[str, int] = {}
ROOM_ID_CACHE_MAX = 100_000


def room_not_found(slug: str) -> ProtocolError:
    return ProtocolError(protocol.ROOM_NOT_FOUND, f"no room {slug!r} that you may see", room=slug)


class Session:
    """The state of one open, authenticated socket, and the room operations on it."""

    def __init__(self, *, user: Any, token_id: int | None, socket_id: str,
                 send_message: Callable[[str, int | None], None], close: Callable[[int], None],
                 protocol_version: int = 1) -> None:
        self.user = user
        # 1 or 2 (docs/protocol.md §10): what the socket's URL asked for. Version 1 sockets get
        # `message` events only, the other entries skipped in their order.
        self.protocol_version = protocol_version
        self.v2 = protocol_version >= 2
        self.token_id = token_id  # the API token the socket was opened with (None: a session)
        self.member = Member(user.pk, user.get_username())
        self.socket_id = socket_id  # this socket among the room's, in presence and its events
        self.send_message = send_message  # queue one encoded frame (bounded: parley.realtime.outbound)
        self.close = close  # close once what is queued is written (or its grace is over)
        self.subs_by_id: dict[int, Subscription] = {}
        self.subs_by_slug: dict[str, Subscription] = {}
        self.presence_due = 0.0  # monotonic time from which a frame touches presence again
        self.presence_task: asyncio.Future[None] | None = None
        self.delivery = Delivery(self)

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one reply or event for this socket."""
        self.send_message(*protocol.encode_sized(frame))

    def joined(self, slug: str) -> Subscription:
        sub = self.subs_by_slug.get(slug)
        if sub is None:
            raise ProtocolError(protocol.NOT_JOINED, f"join {slug!r} first", room=slug)
        return sub

    def credentials(self) -> list[Credential]:
        """What this socket's right to stay open rests on: its user, and its API token if any."""
        token_id = self.token_id
        return [("user", self.user.pk)] + ([("token", token_id)] if token_id is not None else [])

    # --- rooms ------------------------------------------------------------------------------

    async def subscribe(self, slug: str) -> Subscription:
        """Start receiving the room's live events on this socket (before its log is read).

        The room's id comes from this process's slug → id map when an earlier join learnt it, so
        a join usually costs one database hop (the snapshot, which also checks access), not two.
        """
        room_id = _room_ids.get(slug)
        if room_id is None:
            room = await db.load_room(self.user, slug)
            if room is None:
                raise room_not_found(slug)
            if len(_room_ids) >= ROOM_ID_CACHE_MAX:
                _room_ids.clear()
            room_id = _room_ids[slug] = room.pk
        if len(self.subs_by_id) >= parley_settings.MAX_ROOMS_PER_SOCKET:
            raise ProtocolError(protocol.TOO_MANY_ROOMS, f"a socket may join at most "
                                f"{int(parley_settings.MAX_ROOMS_PER_SOCKET)} rooms", room=slug)
        sub = Subscription(room_id=room_id, slug=slug)
        self.subs_by_id[room_id] = self.subs_by_slug[slug] = sub
        await get_hub().subscribe(room_id, self.delivery)
        return sub

    def relearn_room(self, slug: str, room_id: int) -> None:
        """The slug names another room now (deleted and re-created): remember the new one."""
        _room_ids[slug] = room_id

    def forget_room(self, sub: Subscription) -> None:
        """Stop delivering the room's events to this socket now (unsubscribe does the rest)."""
        if self.subs_by_id.get(sub.room_id) is sub:
            self.subs_by_id.pop(sub.room_id, None)
        if self.subs_by_slug.get(sub.slug) is sub:
            self.subs_by_slug.pop(sub.slug, None)

    async def unsubscribe(self, sub: Subscription) -> None:
        """Leave the room on this socket: no more events, and out of its presence."""
        self.forget_room(sub)
        try:
            await get_hub().unsubscribe(sub.room_id, self.delivery)
            presence = get_presence()
            if await presence.remove(sub.room_id, self.socket_id, self.user.pk):
                count = len(await presence.members(sub.room_id))
                await fanout.broadcast_presence(room_id=sub.room_id, room_slug=sub.slug, event="leave",
                                                user=self.user, members=count, origin=self.socket_id)
        except (RedisError, OSError):
            # The entry expires by itself (presence TTL); the room is left on this socket anyway.
            log.warning("could not update presence on leaving room %s (Redis)", sub.slug)

    async def leave_all(self) -> None:
        for sub in list(self.subs_by_id.values()):
            await self.unsubscribe(sub)

    # --- presence ---------------------------------------------------------------------------

    async def presence_join(self, room_id: int, slug: str, first_join: bool, sub: Subscription) -> list[Any]:
        """Record this socket as online in the room and return who is online.

        Presence is best effort: if Redis is away, the join still succeeds (history and live
        messages do not depend on it) and the member list shows only this user.
        """
        presence = get_presence()
        try:
            if first_join:
                sub.presence_touched = time.monotonic()
                if await presence.add(room_id, self.socket_id, self.member, slug=slug):
                    count = len(await presence.members(room_id))
                    await fanout.broadcast_presence(room_id=room_id, room_slug=slug, event="join",
                                                    user=self.user, members=count, origin=self.socket_id)
            return await presence.members(room_id)
        except (RedisError, OSError):
            log.warning("presence unavailable for room %s (Redis)", slug)
            return [self.member]

    def keep_presence_alive(self, now: float) -> None:
        """Called for every client frame (`now`: when it arrived): any frame, not only a ping,
        keeps the socket's presence entries from expiring (parley.presence), since a client pings
        only when it has sent nothing else. Each joined room's entry is touched at most once per
        half heartbeat, by a task: a frame never waits on Redis for it."""
        if now < self.presence_due or not self.subs_by_id:
            return
        half = parley_settings.HEARTBEAT_INTERVAL_SECS / 2
        self.presence_due = now + half
        if self.presence_task is not None and not self.presence_task.done():
            return  # the last touch is still on its way (Redis slow): the next frame retries
        # Only completed joins: a join in progress adds its entry itself (presence_join).
        due = [sub for sub in self.subs_by_id.values() if sub.ready and now - sub.presence_touched >= half]
        if due:
            for sub in due:
                sub.presence_touched = now
            self.presence_task = asyncio.ensure_future(self._touch_presence(due))

    async def _touch_presence(self, subs: list[Subscription]) -> None:
        presence = get_presence()
        try:
            for sub in subs:
                if self.subs_by_id.get(sub.room_id) is not sub:
                    continue
                revived = await presence.touch(sub.room_id, self.socket_id, self.member, slug=sub.slug)
                if self.subs_by_id.get(sub.room_id) is not sub:
                    # The room was left while the touch was on its way: take back what it wrote.
                    await presence.remove(sub.room_id, self.socket_id, self.user.pk)
                elif revived:
                    # The user had vanished from the room's presence (a Redis restart lost it):
                    # back now, and the others hear it as they hear a join.
                    count = len(await presence.members(sub.room_id))
                    await fanout.broadcast_presence(room_id=sub.room_id, room_slug=sub.slug, event="join",
                                                    user=self.user, members=count, origin=self.socket_id)
        except (RedisError, OSError):
            log.warning("presence heartbeat failed (Redis unavailable)")
        except Exception:
            log.exception("presence heartbeat failed")
