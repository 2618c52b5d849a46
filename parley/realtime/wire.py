"""Prepared frames: one broadcast framed once, the same bytes written to every local socket.

Why: after the hub (parley.realtime.hub) stopped copying and re-encoding per recipient, most of a fan-out's
time went into the ASGI server's `send` — for every recipient uvicorn encodes the text to UTF-8,
builds a websockets `Frame`, serializes it and joins a list, although a server-to-client frame is
unmasked and therefore byte-for-byte the same for every socket (docs/benchmarks.md has the
profile). gorilla/websocket's `PreparedMessage` exists for the same reason. ASGI has no message
for "write these frame bytes", so this is server-specific: when the socket is served by
uvicorn's `websockets-sansio` implementation (what scripts/serve runs) without an extension
negotiated (scripts/serve turns permessage-deflate off), a frame is written to the connection's
transport directly, with the same checks uvicorn's `send` makes first. Whenever one of those
checks fails — the transport is paused (a slow reader), the socket is closing or gone — the
caller falls back to the ASGI `send`, which then behaves as it always does (waits, raises
ClientDisconnected). Under any other server (daphne, the test communicator, uvicorn's other
implementations) only the ASGI `send` is used.

Frames written this way in one pass of the event loop are held and written per socket with one
`transport.write` when the pass ends (`_Tick`): a batch of commits reaches each socket of a room
as several frames (a delivery per message, an ack), and each was a `send` syscall of its own —
the biggest item of the event loop in the ingest profile (docs/benchmarks.md). Anything that
writes to the socket another way (the ASGI send when the direct write declines, a close) flushes
the held frames first (parley.realtime.outbound); frames still held when the connection has closed or
started closing are dropped, as a write after close would be.

PARLEY_PREPARED_FRAMES=0 turns this off (benchmarks run Parley both ways).

Two more things only the connection itself can do, used by parley.realtime.outbound whatever that
setting (`server_protocol`):

- `unsent_bytes`: what the server holds for the peer below the ASGI send — the transport's write
  buffer and the kernel's send queue (SIOCOUTQ). A socket whose client stopped reading held
  ~2.7 MB in the kernel on loopback beyond the outbound queue's own budget.
- `close_now`: uvicorn's `send` of `websocket.close` first waits for the transport to be writable,
  which for a client that stopped reading is never: 40 such sockets were still open 12 s after
  their 4413, holding 107 MiB of kernel send queue and their users' socket slots. Here the close
  frame is written at once (behind what the transport holds: the peer may never see it), the
  app is told the socket is gone, as uvicorn's own close does, and the connection is reset
  (SO_LINGER 0, then abort: the kernel frees the send queue at once, where a plain close would
  keep an orphaned socket retrying against a zero window) if the client has not answered the
  close within PARLEY_CLOSE_GRACE_SECS.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
from typing import Any

from parley.conf import parley_settings
from parley.realtime.loops import per_loop

try:  # the server scripts/serve runs; absent or renamed, only the ASGI send is used
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN
except ImportError:  # pragma: no cover - uvicorn/websockets are pinned in requirements
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


def text_frame(text: str) -> bytes:
    """The bytes of one unfragmented, unmasked server-to-client text frame: what uvicorn writes."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


# The last frame prepared, as one tuple (read and replaced atomically). A broadcast hands the
# same str object to every socket of the room, so all but the first find it here; holding the
# str keeps the identity check sound (its id cannot be reused while we hold it).
_last: tuple[str, bytes] = ("", b"")


def prepared(text: str) -> bytes:
    """text_frame(text), computed once per broadcast rather than once per recipient."""
    global _last
    last = _last
    if last[0] is text:
        return last[1]
    data = text_frame(text)
    _last = (text, data)
    return data


class _Tick:
    """The DirectWriters holding frames in this pass of the event loop; one call_soon flushes
    them all, after every callback already queued has run."""

    __slots__ = ("_loop", "_writers")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writers: list[DirectWriter] = []

    def hold(self, writer: DirectWriter) -> None:
        if not self._writers:
            self._loop.call_soon(self.flush)
        self._writers.append(writer)

    def flush(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            try:
                writer.flush()
            except Exception:  # one broken transport must not keep the others' frames back
                log.exception("writing held frames failed")


_tick = per_loop(_Tick)
log = logging.getLogger(__name__)


class DirectWriter:
    """Writes prepared frames straight to one uvicorn websockets-sansio connection's transport."""

    __slots__ = ("_proto", "_conn", "_transport", "_writable", "_tick", "_held")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._conn = proto.conn
        self._transport = proto.transport
        self._writable = proto.writable
        self._tick = _tick()
        self._held: bytes | list[bytes] | None = None  # this pass's frames, not yet written

    def write(self, text: str) -> bool:
        """Hold the frame for `text` until this pass of the event loop ends and return True, or
        return False: use the ASGI send (after flush()).

        The checks are uvicorn's own before it writes a data frame (WebSocketsSansIOProtocol.send):
        transport not paused, handshake done, no close sent, not disconnected, connection OPEN.
        Frames are whole writes, so they interleave safely with uvicorn's pings and close frame.
        """
        proto = self._proto
        conn = self._conn
        if (
            not self._writable.is_set()
            or proto.disconnected
            or proto.close_sent
            or not proto.handshake_complete
            or proto.initial_response is not None
            or conn.state is not OPEN
            or conn.expect_continuation_frame
        ):
            return False
        last = _last  # prepared(text), inlined: this runs once per recipient
        data = last[1] if last[0] is text else prepared(text)
        held = self._held
        if held is None:
            self._held = data
            self._tick.hold(self)
        elif type(held) is list:
            held.append(data)
        else:
            self._held = [held, data]  # type: ignore[list-item]
        return True

    def flush(self) -> None:
        """Write the held frames now, with one transport.write (dropped if the connection has
        closed or started closing since: nothing may follow a close frame)."""
        held = self._held
        if held is None:
            return
        self._held = None
        proto = self._proto
        if proto.disconnected or proto.close_sent or self._conn.state is not OPEN:
            return
        self._transport.write(held if type(held) is bytes else b"".join(held))


def direct_writer(send: Any) -> DirectWriter | None:
    """A DirectWriter for the connection behind this ASGI `send`, or None to use `send` itself."""
    if WebSocketsSansIOProtocol is None or not parley_settings.PREPARED_FRAMES:
        return None
    proto = getattr(send, "__self__", None)
    # uvicorn's class (or parley.edge's subclass, which changes shutdown and connection accounting
    # only) with uvicorn's own `send`: a wrapper or an overriding send may do more per frame.
    if not isinstance(proto, WebSocketsSansIOProtocol) or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    # Everything write() reads, present on this uvicorn version? (pinned in requirements; a
    # renamed attribute must mean "use the ASGI send", not an error in the middle of a fan-out)
    if not all(hasattr(proto, name) for name in _PROTOCOL_ATTRS) or not all(
        hasattr(proto.conn, name) for name in ("state", "expect_continuation_frame", "extensions")
    ):
        return None
    if proto.conn.extensions:  # e.g. permessage-deflate: each frame depends on the connection
        return None
    return DirectWriter(proto)


_PROTOCOL_ATTRS = ("conn", "transport", "writable", "disconnected", "close_sent", "handshake_complete",
                   "initial_response")


# Linux's SIOCOUTQ (bytes in a TCP socket's send queue, not yet acknowledged by the peer) is
# the terminal ioctl TIOCOUTQ; elsewhere only the transport's own buffer is counted.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and frees at once
_CLOSE_ATTRS = ("conn", "transport", "loop", "queue", "writable", "disconnected", "close_sent",
                "close_timer", "read_paused", "handshake_complete")


def server_protocol(send: Any) -> Any | None:
    """uvicorn's websockets-sansio connection behind this ASGI `send` (for unsent_bytes and
    close_now), or None under any other server."""
    if WebSocketsSansIOProtocol is None:
        return None
    proto = getattr(send, "__self__", None)
    # isinstance: Parley serves with a subclass (parley.edge.ParleyWebSocketProtocol) whose `send`
    # is uvicorn's own, which the second check makes sure of.
    if not isinstance(proto, WebSocketsSansIOProtocol) or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    if not all(hasattr(proto, name) for name in _CLOSE_ATTRS) or not hasattr(proto.conn, "state"):
        return None
    return proto


def unsent_bytes(proto: Any) -> int:
    """Bytes written to this connection that its peer has not taken yet: the transport's write
    buffer plus the kernel's send queue."""
    transport = proto.transport
    if proto.disconnected or transport is None:
        return 0
    held = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is not None and sock is not None:
        try:
            held += struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            pass  # closed meanwhile, or not a TCP socket
    return held


def close_now(proto: Any, code: int, grace_secs: float) -> None:
    """Send the close frame without waiting for the peer to read, tell the app the socket is
    gone, and reset the connection unless the peer completes the close within grace_secs.

    What uvicorn's `send` of `websocket.close` does, minus its wait for a writable transport:
    the close frame, `close_sent`, the app's `websocket.disconnect`, reading resumed so that the
    peer's close reply is seen, and `close_timer`: uvicorn cancels it and closes the transport
    cleanly when the reply comes, and does not close the transport itself while it is set (a
    clean close of a connection whose peer does not read leaves the kernel an orphaned socket
    with the whole send queue, retrying against a zero window). The timer resets instead. A
    peer whose transport is paused is not reading: its connection is set to reset on any close
    from now on, even one that follows a close reply it sent without reading.
    """
    if proto.disconnected:
        return
    conn = proto.conn
    transport = proto.transport
    if not proto.close_sent and proto.handshake_complete and conn.state is OPEN and not transport.is_closing():
        proto.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": ""})
        conn.send_close(code, "")
        transport.write(b"".join(conn.data_to_send()))
        proto.close_sent = True
        if proto.read_paused:
            proto.read_paused = False
            transport.resume_reading()
    if not proto.writable.is_set():
        _linger_reset(transport)
    if proto.close_timer is not None:
        proto.close_timer.cancel()
    proto.close_timer = proto.loop.call_later(grace_secs, reset, proto)


def _linger_reset(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass


def reset(proto: Any) -> None:
    """Drop the connection now, and what the kernel still holds for it (TCP RST)."""
    proto.close_timer = None
    transport = proto.transport
    if proto.disconnected or transport is None:
        return
    _linger_reset(transport)
    transport.abort()
