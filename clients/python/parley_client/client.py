"""ParleyClient: one WebSocket that survives reconnects without losing or doubling messages.

The client is the four parts below, composed; this class holds their shared state (the event
queue, the stats) and routes each incoming frame to the part it concerns:

- parley_client.transport: connect, reconnect with backoff, heartbeat, the paced writer;
- parley_client.requests: `ref` → future, and the reply timeout;
- parley_client.sync: joins, resume with `after_seq`/`epoch`, dedup and gap filling;
- parley_client.sending: the outbox onto the wire, paced by the server's message rate.

Everything runs on the caller's event loop; docs/client-python.md describes the guarantees.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from parley_client.attention import ATTENTION_TYPES, Attention
from parley_client.backoff import Backoff
from parley_client.errors import ClientClosed, ParleyError, SendFailed
from parley_client.requests import Requests
from parley_client.rooms import RoomState
from parley_client.sending import Sender
from parley_client.stats import ClientStats
from parley_client.sync import ENTRY_TYPES, RoomSync
from parley_client.transport import Connection, Transport


class _Setting:
    """A constructor argument, readable and settable on the client, kept by the part that uses it
    (e.g. `client.url = other` makes the next reconnect go there)."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, client: object, owner: type | None = None) -> Any:
        if client is None:
            return self
        return getattr(getattr(client, self.part), self.name)

    def __set__(self, client: object, value: Any) -> None:
        setattr(getattr(client, self.part), self.name, value)


class ParleyClient:
    """An auto-reconnecting Parley client. Use as `async with ParleyClient(url, token=...) as c:`."""

    url = _Setting("_transport", "url")
    headers = _Setting("_transport", "headers")
    backoff = _Setting("_transport", "backoff")
    heartbeat_secs = _Setting("_transport", "heartbeat_secs")
    dead_after_secs = _Setting("_transport", "dead_after_secs")
    connect_timeout = _Setting("_transport", "connect_timeout")
    request_timeout = _Setting("_requests", "timeout")
    pace_sends = _Setting("_sender", "pace")
    gap_fill_delay = _Setting("_sync", "gap_fill_delay")
    catchup_max = _Setting("_sync", "catchup_max")
    emit_backlog = _Setting("_sync", "emit_backlog")

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        backoff: Backoff | None = None,
        heartbeat_secs: float | None = None,
        dead_after_secs: float | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 15.0,
        gap_fill_delay: float = 0.3,
        catchup_max: int = 5000,
        emit_backlog: bool = False,
        pace_sends: bool = True,
        api_url: str | None = None,
    ) -> None:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if origin:
            headers["Origin"] = origin
        # The HTTP API (uploads), under the socket's prefix unless given: .../ws/chat/ → .../api/.
        self.api_url = api_url
        self._http_headers = {k: v for k, v in headers.items() if k in ("Authorization", "Origin")}
        self.stats = ClientStats()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._transport = Transport(
            url, headers=headers, backoff=backoff or Backoff(), listener=_Router(self), stats=self.stats,
            heartbeat_secs=heartbeat_secs, dead_after_secs=dead_after_secs, connect_timeout=connect_timeout,
        )
        self._requests = Requests(timeout=request_timeout)
        self._sender = Sender(stats=self.stats, pace=pace_sends, new_ref=self._requests.new_ref,
                              may_send=self._may_send, current=self._transport.current,
                              on_failed=lambda failure: self._emit(failure.event()))
        self._sync = RoomSync(
            requests=self._requests, sender=self._sender, stats=self.stats, emit=self._emit,
            ready=self._transport.ready, current=self._transport.current,
            check_alive=self._transport.check_alive, gap_fill_delay=gap_fill_delay,
            catchup_max=catchup_max, emit_backlog=emit_backlog,
        )
        self._attention = Attention(requests=self._requests, ready=self._transport.ready, emit=self._emit)
        self._transport.source = self._sender

    def _may_send(self, conn: Connection, room: str) -> bool:
        return self._sync.may_send(conn, room)

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ParleyClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting (and reconnecting); with wait, return once the first hello arrived."""
        self._transport.start()
        if wait:
            await self.wait_connected()

    async def close(self) -> None:
        """Close the socket and stop; unacked sends fail with ClientClosed."""
        if await self._transport.close():
            self._finish(ClientClosed("client closed"))

    async def wait_connected(self) -> None:
        await self._transport.ready()

    def abort_connection(self) -> None:
        """Drop the current TCP connection without a close handshake (for tests and chaos drills)."""
        conn = self._transport.current()
        if conn is not None:
            conn.abort()

    # --- state ------------------------------------------------------------------------------

    @property
    def hello(self) -> dict[str, Any] | None:
        """The latest connection's `hello` frame."""
        return self._transport.hello

    @property
    def connected(self) -> bool:
        return self._transport.current() is not None

    @property
    def user(self) -> dict[str, Any] | None:
        hello = self._transport.hello
        return hello["user"] if hello else None

    @property
    def pending_sends(self) -> int:
        return len(self._sender.outbox)

    @property
    def failed_sends(self) -> list[SendFailed]:
        """Sends that failed for good (oldest first), each with its text, until retry_failed()
        or discard_failed(): the client never drops a message without saying so."""
        return list(self._sender.outbox.failed.values())

    async def retry_failed(self, client_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Send a failed message again, with its client_id (stored once, whatever happened
        before); returns its ack, or raises SendFailed again."""
        failure = self._sender.outbox.failed.get(client_id)
        if failure is None:
            raise KeyError(client_id)
        self._transport.check_alive()
        if self._sync.rooms.get(failure.room) is None:
            raise ParleyError("not_joined", f"join {failure.room!r} first")
        self._sender.outbox.discard_failed(client_id)
        return await self._sender.send(failure.room, failure.text, client_id, timeout, failure.reply_to,
                                       failure.attachments)

    def discard_failed(self, client_id: str) -> SendFailed | None:
        """Forget a failed send (the application has shown or saved its text)."""
        return self._sender.outbox.discard_failed(client_id)

    def room(self, slug: str) -> RoomState | None:
        return self._sync.rooms.get(slug)

    @property
    def room_states(self) -> dict[str, dict[str, Any]]:
        """The user's room list by slug (protocol §11): each room's room-state object
        (`last_read_seq`, `unread`, `mentions`, `notify`, `muted`), as the server sent it after
        the latest `hello` and as `read`/`room_state` frames changed it since. Empty until the
        first list arrives (`await client.wait_room_states()`)."""
        return self._attention.states

    async def wait_room_states(self) -> dict[str, dict[str, Any]]:
        await self._attention.listed.wait()
        return self._attention.states

    async def read(self, room: str, seq: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Mark `room` read up to `seq` (no join needed); returns the `read` reply (`seq` is
        where the marker is: it never moves back). Retried across reconnects until answered."""
        self._transport.check_alive()
        return await asyncio.wait_for(self._attention.request({"type": "read", "room": room, "seq": seq}), timeout)

    async def rooms(self, *, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Ask for the room list again; returns room_states."""
        self._transport.check_alive()
        await asyncio.wait_for(self._attention.request({"type": "rooms"}), timeout)
        return self._attention.states

    # --- the application's calls ------------------------------------------------------------

    async def join(self, room: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Join (or confirm) a room; the room is rejoined with resume after every reconnect.

        Returns the server's `joined` frame. With emit_backlog=True the first page is also
        delivered through events(); otherwise events() starts after it.
        """
        return await self._sync.join(room, timeout)

    async def leave(self, room: str) -> None:
        await self._sync.leave(room)

    async def upload(self, room: str, content: bytes, name: str, *, content_type: str | None = None,
                     timeout: float = 60.0) -> dict[str, Any]:
        """Upload a file for a message in `room` (protocol §14, over HTTP with the token); returns
        the upload object, whose `id` goes in send(..., attachments=[id]). ParleyError with the
        server's code if refused (file_too_large, unsupported_file_type, rate_limited, …)."""
        from parley_client.uploads import api_base, upload

        return await upload(api_url=self.api_url or api_base(self.url), headers=self._http_headers, room=room,
                            content=content, name=name, content_type=content_type, timeout=timeout)

    async def send(self, room: str, text: str, *, client_id: str | None = None,
                   reply_to: int | None = None, attachments: list[int] | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """Send a message (a reply to the message with seq `reply_to`, if given; carrying the
        uploads `attachments` names by id, each from upload()); returns its `ack` once stored.

        Retried with the same client_id across reconnects until acked, so the message is stored
        once. On timeout the send is abandoned and TimeoutError raised: the message may or may
        not be stored; sending again with the same client_id settles it.
        """
        self._transport.check_alive()
        if self._sync.rooms.get(room) is None:
            raise ParleyError("not_joined", f"join {room!r} first")
        return await self._sender.send(room, text, client_id, timeout, reply_to, tuple(attachments or ()))

    # Conversation requests (protocol §10). Each is retried across reconnects until answered:
    # repeating one changes nothing (the server answers "seq": null), so it is never doubled.

    async def edit(self, room: str, seq: int, text: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Replace the text of your message `seq`; returns the `edited` reply."""
        return await self._conversation(room, {"type": "edit", "room": room, "seq": seq, "text": text}, timeout)

    async def delete(self, room: str, seq: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Delete message `seq` (yours; anyone's as the room's owner or an admin); `deleted`."""
        return await self._conversation(room, {"type": "delete", "room": room, "seq": seq}, timeout)

    async def react(self, room: str, seq: int, emoji: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Put `emoji` on message `seq`; returns the `reacted` reply (with the emoji's `count`)."""
        return await self._conversation(room, {"type": "react", "room": room, "seq": seq, "emoji": emoji},
                                        timeout)

    async def unreact(self, room: str, seq: int, emoji: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Take your `emoji` off message `seq`; returns the `reacted` reply."""
        return await self._conversation(room, {"type": "unreact", "room": room, "seq": seq, "emoji": emoji},
                                        timeout)

    async def _conversation(self, room: str, frame: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        return await asyncio.wait_for(self._sync.room_request(room, frame, edit_bucket=True), timeout)

    async def history(self, room: str, *, before: int | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of older messages (seq < before), ascending. Retried across reconnects."""
        return await self._sync.history(room, before, limit)

    async def typing(self, room: str) -> None:
        """Tell the room you are typing (best effort: dropped while disconnected)."""
        self._sync.typing(room)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events in arrival order: the log's entries `message`, `edit`, `delete` and
        `reaction` (each once, in seq order per room; fold them with parley_client.apply),
        `presence`, `typing`, `error` (unsolicited), the room list's `rooms`, `read` and
        `room_state` (protocol §11; folded into room_states already), plus the client's own `connected`,
        `disconnected`, `reset`, `stale` and, last, `closed`. Meant for one consumer."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # later iterators end too
                return
            yield event

    def _emit(self, event: dict[str, Any]) -> None:
        self._events.put_nowait(event)

    def _finish(self, exc: BaseException) -> None:
        self._sender.fail_all(exc)
        self._emit({"type": "closed", "reason": str(exc)})
        self._events.put_nowait(None)


class _Router:
    """The transport's listener: connection events and incoming frames to the part they concern."""

    def __init__(self, client: ParleyClient) -> None:
        self.client = client

    def connected(self, conn: Connection) -> None:
        c = self.client
        c._sender.connected(conn)
        c._emit({"type": "connected", "connection": conn.id, "user": conn.hello.get("user")})
        c._sync.connected(conn)

    def disconnected(self, conn: Connection, code: int | None) -> None:
        c = self.client
        c._requests.connection_lost(conn)
        c._sender.connection_lost(conn)
        c._sync.connection_lost(conn, code)
        c._emit({"type": "disconnected", "connection": conn.id, "code": code})

    def stopped(self, exc: BaseException) -> None:
        self.client._finish(exc)

    def frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        c = self.client
        kind = frame.get("type")
        if kind in ENTRY_TYPES and "ref" not in frame:
            c._sync.on_entry(conn, frame)
        elif kind == "ack":
            c._sender.on_ack(conn, frame)
        elif kind == "error" and c._sender.on_error(conn, frame):
            pass
        elif kind == "joined":
            c._sync.on_joined(conn, frame)
            c._requests.resolve(conn, frame)
        elif kind in ATTENTION_TYPES and "ref" not in frame:
            c._attention.on_frame(frame)
        elif c._requests.resolve(conn, frame):
            pass
        elif kind == "left":
            c._sync.on_left(frame)
        elif kind == "room_removed":  # version 2 (protocol §12): the room left the user's list
            c._sync.on_room_removed(frame)
        elif kind in ("room_added", "room_updated"):
            c._emit(frame)
        elif kind in ("presence", "typing", "error"):
            c._emit(frame)
