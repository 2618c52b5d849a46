"""The chat consumer: one WebSocket per client, carrying every room the client has joined.

Channels runs one consumer instance per socket. This one is the socket's lifecycle only —
connect, disconnect, receive, send_message — and a table from command type to handler: the
commands are parley.commands, working on the socket's parley.session.Session, and what reaches
the socket from its rooms arrives through parley.delivery, which the hub (parley.realtime.hub)
calls. Everything leaves through the socket's bounded outbound queue (parley.realtime.outbound).

The consumer needs no channel layer, and opens none: a host project's CHANNEL_LAYERS, if it has
one for its own consumers, is left to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from redis.exceptions import RedisError

from parley import commands, limits, logs, metrics, opened_rooms, protocol, shared_limits
from parley.conf import parley_settings
from parley.payloads import user_payload
from parley.protocol import ProtocolError
from parley.realtime.frameless import consumer_app
from parley.realtime.hub import get_hub
from parley.realtime.outbound import RAW_SEND_KEY, Outbound
from parley.realtime.tasks import spawn
from parley.revocation import CredentialsRevoked
from parley.session import Session

log = logging.getLogger(__name__)

# The user's open sockets in this process. With REDIS_URL they are counted cluster-wide too
# (parley.shared_limits); this count still decides alone without it, or while Redis is away.
_sockets_per_user: dict[int, int] = {}


async def _take_slot(user_id: int, socket_id: str) -> bool:
    """Count a new socket of the user, or refuse it: PARLEY_MAX_SOCKETS_PER_USER open already,
    in this process or (with REDIS_URL) in the cluster."""
    limit = int(parley_settings.MAX_SOCKETS_PER_USER)
    if _sockets_per_user.get(user_id, 0) >= limit:
        return False
    if shared_limits.enabled():
        if await shared_limits.admit_socket(user_id, socket_id, limit) is False:
            return False
        if _sockets_per_user.get(user_id, 0) >= limit:  # another socket of the user, meanwhile
            shared_limits.release_socket(user_id, socket_id)
            return False
    _sockets_per_user[user_id] = _sockets_per_user.get(user_id, 0) + 1
    return True


def _give_slot(user_id: int, socket_id: str) -> None:
    left = _sockets_per_user.get(user_id, 1) - 1
    if left > 0:
        _sockets_per_user[user_id] = left
    else:
        _sockets_per_user.pop(user_id, None)
        opened_rooms.forget_user(user_id)  # a leave elsewhere from now on would reach no socket here
    if shared_limits.enabled():
        shared_limits.release_socket(user_id, socket_id)


def requested_version(scope: dict[str, Any]) -> int | None:
    """The protocol version the socket's URL asks for (`?protocol=2`; none: 1), or None for one
    this server does not speak (docs/protocol.md §10)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).get("protocol")
    if values is None:
        return 1
    if len(values) != 1 or values[0] not in _VERSIONS:  # once, and exactly "1" or "2"
        return None
    return _VERSIONS[values[0]]


_VERSIONS = {str(v): v for v in protocol.PROTOCOL_VERSIONS}


def heartbeat_timeout_secs() -> float:
    """Two missed heartbeats and a little slack."""
    return 2 * parley_settings.HEARTBEAT_INTERVAL_SECS + 5


class ChatConsumer(AsyncWebsocketConsumer):
    # No channel layer: nothing reaches a socket through one (rooms and revocations go through
    # parley.realtime.hub), so the socket gets no channel. Channels would otherwise run a second
    # receive task per socket and keep a per-socket queue (idle memory, docs/benchmarks.md).
    channel_layer_alias = None

    # Command type (parley.protocol.parse_command) → its handler (parley.commands).
    handlers: ClassVar[dict[type, commands.Handler]] = {
        protocol.Join: commands.join,
        protocol.Leave: commands.leave,
        protocol.Send: commands.send,
        protocol.History: commands.history,
        protocol.Typing: commands.typing,
        protocol.Ping: commands.ping,
        protocol.Edit: commands.edit,
        protocol.Delete: commands.delete,
        protocol.React: commands.react,
        protocol.Read: commands.read,
        protocol.Rooms: commands.rooms,
    }

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Channels' as_asgi — one consumer instance per connection — without a coroutine frame
        of its own per open socket (parley.realtime.frameless)."""
        return consumer_app(cls, **initkwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel_name = f"hub.{uuid.uuid4().hex}"  # a unique id of the socket (presence)
        self.user: Any = None
        self.session: Session | None = None  # from the accepted handshake on
        self.last_frame_at = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        self.outbound: Outbound | None = None
        self.counted = False  # in _sockets_per_user
        self.watched = False  # watched for revocation (parley.realtime.hub)
        self.frame_bucket = limits.TokenBucket(parley_settings.FRAMES_PER_SEC, parley_settings.FRAMES_BURST)
        self.strikes = limits.Strikes()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Called by the ASGI server (via the routing) for the socket's whole life: dispatches
        each client frame in turn until the consumer stops.

        Channels' own loop races the client's `receive` against a channel layer's, one task per
        source. The client is this consumer's only source, so its frames are awaited right here:
        same order, same handlers, but no extra task, `asyncio.wait` futures and task set per
        socket (~1.5 KB of every idle socket, docs/benchmarks.md).
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass  # the socket closed: exit cleanly, as Channels does

    # --- socket lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Called when a client asks to open the socket (the HTTP upgrade).

        Refusing here, before accept(), makes the ASGI server answer the upgrade with 403.
        """
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        version = requested_version(self.scope)
        if version is None:
            await self._refuse_version()
            return
        self.user = user
        # This socket's task logs with its ids from here on (parley.logs).
        logs.socket_id.set(self.channel_name)
        logs.user_id.set(user.pk)
        await self.accept()
        # Chat frames skip the middleware's send wrappers (parley.realtime.outbound.RAW_SEND_KEY).
        raw_send = self.scope.get(RAW_SEND_KEY, self.base_send)
        self.outbound = Outbound(raw_send, self._close_socket, self._on_outbound_overflow)
        session = self.session = Session(user=user, token_id=self.scope.get("token_id"),
                                         socket_id=self.channel_name, send_message=self.send_message,
                                         close=self._close_after_flush, protocol_version=version)
        if not await _take_slot(user.pk, self.channel_name):
            err = ProtocolError(protocol.TOO_MANY_SOCKETS, "too many open sockets for this user; close one")
            session.send_frame(err.to_frame(None))
            self.outbound.close_after_flush(protocol.CLOSE_TOO_MANY_SOCKETS)
            metrics.refused("sockets_per_user")
            return
        self.counted = True
        metrics.OPEN_SOCKETS.inc()
        self.watched = True  # watched for revocation (set before the awaits below)
        try:
            for credential in session.credentials():
                await get_hub().watch(credential, session.delivery)
        except (RedisError, OSError):
            # Degrade, don't refuse: the credentials are valid now; revoking them still blocks
            # every new handshake, only this socket would miss the live close.
            log.warning("could not register socket for revocation (Redis unavailable)")
        self._arm_watchdog(heartbeat_timeout_secs())
        session.send_frame({
            "type": "hello",
            "protocol": version,
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
                **({"edits_per_sec": parley_settings.EDITS_PER_SEC, "edits_burst": parley_settings.EDITS_BURST,
                    "max_reactions_per_message": parley_settings.MAX_REACTIONS_PER_MESSAGE,
                    "max_reactions_per_user": parley_settings.MAX_REACTIONS_PER_USER,
                    "reads_per_sec": parley_settings.READS_PER_SEC, "reads_burst": parley_settings.READS_BURST,
                    "unread_count_max": parley_settings.UNREAD_COUNT_MAX,
                    "upload_max_bytes": parley_settings.UPLOAD_MAX_BYTES,
                    "max_attachments_per_message": parley_settings.MAX_ATTACHMENTS_PER_MESSAGE}
                   if version >= 2 else {}),
            },
        })
        if version >= 2:
            await self._send_room_list(session)

    async def _send_room_list(self, session: Session) -> None:
        """Version 2: the user's room list right after `hello` (docs/protocol.md §11). Not
        charged to the read budget. A failed read leaves the socket open without it: the
        client asks again with `rooms`."""
        try:
            await commands.send_rooms(session, None)
        except CredentialsRevoked as lost:
            self._close_revoked(lost.credentials)
        except Exception:
            log.exception("could not read the room list of user %s", session.user.pk)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, for any reason: leaves every room, updating presence."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.outbound is not None:
            self.outbound.stop()
        self._release_slot()
        session = self.session
        if session is None:
            return
        if self.watched:
            self.watched = False
            hub = get_hub()
            for credential in session.credentials():
                hub.unwatch(credential, session.delivery)
        await session.leave_all()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for each ASGI event of the socket (connect, each frame, disconnect): runs its
        handler.

        Channels' own dispatch (4.2+) first runs close_old_connections in the thread pool: a
        thread hop per frame, ~30% of the stock fan-out path's profile. Every database call of
        this consumer runs on parley.realtime.dbthread, which closes stale connections itself
        before and after each call, so the extra hop protects nothing here.
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
        self.last_frame_at = now = time.monotonic()
        session = self.session
        if session is None or self.outbound is None or self.outbound.closed:
            return  # closing (too many sockets, abuse, slow reader): ignore what is in flight
        wait = self.frame_bucket.take()
        if wait:
            self._refuse_frame(text_data, wait)
            return
        session.keep_presence_alive(now)
        try:
            frame = protocol.decode_frame(text_data, bytes_data)
            ref = protocol.frame_ref(frame)
            command = protocol.parse_command(frame, version=session.protocol_version)
            await self.handlers[type(command)](session, command, ref)
        except ProtocolError as err:
            session.send_frame(err.to_frame(ref))
            if err.code == protocol.RATE_LIMITED and self.strikes.add():
                self._close_for_flooding()
        except CredentialsRevoked as lost:
            self._close_revoked(lost.credentials)
        except Exception:
            log.exception("unexpected error handling a frame from user %s", session.user.pk)
            internal = ProtocolError(protocol.INTERNAL_ERROR, "unexpected server error")
            session.send_frame(internal.to_frame(ref))

    def send_message(self, frame: str, size: int | None = None) -> None:
        """Queue one encoded frame — a reply, or a room event encoded once for everyone by
        parley.fanout — on this socket's bounded outbound queue, which writes it at once unless
        the client is behind. Room messages come here in seq order only (parley.delivery)."""
        if self.outbound is not None:
            self.outbound.put(frame, size)

    async def websocket_shutdown(self, message: dict[str, Any]) -> None:
        """Called when the server shuts down (SIGTERM; parley.edge queues the event behind every
        frame the socket had received, and reads no more): those frames have all been handled,
        so close with 1001 once their replies are written."""
        if self.outbound is not None:
            self.outbound.close_after_flush(protocol.CLOSE_GOING_AWAY)
        else:
            await self.close(code=protocol.CLOSE_GOING_AWAY)

    # --- refusing and closing ---------------------------------------------------------------

    async def _refuse_version(self) -> None:
        """The URL asked for a protocol version this server does not speak: an HTTP 400 with a
        JSON error where the ASGI server can send one (uvicorn can), else the plain refusal (403)."""
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = protocol.encode({"error": {"code": protocol.UNSUPPORTED_PROTOCOL,
                                              "message": f"protocol versions spoken: {list(protocol.PROTOCOL_VERSIONS)}"}})
            await self.base_send({"type": "websocket.http.response.start", "status": 400,
                                  "headers": [(b"content-type", b"application/json")]})
            await self.base_send({"type": "websocket.http.response.body", "body": body.encode()})
            return
        await self.close()

    def _refuse_frame(self, text_data: str | None, wait: float) -> None:
        """A frame over the socket's frame budget: dropped, answered `rate_limited`, one strike.

        Every refusal is answered (with the frame's ref when it has a valid one), so a client
        that waits on a reply learns to retry instead of hanging; the replies stay bounded
        because the strikes are: PARLEY_RATE_LIMIT_STRIKES refusals within 10 s close the socket
        (4429). Only for that ref is a refused frame read at all.
        """
        metrics.refused("frames")
        if self.strikes.add():
            self._close_for_flooding()
            return
        err = ProtocolError(protocol.RATE_LIMITED, "too many frames; slow down",
                            retry_after_ms=commands.ms(wait))
        self.send_message(*protocol.encode_sized(err.to_frame(protocol.peek_ref(text_data))))

    def _close_for_flooding(self) -> None:
        log.warning("closing socket of user %s: kept flooding after rate limiting", self.user.pk)
        self._close_after_flush(protocol.CLOSE_RATE_LIMIT)

    def _close_after_flush(self, code: int) -> None:
        if self.outbound is not None:
            self.outbound.close_after_flush(code)

    def _close_revoked(self, lost: frozenset[tuple[str, int]]) -> None:
        """A command found the socket's user or API token no longer valid (and did nothing):
        close this socket with 4401, and every other socket of this process resting on the
        same credentials, as a revocation announced by parley.realtime.hub would."""
        log.info("closing a socket of user %s: its credentials are no longer valid", self.user.pk)
        self._close_after_flush(protocol.CLOSE_CREDENTIALS_REVOKED)
        hub = get_hub()
        for credential in lost:
            hub.close_local(credential)

    def _release_slot(self) -> None:
        """Give the user's socket slot (PARLEY_MAX_SOCKETS_PER_USER) back: once, at the close."""
        if self.counted:
            self.counted = False
            metrics.OPEN_SOCKETS.dec()
            _give_slot(self.user.pk, self.channel_name)

    def _close_now(self, code: int) -> bool:
        """Close without waiting on the client: the close frame goes out at once, the user's
        socket slot is free at once, and the connection is reset if still open
        PARLEY_CLOSE_GRACE_SECS later (parley.realtime.outbound.Outbound.close_now). False if the
        server cannot do that (not uvicorn's websockets-sansio): the caller closes through ASGI."""
        self._release_slot()
        return self.outbound is not None and self.outbound.close_now(code)

    async def _close_socket(self, code: int) -> None:
        """The outbound queue's close, once what was queued before it is written (or the grace
        for that is over)."""
        if not self._close_now(code):  # (which wrote this pass's frames first)
            await self.close(code=code)

    def _on_outbound_overflow(self) -> None:
        # Found by another socket's broadcast, in that socket's task: name this one.
        log.warning("closing socket of user %s: it stopped reading (outbound queue over budget)",
                    self.user.pk, extra={"socket_id": self.channel_name, "user_id": self.user.pk})
        metrics.SLOW_READER_CLOSES.inc()
        if not self._close_now(protocol.CLOSE_SLOW_READER):
            spawn(self.close(code=protocol.CLOSE_SLOW_READER))

    # --- the heartbeat watchdog -------------------------------------------------------------

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
            spawn(self.close(code=protocol.CLOSE_HEARTBEAT_TIMEOUT))
