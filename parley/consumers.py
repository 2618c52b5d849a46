"""The chat consumer: one WebSocket per client, carrying every room the client has joined.

Channels runs one consumer instance per socket and dispatches its inputs — client frames and
channel-layer events — one at a time. Room messages arrive either as channel-layer events
(`chat_message`, PARLEY_FANOUT=layer) or straight from the process's hub (`hub_event`, the
default); both go through the same synchronous ordering code in parley.realtime.ordering, and everything
leaves through the socket's bounded outbound queue (parley.realtime.outbound).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import DEFAULT_CHANNEL_LAYER
from django.db import DatabaseError
from redis.exceptions import RedisError

from parley import consumer_db as db
from parley import fanout, limits, protocol
from parley.conf import parley_settings
from parley.ingest import get_writer
from parley.payloads import message_payload, room_payload, timestamp, user_payload
from parley.presence import Member, get_presence
from parley.protocol import ProtocolError
from parley.realtime.frameless import consumer_app
from parley.realtime.hub import get_hub, hub_enabled
from parley.realtime.ordering import Subscription
from parley.realtime.outbound import RAW_SEND_KEY, Outbound
from parley.revocation import CredentialsRevoked

log = logging.getLogger(__name__)

LAYER_RETRY_CAP_SECS = 2.0

# Per-process state shared by this process's sockets (see parley/limits.py on "per process").
_sockets_per_user: dict[int, int] = {}
# Room slug → id, learnt from joins; a hint only (every join re-reads the room and checks access).
_room_ids: dict[str, int] = {}
ROOM_ID_CACHE_MAX = 100_000
_user_message_buckets = limits.USER_MESSAGE_BUCKETS  # shared with POST /api/rooms/<slug>/messages
_history_budget = limits.ByteBudget(limits.HISTORY_BYTES_PER_SEC, limits.HISTORY_BURST_BYTES,
                                    limits.HISTORY_PROCESS_BYTES_PER_SEC, limits.HISTORY_PROCESS_BURST_BYTES)


def heartbeat_timeout_secs() -> float:
    """Two missed heartbeats and a little slack."""
    return 2 * parley_settings.HEARTBEAT_INTERVAL_SECS + 5


def _room_not_found(slug: str) -> ProtocolError:
    return ProtocolError(protocol.ROOM_NOT_FOUND, f"no room {slug!r} that you may see", room=slug)


class ChatConsumer(AsyncWebsocketConsumer):
    # With the hub (the default) nothing reaches a socket through the channel layer — rooms and
    # revocations (token, user) both go through parley.realtime.hub — so the socket gets no channel:
    # Channels then runs one receive task per socket instead of two and keeps no per-socket
    # queue (idle memory, docs/benchmarks.md). `channel_name` stays a unique id of the socket (presence).
    # With PARLEY_FANOUT=layer every socket has its channel, as in stock Channels.
    @property  # type: ignore[override]
    def channel_layer_alias(self) -> str | None:
        return None if hub_enabled() else DEFAULT_CHANNEL_LAYER

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Channels' as_asgi — one consumer instance per connection — without a coroutine frame
        of its own per open socket (parley.realtime.frameless)."""
        return consumer_app(cls, **initkwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel_name = f"hub.{uuid.uuid4().hex}"  # replaced by the layer's channel if any
        self.user: Any = None
        self.token_id: int | None = None  # the API token the socket was opened with (None: a session)
        self.subs_by_id: dict[int, Subscription] = {}
        self.subs_by_slug: dict[str, Subscription] = {}
        self.last_frame_at = time.monotonic()
        self.presence_due = 0.0  # monotonic time from which a frame touches presence again
        self.presence_task: asyncio.Future[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.outbound: Outbound | None = None
        self.counted = False  # in _sockets_per_user
        self.watched = False  # watched for revocation (parley.realtime.hub / credential groups)
        self.frame_bucket = limits.TokenBucket(parley_settings.FRAMES_PER_SEC, parley_settings.FRAMES_BURST)
        self.strikes = limits.Strikes()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Called by the ASGI server (via the routing) for the socket's whole life: dispatches
        each client frame in turn until the consumer stops.

        With a channel layer (PARLEY_FANOUT=layer) this is Channels' own loop, which races the
        client's `receive` against the layer's with one task per source. With the hub the client
        is the only source, so its frames are awaited right here: same order, same handlers,
        but no extra task, `asyncio.wait` futures and task set per socket (~1.5 KB of every idle
        socket, docs/benchmarks.md).
        """
        if self.channel_layer_alias is not None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass  # the socket closed: exit cleanly, as Channels does

    # Channels' AsyncConsumer.__call__ assigns self.channel_receive, the layer's receive for this
    # socket's channel. With Redis it raises while Redis restarts, and an exception there ends the
    # consumer: every socket of the process would drop at once. Wrap it to retry instead.
    @property
    def channel_receive(self) -> Any:
        return self._channel_receive

    @channel_receive.setter
    def channel_receive(self, receive: Any) -> None:
        async def resilient() -> Any:
            delay = 0.05
            while True:
                try:
                    return await receive()
                except (RedisError, OSError):
                    log.warning("channel layer receive failed; retrying in %.2f s", delay, exc_info=delay == 0.05)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LAYER_RETRY_CAP_SECS)

        self._channel_receive = resilient

    # --- socket lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Called when a client asks to open the socket (the HTTP upgrade).

        Refusing here, before accept(), makes the ASGI server answer the upgrade with 403.
        """
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        self.user = user
        self.token_id = self.scope.get("token_id")
        self.member = Member(user.pk, user.get_username())
        await self.accept()
        # Chat frames skip the middleware's send wrappers (parley.realtime.outbound.RAW_SEND_KEY).
        raw_send = self.scope.get(RAW_SEND_KEY, self.base_send)
        self.outbound = Outbound(raw_send, self._close_socket, self._on_outbound_overflow)
        if _sockets_per_user.get(user.pk, 0) >= parley_settings.MAX_SOCKETS_PER_USER:
            err = ProtocolError(protocol.TOO_MANY_SOCKETS, "too many open sockets for this user; close one")
            await self.send_frame(err.to_frame(None))
            self.outbound.close_after_flush(protocol.CLOSE_TOO_MANY_SOCKETS)
            return
        _sockets_per_user[user.pk] = _sockets_per_user.get(user.pk, 0) + 1
        self.counted = True
        self.watched = True  # watched for revocation (set before the awaits below)
        try:
            for credential in self._credentials():
                if hub_enabled():
                    await get_hub().watch(credential, self)
                else:
                    get_hub().watch_local(credential, self)  # for the periodic check (parley.revocation)
                    await self.channel_layer.group_add(fanout.credential_group(credential), self.channel_name)
        except (RedisError, OSError):
            # Degrade, don't refuse: the credentials are valid now; revoking them still blocks
            # every new handshake, only this socket would miss the live close.
            log.warning("could not register socket for revocation (Redis unavailable)")
        self._arm_watchdog(heartbeat_timeout_secs())
        await self.send_frame({
            "type": "hello",
            "protocol": protocol.PROTOCOL_VERSION,
            "user": user_payload(user),
            "heartbeat_secs": parley_settings.HEARTBEAT_INTERVAL_SECS,
            "limits": {
                "max_text_chars": parley_settings.MAX_TEXT_CHARS,
                "history_page_max": parley_settings.HISTORY_PAGE_MAX,
                "max_frame_bytes": parley_settings.MAX_FRAME_BYTES,
                "messages_per_sec": parley_settings.MESSAGES_PER_SEC,
                "messages_burst": parley_settings.MESSAGES_BURST,
                "frames_per_sec": parley_settings.FRAMES_PER_SEC,
                "frames_burst": parley_settings.FRAMES_BURST,
                "typing_interval_ms": parley_settings.TYPING_MIN_INTERVAL_MS,
                "max_rooms": parley_settings.MAX_ROOMS_PER_SOCKET,
            },
        })

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, for any reason: leaves every room, updating presence."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.outbound is not None:
            self.outbound.stop()
        self._release_slot()
        if self.watched:
            self.watched = False
            try:
                for credential in self._credentials():
                    get_hub().unwatch(credential, self)
                    if not hub_enabled():
                        await self.channel_layer.group_discard(fanout.credential_group(credential), self.channel_name)
            except (RedisError, OSError):
                # As in connect(): Redis being away must not stop the rooms below being left
                # (a socket left in the hub would be kept alive and fed forever).
                log.warning("could not unregister socket from revocation (Redis unavailable)")
        for sub in list(self.subs_by_id.values()):
            await self._unsubscribe(sub)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called by Channels for each client frame and channel-layer event: runs its handler.

        Channels' own dispatch (4.2+) first runs close_old_connections in the thread pool: a
        thread hop per frame and per event, ~30% of the stock fan-out path's profile. Every
        database call of this consumer runs on parley.realtime.dbthread, which closes stale connections
        itself before and after each call, so the extra hop protects nothing here.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every frame the client sends; answers with a reply or one error frame.

        Every frame is charged to the socket's frame bucket before anything else is done with
        it, valid or not: a flood of garbage must cost the server no more than a flood of pings
        (docs/protocol.md §6).
        """
        ref = None
        self.last_frame_at = time.monotonic()
        if self.outbound is None or self.outbound.closed:
            return  # closing (too many sockets, abuse, slow reader): ignore what is in flight
        wait = self.frame_bucket.take()
        if wait:
            self._refuse_frame(text_data, wait)
            return
        self._keep_presence_alive()
        try:
            frame = protocol.decode_frame(text_data, bytes_data)
            ref = protocol.frame_ref(frame)
            command = protocol.parse_command(frame)
            await self._handlers[type(command)](self, command, ref)
        except ProtocolError as err:
            await self.send_frame(err.to_frame(ref))
            if err.code == protocol.RATE_LIMITED and self.strikes.add():
                self._close_for_flooding()
        except CredentialsRevoked as lost:
            self._close_revoked(lost.credentials)
        except Exception:
            log.exception("unexpected error handling a frame from user %s", self.user.pk)
            err = ProtocolError(protocol.INTERNAL_ERROR, "unexpected server error")
            await self.send_frame(err.to_frame(ref))

    def _refuse_frame(self, text_data: str | None, wait: float) -> None:
        """A frame over the socket's frame budget: dropped, answered `rate_limited`, one strike.

        Every refusal is answered (with the frame's ref when it has a valid one), so a client
        that waits on a reply learns to retry instead of hanging; the replies stay bounded
        because the strikes are: PARLEY_RATE_LIMIT_STRIKES refusals within 10 s close the socket
        (4429). Only for that ref is a refused frame read at all.
        """
        if self.strikes.add():
            self._close_for_flooding()
            return
        err = ProtocolError(protocol.RATE_LIMITED, "too many frames; slow down", retry_after_ms=_ms(wait))
        self._put(*protocol.encode_sized(err.to_frame(protocol.peek_ref(text_data))))

    def _close_for_flooding(self) -> None:
        log.warning("closing socket of user %s: kept flooding after rate limiting", self.user.pk)
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_RATE_LIMIT)

    async def websocket_shutdown(self, message: dict[str, Any]) -> None:
        """Called when the server shuts down (SIGTERM; parley.edge queues the event behind every
        frame the socket had received, and reads no more): those frames have all been handled,
        so close with 1001 once their replies are written."""
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_GOING_AWAY)
        else:
            await self.close(code=protocol.CLOSE_GOING_AWAY)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one reply or event for this socket (parley.realtime.outbound bounds the queue)."""
        self._put(*protocol.encode_sized(frame))

    # --- commands ---------------------------------------------------------------------------

    def _joined(self, slug: str) -> Subscription:
        sub = self.subs_by_slug.get(slug)
        if sub is None:
            raise ProtocolError(protocol.NOT_JOINED, f"join {slug!r} first", room=slug)
        return sub

    async def do_join(self, cmd: protocol.Join, ref: str | None) -> None:
        # A join reads a page as history does, so its reply is charged to the user's history
        # budget too, after the read (its size is known only then), into debt if need be; a
        # join while in debt is refused. Not to the process budget: a reconnect storm's joins
        # must not be refused because of everyone else's.
        wait = _history_budget.debt_wait(self.user.pk)
        if wait:
            raise ProtocolError(protocol.RATE_LIMITED, "too much history read; retry the join later",
                                room=cmd.room, retry_after_ms=_ms(wait))
        for _attempt in range(2):
            sub = self.subs_by_slug.get(cmd.room)
            first_join = sub is None
            if sub is None:
                sub = await self._subscribe(cmd.room)
            sub.ready = False  # live events queue in sub.pending until the snapshot is sent
            # Read after subscribing: whatever commits after the read is then certain to arrive
            # live, and whatever the read saw is dropped by seq when it arrives. The same hop
            # checks that the user may see the room.
            found = await db.join_snapshot(self.user, cmd, self.token_id)
            if found is not None and found[0].pk == sub.room_id:
                break
            await self._unsubscribe(sub)
            if found is None:  # no such room, or not for this user (any more)
                raise _room_not_found(cmd.room)
            _room_ids[cmd.room] = found[0].pk  # the slug names another room now (re-created)
        else:
            raise _room_not_found(cmd.room)
        room, messages, has_more, recovered, high, last_seq = found
        members = await self._presence_join(room.pk, room.slug, first_join, sub)
        reply = _with_ref({
            "type": "joined",
            "room": room_payload(room, last_seq=last_seq),
            "messages": [message_payload(m, room_slug=room.slug) for m in messages],
            "has_more": has_more,
            "members": [{"id": m.id, "username": m.username} for m in members],
            "recovered": recovered,
        }, ref)
        text, size = protocol.encode_sized(reply)
        if size > protocol.max_server_frame_bytes():
            # The messages fit their budget already (consumer_db): only a room with thousands of
            # users online gets here, and its member list gives way so the frame stays one a
            # client accepts (protocol.md §3).
            reply["members"] = _members_that_fit(reply["members"])
            text, size = protocol.encode_sized(reply)
        _history_budget.charge_after(self.user.pk, size)
        self._put(text, size)
        if sub.start(high, self.send_message):
            self._schedule_gap_fill(sub)

    async def _subscribe(self, slug: str) -> Subscription:
        """Start receiving the room's live events on this socket (before its log is read).

        The room's id comes from this process's slug → id map when an earlier join learnt it, so
        a join usually costs one database hop (the snapshot, which also checks access), not two.
        """
        room_id = _room_ids.get(slug)
        if room_id is None:
            room = await db.load_room(self.user, slug)
            if room is None:
                raise _room_not_found(slug)
            if len(_room_ids) >= ROOM_ID_CACHE_MAX:
                _room_ids.clear()
            room_id = _room_ids[slug] = room.pk
        if len(self.subs_by_id) >= parley_settings.MAX_ROOMS_PER_SOCKET:
            raise ProtocolError(protocol.TOO_MANY_ROOMS, f"a socket may join at most "
                                f"{int(parley_settings.MAX_ROOMS_PER_SOCKET)} rooms", room=slug)
        sub = Subscription(room_id=room_id, slug=slug)
        self.subs_by_id[room_id] = self.subs_by_slug[slug] = sub
        if hub_enabled():
            await get_hub().subscribe(room_id, self)
        else:
            await self.channel_layer.group_add(fanout.room_group(room_id), self.channel_name)
        return sub

    async def _presence_join(self, room_id: int, slug: str, first_join: bool, sub: Subscription) -> list[Any]:
        """Record this socket as online in the room and return who is online.

        Presence is best effort: if Redis is away, the join still succeeds (history and live
        messages do not depend on it) and the member list shows only this user.
        """
        presence = get_presence()
        try:
            if first_join:
                sub.presence_touched = time.monotonic()
                if await presence.add(room_id, self.channel_name, self.member):
                    count = len(await presence.members(room_id))
                    await fanout.broadcast_presence(room_id=room_id, room_slug=slug, event="join",
                                                    user=self.user, members=count, origin=self.channel_name)
            return await presence.members(room_id)
        except (RedisError, OSError):
            log.warning("presence unavailable for room %s (Redis)", slug)
            return [self.member]

    async def do_leave(self, cmd: protocol.Leave, ref: str | None) -> None:
        await self._unsubscribe(self._joined(cmd.room))
        await self.send_frame(_with_ref({"type": "left", "room": cmd.room}, ref))

    async def do_send(self, cmd: protocol.Send, ref: str | None) -> None:
        sub = self._joined(cmd.room)
        wait = _user_message_buckets.take(self.user.pk)
        if wait:
            raise ProtocolError(protocol.RATE_LIMITED, "too many messages; retry later with the same client_id",
                                room=sub.slug, retry_after_ms=_ms(wait))
        try:
            result = await get_writer().submit(user=self.user, room_id=sub.room_id, text=cmd.text,
                                               client_id=cmd.client_id, token_id=self.token_id)
        except DatabaseError:
            log.exception("could not store a message in room %s", sub.slug)
            raise ProtocolError(protocol.COMMIT_FAILED, "the message was not stored; retry with the same client_id",
                                room=sub.slug) from None
        if result is None:
            await self._unsubscribe(sub)
            raise _room_not_found(cmd.room)
        message, duplicate = result
        await self.send_frame(_with_ref({
            "type": "ack", "room": sub.slug, "client_id": message.client_id, "seq": message.seq,
            "id": message.pk, "ts": timestamp(message.created_at), "duplicate": duplicate,
        }, ref))
        if not duplicate:
            try:
                await fanout.broadcast_message(room_id=sub.room_id, room_slug=sub.slug, message=message)
            except Exception:
                # Committed and acked already: sockets that missed the event fill the gap from the
                # database on the next message, and reconnecting clients resume past it.
                log.exception("broadcast of %s#%s failed", sub.slug, message.seq)

    async def do_history(self, cmd: protocol.History, ref: str | None) -> None:
        sub = self._joined(cmd.room)
        # Charged before the read, for the largest reply it could give; settled to the reply's
        # real size after (parley.limits.ByteBudget).
        wait, reserved = _history_budget.reserve(self.user.pk, db.history_reserve_bytes(cmd.limit))
        if wait:
            raise ProtocolError(protocol.RATE_LIMITED, "too much history read; retry later",
                                room=sub.slug, retry_after_ms=_ms(wait))
        used = db.HISTORY_MIN_COST_BYTES
        try:
            result = await db.history(self.user, sub.room_id, sub.slug, cmd.before, cmd.limit, self.token_id)
            if result is None:
                await self._unsubscribe(sub)
                raise _room_not_found(cmd.room)
            messages, has_more = result
            text, size = protocol.encode_sized(_with_ref({
                "type": "history", "room": sub.slug, "has_more": has_more,
                "messages": [message_payload(m, room_slug=sub.slug) for m in messages],
            }, ref))
            used = max(used, size)
            self._put(text, size)
        finally:
            _history_budget.settle(self.user.pk, reserved, used)

    async def do_typing(self, cmd: protocol.Typing, ref: str | None) -> None:
        sub = self._joined(cmd.room)
        now = time.monotonic()
        if (now - sub.typing_at) * 1000 < parley_settings.TYPING_MIN_INTERVAL_MS:
            return  # relayed one a moment ago; peers show "typing" for seconds anyway
        sub.typing_at = now
        if not await db.can_access(self.user, sub.room_id, self.token_id):
            await self._unsubscribe(sub)
            raise _room_not_found(cmd.room)
        await fanout.broadcast_typing(room_id=sub.room_id, room_slug=sub.slug, user=self.user)

    async def do_ping(self, cmd: protocol.Ping, ref: str | None) -> None:
        # Presence was kept alive by receive(), as for every frame (_keep_presence_alive).
        await self.send_frame(_with_ref({"type": "pong"}, ref))

    def _keep_presence_alive(self) -> None:
        """Called for every client frame: any frame, not only a ping, keeps the socket's
        presence entries from expiring (parley.presence), since a client pings only when it has
        sent nothing else. Each joined room's entry is touched at most once per half
        heartbeat, by a task: a frame never waits on Redis for it."""
        now = self.last_frame_at
        if now < self.presence_due or not self.subs_by_id:
            return
        half = parley_settings.HEARTBEAT_INTERVAL_SECS / 2
        self.presence_due = now + half
        if self.presence_task is not None and not self.presence_task.done():
            return  # the last touch is still on its way (Redis slow): the next frame retries
        # Only completed joins: a join in progress adds its entry itself (_presence_join).
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
                revived = await presence.touch(sub.room_id, self.channel_name, self.member)
                if self.subs_by_id.get(sub.room_id) is not sub:
                    # The room was left while the touch was on its way: take back what it wrote.
                    await presence.remove(sub.room_id, self.channel_name, self.user.pk)
                elif revived:
                    # The user had vanished from the room's presence (a Redis restart lost it):
                    # back now, and the others hear it as they hear a join.
                    count = len(await presence.members(sub.room_id))
                    await fanout.broadcast_presence(room_id=sub.room_id, room_slug=sub.slug, event="join",
                                                    user=self.user, members=count, origin=self.channel_name)
        except (RedisError, OSError):
            log.warning("presence heartbeat failed (Redis unavailable)")
        except Exception:
            log.exception("presence heartbeat failed")

    _handlers = {
        protocol.Join: do_join,
        protocol.Leave: do_leave,
        protocol.Send: do_send,
        protocol.History: do_history,
        protocol.Typing: do_typing,
        protocol.Ping: do_ping,
    }

    # --- room events: channel-layer handlers (type "chat.x" → chat_x) and the hub's entry ----

    async def chat_message(self, event: dict[str, Any]) -> None:
        """Called for each message committed in a room this socket joined (PARLEY_FANOUT=layer)."""
        self._deliver(event)

    def send_message(self, frame: str, size: int | None = None) -> None:
        """Deliver one chat message, already encoded once for everyone by parley.fanout, to this socket.

        Called in seq order only (by hub_event for the next message in line, else by
        parley.realtime.ordering); it queues the frame on the socket's bounded outbound queue, which writes
        it at once unless the client is behind.
        """
        if self.outbound is not None:
            self.outbound.put(frame, size)

    async def chat_presence(self, event: dict[str, Any]) -> None:
        """Called when a user's first socket joins, or last socket leaves, a room this socket is in.

        The socket that caused it is skipped: its `joined` reply already lists the members.
        """
        self._relay_presence(event)

    async def chat_typing(self, event: dict[str, Any]) -> None:
        """Called when someone in a joined room is typing; the typist's own sockets skip it."""
        self._relay_typing(event)

    async def chat_revoke(self, event: dict[str, Any]) -> None:
        """Called when a user lost access to a room (removed from a private room): leave it now."""
        sub = self.subs_by_id.get(event["room_id"])
        if sub is not None and event["user_id"] == self.user.pk:
            await self._unsubscribe(sub)
            await self.send_frame({"type": "left", "room": sub.slug, "reason": "removed"})

    async def auth_revoked(self, event: dict[str, Any]) -> None:
        """Called when this socket's API token is revoked or its user deactivated: close with 4401."""
        log.info("closing a socket of user %s: its credentials were revoked", self.user.pk)
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_CREDENTIALS_REVOKED)

    def hub_event(self, event: dict[str, Any]) -> None:
        """Called by parley.realtime.hub, synchronously, for each event of a room this socket joined."""
        kind = event["type"]
        if kind == "chat.message":
            self._deliver(event)
        elif kind in ("chat.presence", "chat.custom"):  # custom: parley.fanout.custom_event
            self._relay_presence(event)
        elif kind == "chat.typing":
            self._relay_typing(event)
        elif kind == "chat.revoke":
            asyncio.ensure_future(self.chat_revoke(event))

    def hub_resync(self, room_id: int) -> None:
        """Called by parley.realtime.hub when events may have been lost (Redis reconnected): catch up."""
        sub = self.subs_by_id.get(room_id)
        if sub is not None and sub.ready:
            asyncio.ensure_future(self._fill_gap(sub, up_to=None))

    def hub_credentials_revoked(self) -> None:
        """Called by parley.realtime.hub when this socket's API token is revoked or its user deactivated."""
        asyncio.ensure_future(self.auth_revoked({"type": "auth.revoked"}))

    def _close_revoked(self, lost: frozenset[tuple[str, int]]) -> None:
        """A command found the socket's user or API token no longer valid (and did nothing):
        close this socket with 4401, and every other socket of this process resting on the
        same credentials, as a revocation announced by parley.realtime.hub would."""
        log.info("closing a socket of user %s: its credentials are no longer valid", self.user.pk)
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_CREDENTIALS_REVOKED)
        hub = get_hub()
        for credential in lost:
            hub.close_local(credential)

    def _credentials(self) -> list[tuple[str, int]]:
        """What this socket's right to stay open rests on: its user, and its API token if any."""
        token_id = self.token_id
        return [("user", self.user.pk)] + ([("token", token_id)] if token_id is not None else [])

    # --- delivery ---------------------------------------------------------------------------

    def _put(self, frame: str, size: int | None = None) -> None:
        if self.outbound is not None:
            self.outbound.put(frame, size)

    # Presence and typing go only to sockets whose join completed (sub.ready): a join subscribes
    # before it checks access, so a socket refused a private room must not see its events
    # meanwhile; the joined reply carries the member list as of after the subscription anyway.
    def _relay_presence(self, event: dict[str, Any]) -> None:
        sub = self.subs_by_id.get(event["room_id"])
        if sub is not None and sub.ready and event["origin"] != self.channel_name:
            self._put(event["frame"])

    def _relay_typing(self, event: dict[str, Any]) -> None:
        sub = self.subs_by_id.get(event["room_id"])
        if sub is not None and sub.ready and event["user_id"] != self.user.pk:
            self._put(event["frame"])

    def _deliver(self, event: dict[str, Any]) -> None:
        # The hot path of a fan-out (once per recipient, from the hub or the layer): the message
        # that is next in line on a live subscription with nothing held goes straight out. This
        # is Subscription.offer's first case, inlined: a broadcast to 1,000 sockets saved ~3
        # calls per socket (~8% of the fan-out profile). Everything else goes through parley.realtime.ordering.
        sub = self.subs_by_id.get(event["room_id"])
        if sub is None:
            return
        seq = event["seq"]
        if seq == sub.high_seq + 1 and sub.ready and not sub.pending:
            sub.high_seq = seq
            self.send_message(event["frame"], event.get("size"))
        elif sub.offer(seq, event["frame"], event.get("size"), self.send_message):
            self._schedule_gap_fill(sub)

    def _schedule_gap_fill(self, sub: Subscription) -> None:
        if sub.gap_fill_scheduled:
            return
        sub.gap_fill_scheduled = True
        delay = parley_settings.GAP_FILL_DELAY_MS / 1000
        asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._fill_gap(sub, up_to=sub.first_pending()))
        )

    async def _fill_gap(self, sub: Subscription, up_to: int | None) -> None:
        """Read from the database what live delivery missed (a broadcast overtaken or lost).

        Runs PARLEY_GAP_FILL_DELAY_MS after a seq arrived ahead of a gap, or after the hub's
        Redis subscription came back (up_to=None: everything newer than what was delivered).
        """
        sub.gap_fill_scheduled = False
        if self.subs_by_id.get(sub.room_id) is not sub:
            return
        if up_to is not None and up_to <= sub.high_seq + 1:
            if sub.drain(self.send_message):
                self._schedule_gap_fill(sub)
            return
        limit = parley_settings.RESUME_MAX_GAP if up_to is None else up_to - sub.high_seq
        missing = await db.messages_after(sub.room_id, sub.high_seq, up_to, limit)
        if self.subs_by_id.get(sub.room_id) is not sub:
            return
        for message in missing:
            if message.seq == sub.high_seq + 1:  # live delivery may have moved on meanwhile
                frame = {"type": "message", "room": sub.slug, "message": message_payload(message, room_slug=sub.slug)}
                self.send_message(*protocol.encode_sized(frame))
                sub.high_seq = message.seq
        first = sub.first_pending()
        if up_to is not None and first is not None and first == up_to and sub.high_seq + 1 < first:
            log.error("room %s: seqs %s..%s are not in the database; skipping them",
                      sub.slug, sub.high_seq + 1, first - 1)
            sub.high_seq = first - 1
        if sub.drain(self.send_message):
            self._schedule_gap_fill(sub)

    async def _unsubscribe(self, sub: Subscription) -> None:
        self.subs_by_id.pop(sub.room_id, None)
        self.subs_by_slug.pop(sub.slug, None)
        try:
            if hub_enabled():
                await get_hub().unsubscribe(sub.room_id, self)
            else:
                await self.channel_layer.group_discard(fanout.room_group(sub.room_id), self.channel_name)
            presence = get_presence()
            if await presence.remove(sub.room_id, self.channel_name, self.user.pk):
                count = len(await presence.members(sub.room_id))
                await fanout.broadcast_presence(room_id=sub.room_id, room_slug=sub.slug, event="leave",
                                                user=self.user, members=count, origin=self.channel_name)
        except (RedisError, OSError):
            # The entry expires by itself (presence TTL); the room is left on this socket anyway.
            log.warning("could not update presence/groups on leaving room %s (Redis)", sub.slug)

    # --- the socket itself ------------------------------------------------------------------

    def _release_slot(self) -> None:
        """Give the user's socket slot (PARLEY_MAX_SOCKETS_PER_USER) back: once, at the close."""
        if self.counted:
            self.counted = False
            left = _sockets_per_user.get(self.user.pk, 1) - 1
            if left > 0:
                _sockets_per_user[self.user.pk] = left
            else:
                _sockets_per_user.pop(self.user.pk, None)

    def _close_now(self, code: int) -> bool:
        """Close without waiting on the client: the close frame goes out at once, the user's
        socket slot is free at once, and the connection is reset if still open
        PARLEY_CLOSE_GRACE_SECS later (parley.realtime.outbound.Outbound.close_now). False if the server
        cannot do that (not uvicorn's websockets-sansio): the caller closes through ASGI."""
        self._release_slot()
        return self.outbound is not None and self.outbound.close_now(code)

    async def _close_socket(self, code: int) -> None:
        """The outbound queue's close, once what was queued before it is written (or the grace
        for that is over)."""
        if not self._close_now(code):  # (which wrote this pass's frames first)
            await self.close(code=code)

    def _on_outbound_overflow(self) -> None:
        log.warning("closing socket of user %s: it stopped reading (outbound queue over budget)", self.user.pk)
        if not self._close_now(protocol.CLOSE_SLOW_READER):
            asyncio.ensure_future(self.close(code=protocol.CLOSE_SLOW_READER))

    def _arm_watchdog(self, delay: float) -> None:
        self.watchdog = asyncio.get_running_loop().call_later(delay, self._check_heartbeat)

    def _check_heartbeat(self) -> None:
        """Close a socket whose client went silent: no frame (a ping at least) for the timeout.

        The ASGI server's protocol-level pings catch a dead TCP peer; this catches the case they
        cannot, a proxy that keeps TCP open in front of a client that is gone. A timer rather
        than a task per socket: an idle socket then costs a TimerHandle, not a coroutine frame.
        """
        timeout = heartbeat_timeout_secs()
        idle = time.monotonic() - self.last_frame_at
        if idle < timeout:
            self._arm_watchdog(timeout - idle)
            return
        self.watchdog = None
        log.info("closing a silent socket of user %s after %.0f s", self.user.pk, idle)
        if not self._close_now(protocol.CLOSE_HEARTBEAT_TIMEOUT):  # silent may mean not reading
            asyncio.ensure_future(self.close(code=protocol.CLOSE_HEARTBEAT_TIMEOUT))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000 + 0.999))


def _members_that_fit(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first members whose encoded list fits what a joined reply leaves them."""
    budget = protocol.REPLY_ENVELOPE_MAX_BYTES - protocol.REPLY_ENVELOPE_FIXED_BYTES
    used, kept = 2, 0
    for member in members:
        used += protocol.encode_sized(member)[1] + 1
        if used > budget:
            break
        kept += 1
    return members[:kept]


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame
