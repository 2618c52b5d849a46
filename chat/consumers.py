"""The chat consumer: one WebSocket per client, carrying every room the client has joined.

Channels runs one consumer instance per socket and dispatches its inputs — client frames and
channel-layer events — one at a time, in arrival order. The ordering logic below relies on that:
nothing here runs concurrently with anything else of the same socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from chat import fanout, limits, protocol, selectors, services
from chat.models import Message, Room
from chat.outbound import Outbound
from chat.payloads import message_payload, room_payload, user_payload
from chat.presence import Member, get_presence
from chat.protocol import ProtocolError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Subscription:
    """One joined room on this socket."""

    room_id: int
    slug: str
    high_seq: int = 0  # the highest seq delivered to this socket (history or live)
    pending: dict[int, str] = field(default_factory=dict)  # frames that arrived ahead of a gap
    gap_fill_scheduled: bool = False
    presence_touched: float = 0.0
    typing_at: float = 0.0  # when this socket last relayed a typing event for the room


# --- database work, one thread hop per command ----------------------------------------------

@database_sync_to_async
def _load_room(user: Any, slug: str) -> Room | None:
    return selectors.room_get_visible(user=user, slug=slug)


@database_sync_to_async
def _join_snapshot(room: Room, cmd: protocol.Join) -> tuple[list[Message], bool, bool | None, int, int]:
    """(messages, has_more, recovered, high_seq, last_seq) for a join, read after group_add."""
    last_seq = Room.objects.values_list("last_seq", flat=True).get(pk=room.pk)
    recovered: bool | None = None
    if cmd.after_seq is not None:
        gap = last_seq - cmd.after_seq
        same_log = cmd.epoch is None or cmd.epoch == room.epoch
        if same_log and 0 <= gap <= settings.PARLEY_RESUME_MAX_GAP:
            messages = selectors.message_range(room_id=room.pk, after_seq=cmd.after_seq, limit=gap)
            high = max([cmd.after_seq] + [m.seq for m in messages])
            return messages, cmd.after_seq > 0, True, high, max(last_seq, high)
        recovered = False
    messages, has_more = selectors.message_page(room_id=room.pk, before=None, limit=cmd.limit)
    # Not last_seq: a message committed after the page was read is still on its way to us as a
    # live event, and must not be dropped as "already seen".
    high = messages[-1].seq if messages else 0
    return messages, has_more, recovered, high, max(last_seq, high)


@database_sync_to_async
def _send(user: Any, room_id: int, cmd: protocol.Send) -> tuple[Message, bool] | None:
    if not selectors.room_user_can_access(user=user, room_id=room_id):
        return None
    return services.message_create(room_id=room_id, author=user, text=cmd.text, client_id=cmd.client_id)


@database_sync_to_async
def _history(user: Any, room_id: int, before: int | None, limit: int) -> tuple[list[Message], bool] | None:
    if not selectors.room_user_can_access(user=user, room_id=room_id):
        return None
    return selectors.message_page(room_id=room_id, before=before, limit=limit)


@database_sync_to_async
def _can_access(user: Any, room_id: int) -> bool:
    return selectors.room_user_can_access(user=user, room_id=room_id)


@database_sync_to_async
def _gap(room_id: int, after_seq: int, before: int) -> list[Message]:
    return selectors.message_range(room_id=room_id, after_seq=after_seq, before=before, limit=before - after_seq)


# Per-process state shared by this process's sockets (see chat/limits.py on "per process").
_sockets_per_user: dict[int, int] = {}
_user_message_buckets = limits.BucketMap(limits.MESSAGES_PER_SEC, limits.MESSAGES_BURST)


def heartbeat_timeout_secs() -> float:
    """Two missed heartbeats and a little slack."""
    return 2 * settings.PARLEY_HEARTBEAT_INTERVAL_SECS + 5


def _room_not_found(slug: str) -> ProtocolError:
    return ProtocolError(protocol.ROOM_NOT_FOUND, f"no room {slug!r} that you may see", room=slug)


class ChatConsumer(AsyncWebsocketConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self.subs_by_id: dict[int, Subscription] = {}
        self.subs_by_slug: dict[str, Subscription] = {}
        self.last_frame_at = time.monotonic()
        self.watchdog: asyncio.Task[None] | None = None
        self.outbound: Outbound | None = None
        self.counted = False  # in _sockets_per_user
        self.frame_bucket = limits.TokenBucket(limits.FRAMES_PER_SEC.value, limits.FRAMES_BURST.value)
        self.strikes = limits.Strikes()

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
        self.member = Member(user.pk, user.get_username())
        await self.accept()
        self.outbound = Outbound(self._write, self._close_socket, self._on_outbound_overflow)
        if _sockets_per_user.get(user.pk, 0) >= limits.MAX_SOCKETS_PER_USER.value:
            err = ProtocolError(protocol.TOO_MANY_SOCKETS, "too many open sockets for this user; close one")
            await self.send_frame(err.to_frame(None))
            self.outbound.close_after_flush(protocol.CLOSE_TOO_MANY_SOCKETS)
            return
        _sockets_per_user[user.pk] = _sockets_per_user.get(user.pk, 0) + 1
        self.counted = True
        token_id = self.scope.get("token_id")
        if token_id is not None:
            await self.channel_layer.group_add(fanout.token_group(token_id), self.channel_name)
        self.watchdog = asyncio.ensure_future(self._watch_heartbeat())
        await self.send_frame({
            "type": "hello",
            "protocol": protocol.PROTOCOL_VERSION,
            "user": user_payload(user),
            "heartbeat_secs": settings.PARLEY_HEARTBEAT_INTERVAL_SECS,
            "limits": {
                "max_text_chars": settings.PARLEY_MAX_TEXT_CHARS,
                "history_page_max": settings.PARLEY_HISTORY_PAGE_MAX,
                "max_frame_bytes": settings.PARLEY_MAX_FRAME_BYTES,
                "messages_per_sec": limits.MESSAGES_PER_SEC.value,
                "frames_per_sec": limits.FRAMES_PER_SEC.value,
                "max_rooms": limits.MAX_ROOMS_PER_SOCKET.value,
            },
        })

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, for any reason: leaves every room, updating presence."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.outbound is not None:
            self.outbound.stop()
        if self.counted:
            self.counted = False
            left = _sockets_per_user.get(self.user.pk, 1) - 1
            if left > 0:
                _sockets_per_user[self.user.pk] = left
            else:
                _sockets_per_user.pop(self.user.pk, None)
        token_id = self.scope.get("token_id")
        if token_id is not None and self.user is not None:
            await self.channel_layer.group_discard(fanout.token_group(token_id), self.channel_name)
        for sub in list(self.subs_by_id.values()):
            await self._unsubscribe(sub)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every frame the client sends; answers with a reply or one error frame."""
        ref = None
        self.last_frame_at = time.monotonic()
        if self.outbound is None or self.outbound.closed:
            return  # closing (too many sockets, abuse, slow reader): ignore what is in flight
        try:
            frame = protocol.decode_frame(text_data, bytes_data)
            ref = protocol.frame_ref(frame)
            wait = self.frame_bucket.take()
            if wait:
                raise ProtocolError(protocol.RATE_LIMITED, "too many frames; slow down",
                                    retry_after_ms=_ms(wait))
            command = protocol.parse_command(frame)
            await self._handlers[type(command)](self, command, ref)
        except ProtocolError as err:
            await self.send_frame(err.to_frame(ref))
            if err.code == protocol.RATE_LIMITED and self.strikes.add():
                log.warning("closing socket of user %s: kept flooding after rate limiting", self.user.pk)
                self.outbound.close_after_flush(protocol.CLOSE_RATE_LIMIT)
        except Exception:
            log.exception("unexpected error handling a frame from user %s", self.user.pk)
            err = ProtocolError(protocol.INTERNAL_ERROR, "unexpected server error")
            await self.send_frame(err.to_frame(ref))

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue one reply or event for this socket (chat.outbound bounds the queue)."""
        if self.outbound is not None:
            self.outbound.put(protocol.encode(frame))

    # --- commands ---------------------------------------------------------------------------

    def _joined(self, slug: str) -> Subscription:
        sub = self.subs_by_slug.get(slug)
        if sub is None:
            raise ProtocolError(protocol.NOT_JOINED, f"join {slug!r} first", room=slug)
        return sub

    async def do_join(self, cmd: protocol.Join, ref: str | None) -> None:
        room = await _load_room(self.user, cmd.room)
        if room is None:
            raise _room_not_found(cmd.room)
        sub = self.subs_by_id.get(room.pk)
        first_join = sub is None
        if sub is None and len(self.subs_by_id) >= limits.MAX_ROOMS_PER_SOCKET.value:
            raise ProtocolError(protocol.TOO_MANY_ROOMS,
                                f"a socket may join at most {int(limits.MAX_ROOMS_PER_SOCKET.value)} rooms",
                                room=cmd.room)
        if sub is None:
            # Subscribe before reading the log: whatever commits after the read is then certain to
            # arrive as an event, and whatever the read saw is dropped by seq when it arrives.
            await self.channel_layer.group_add(fanout.room_group(room.pk), self.channel_name)
            sub = Subscription(room_id=room.pk, slug=room.slug)
            self.subs_by_id[room.pk] = self.subs_by_slug[room.slug] = sub
        messages, has_more, recovered, high, last_seq = await _join_snapshot(room, cmd)
        sub.high_seq = high
        sub.pending = {s: f for s, f in sub.pending.items() if s > high}
        presence = get_presence()
        if first_join:
            sub.presence_touched = time.monotonic()
            if await presence.add(room.pk, self.channel_name, self.member):
                members = await presence.members(room.pk)
                await fanout.broadcast_presence(room_id=room.pk, room_slug=room.slug, event="join",
                                                user=self.user, members=len(members), origin=self.channel_name)
        members = await presence.members(room.pk)
        reply = {
            "type": "joined",
            "room": room_payload(room, last_seq=last_seq),
            "messages": [message_payload(m, room_slug=room.slug) for m in messages],
            "has_more": has_more,
            "members": [{"id": m.id, "username": m.username} for m in members],
            "recovered": recovered,
        }
        await self.send_frame(_with_ref(reply, ref))
        await self._drain(sub)

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
            result = await _send(self.user, sub.room_id, cmd)
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
            "id": message.pk, "ts": message_payload(message, room_slug=sub.slug)["ts"], "duplicate": duplicate,
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
        result = await _history(self.user, sub.room_id, cmd.before, cmd.limit)
        if result is None:
            await self._unsubscribe(sub)
            raise _room_not_found(cmd.room)
        messages, has_more = result
        await self.send_frame(_with_ref({
            "type": "history", "room": sub.slug, "has_more": has_more,
            "messages": [message_payload(m, room_slug=sub.slug) for m in messages],
        }, ref))

    async def do_typing(self, cmd: protocol.Typing, ref: str | None) -> None:
        sub = self._joined(cmd.room)
        now = time.monotonic()
        if (now - sub.typing_at) * 1000 < limits.TYPING_MIN_INTERVAL_MS.value:
            return  # relayed one a moment ago; peers show "typing" for seconds anyway
        sub.typing_at = now
        if not await _can_access(self.user, sub.room_id):
            await self._unsubscribe(sub)
            raise _room_not_found(cmd.room)
        await fanout.broadcast_typing(room_id=sub.room_id, room_slug=sub.slug, user=self.user)

    async def do_ping(self, cmd: protocol.Ping, ref: str | None) -> None:
        now = time.monotonic()
        presence = get_presence()
        for sub in self.subs_by_id.values():
            # Heartbeats keep this socket's presence entries from expiring (chat/presence.py).
            if now - sub.presence_touched >= settings.PARLEY_HEARTBEAT_INTERVAL_SECS / 2:
                sub.presence_touched = now
                await presence.touch(sub.room_id, self.channel_name, self.member)
        await self.send_frame(_with_ref({"type": "pong"}, ref))

    _handlers = {
        protocol.Join: do_join,
        protocol.Leave: do_leave,
        protocol.Send: do_send,
        protocol.History: do_history,
        protocol.Typing: do_typing,
        protocol.Ping: do_ping,
    }

    # --- channel-layer events (type "chat.x" → method chat_x) ------------------------------

    async def chat_message(self, event: dict[str, Any]) -> None:
        """Called for each message committed in a room this socket joined (see chat.fanout).

        Delivers in seq order, each once: older-or-equal seqs were already sent (in `joined` or
        live); a seq ahead of the next expected one waits in `pending` until the gap is filled.
        """
        sub = self.subs_by_id.get(event["room_id"])
        if sub is None:
            return
        seq = event["seq"]
        if seq <= sub.high_seq:
            return
        if seq == sub.high_seq + 1:
            await self.send_message(event["frame"], event.get("size"))
            sub.high_seq = seq
            await self._drain(sub)
        else:
            sub.pending[seq] = event["frame"]
            self._schedule_gap_fill(sub)

    async def send_message(self, frame: str, size: int | None = None) -> None:
        """Deliver one chat message, already encoded once for everyone by chat.fanout, to this socket.

        It goes onto the socket's bounded outbound queue; the writer task puts it on the wire.
        """
        if self.outbound is not None:
            self.outbound.put(frame, size)

    async def chat_presence(self, event: dict[str, Any]) -> None:
        """Called when a user's first socket joins, or last socket leaves, a room this socket is in.

        The socket that caused it is skipped: its `joined` reply already lists the members.
        """
        if event["room_id"] in self.subs_by_id and event["origin"] != self.channel_name and self.outbound is not None:
            self.outbound.put(event["frame"])

    async def chat_typing(self, event: dict[str, Any]) -> None:
        """Called when someone in a joined room is typing; the typist's own sockets skip it."""
        if event["room_id"] in self.subs_by_id and event["user_id"] != self.user.pk and self.outbound is not None:
            self.outbound.put(event["frame"])

    async def chat_revoke(self, event: dict[str, Any]) -> None:
        """Called when a user lost access to a room (removed from a private room): leave it now."""
        sub = self.subs_by_id.get(event["room_id"])
        if sub is not None and event["user_id"] == self.user.pk:
            await self._unsubscribe(sub)
            await self.send_frame({"type": "left", "room": sub.slug, "reason": "removed"})

    async def auth_revoked(self, event: dict[str, Any]) -> None:
        """Called when the API token this socket authenticated with is revoked: close with 4401."""
        log.info("closing a socket of user %s: its token was revoked", self.user.pk)
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_CREDENTIALS_REVOKED)

    async def chat_gapfill(self, event: dict[str, Any]) -> None:
        """Called PARLEY_GAP_FILL_DELAY_MS after a seq arrived ahead of a gap that is still open.

        A broadcast can be overtaken by a later one (two senders on two workers) or dropped by the
        layer (a full channel); the database has every committed message, so read the gap from it.
        """
        sub = self.subs_by_id.get(event["room_id"])
        if sub is None:
            return
        sub.gap_fill_scheduled = False
        if not sub.pending:
            return
        first_pending = min(sub.pending)
        if first_pending > sub.high_seq + 1:
            missing = await _gap(sub.room_id, sub.high_seq, first_pending)
            for message in missing:
                if message.seq == sub.high_seq + 1:
                    frame = {"type": "message", "room": sub.slug,
                             "message": message_payload(message, room_slug=sub.slug)}
                    await self.send_message(protocol.encode(frame))
                    sub.high_seq = message.seq
            if sub.high_seq + 1 < first_pending:
                log.error("room %s: seqs %s..%s missing from the database; skipping them",
                          sub.slug, sub.high_seq + 1, first_pending - 1)
                sub.high_seq = first_pending - 1
        await self._drain(sub)

    # --- helpers ----------------------------------------------------------------------------

    async def _write(self, text: str) -> None:
        """The outbound writer's only way to the wire."""
        await self.send(text_data=text)

    async def _close_socket(self, code: int) -> None:
        await self.close(code=code)

    def _on_outbound_overflow(self) -> None:
        log.warning("closing socket of user %s: it stopped reading (outbound queue over budget)", self.user.pk)
        asyncio.ensure_future(self.close(code=protocol.CLOSE_SLOW_READER))

    async def _watch_heartbeat(self) -> None:
        """Close a socket whose client went silent: no frame (a ping at least) for the timeout.

        The ASGI server's protocol-level pings catch a dead TCP peer; this catches the case they
        cannot, a proxy that keeps TCP open in front of a client that is gone.
        """
        timeout = heartbeat_timeout_secs()
        while True:
            idle = time.monotonic() - self.last_frame_at
            if idle >= timeout:
                log.info("closing a silent socket of user %s after %.0f s", self.user.pk, idle)
                await self.close(code=protocol.CLOSE_HEARTBEAT_TIMEOUT)
                return
            await asyncio.sleep(timeout - idle)

    async def _drain(self, sub: Subscription) -> None:
        """Send pending frames that have become next in line."""
        while sub.pending:
            frame = sub.pending.pop(sub.high_seq + 1, None)
            if frame is None:
                sub.pending = {s: f for s, f in sub.pending.items() if s > sub.high_seq}
                if sub.pending:
                    self._schedule_gap_fill(sub)
                return
            await self.send_message(frame)
            sub.high_seq += 1

    def _schedule_gap_fill(self, sub: Subscription) -> None:
        if sub.gap_fill_scheduled:
            return
        sub.gap_fill_scheduled = True
        event = {"type": "chat.gapfill", "room_id": sub.room_id}

        def fire() -> None:
            # Through the layer, so the fill is dispatched in turn like every other event.
            asyncio.ensure_future(self.channel_layer.send(self.channel_name, event))

        asyncio.get_running_loop().call_later(settings.PARLEY_GAP_FILL_DELAY_MS / 1000, fire)

    async def _unsubscribe(self, sub: Subscription) -> None:
        self.subs_by_id.pop(sub.room_id, None)
        self.subs_by_slug.pop(sub.slug, None)
        await self.channel_layer.group_discard(fanout.room_group(sub.room_id), self.channel_name)
        presence = get_presence()
        if await presence.remove(sub.room_id, self.channel_name, self.user.pk):
            members = await presence.members(sub.room_id)
            await fanout.broadcast_presence(room_id=sub.room_id, room_slug=sub.slug, event="leave",
                                            user=self.user, members=len(members), origin=self.channel_name)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000 + 0.999))


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame
