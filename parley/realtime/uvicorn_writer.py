"""The uvicorn adapter: frame writers for sockets served by uvicorn's websockets-sansio.

Everything Parley knows about uvicorn's and websockets' internals is in this module, behind the
writer interface of parley.realtime.writer; tests/test_uvicorn_contract.py checks what it relies
on against the installed versions and names this file when they change.

Prepared frames (DirectWriter). After the hub stopped copying and re-encoding per recipient,
most of a fan-out's time went into the ASGI server's `send`: for every recipient uvicorn encodes
the text to UTF-8, builds a websockets `Frame`, serializes it and joins a list, although a
server-to-client frame is unmasked and therefore byte-for-byte the same for every socket
(docs/benchmarks.md has the profile). gorilla/websocket's `PreparedMessage` exists for the same
reason. ASGI has no message for "write these frame bytes", so this is server-specific: when the
socket is served by uvicorn's `websockets-sansio` implementation (config/serve.py names it) with
no extension negotiated (config/serve.py turns permessage-deflate off), a frame is written to the
connection's transport directly, after the same checks uvicorn's `send` makes first. Whenever
one of those checks fails (the transport is paused by a slow reader, the socket is closing or
gone) the frame goes through the ASGI `send`, which then behaves as it always does (waits,
raises ClientDisconnected), and parley.realtime.writer.fallbacks counts it.

Frames written this way in one pass of the event loop are held and written per socket with one
`transport.write` when the pass ends (`_Tick`): a batch of commits reaches each socket of a room
as several frames (a delivery per message, an ack), and each was a `send` syscall of its own,
the biggest item of the event loop in the ingest profile (docs/benchmarks.md). Anything that
writes to the socket another way (the ASGI send, a close) flushes the held frames first; frames
still held when the connection has closed or started closing are dropped, as a write after
close would be. PARLEY_PREPARED_FRAMES=0 turns this off (benchmarks run Parley both ways).

Two more things only the connection itself can do, whatever that setting (SansIOWriter):

- `unsent_bytes`: what the server holds for the peer below the ASGI send: the transport's write
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
from parley.realtime.writer import AsgiWriter, Blocked, Send, fallbacks, start_send

try:  # the server config/serve.py runs; absent or renamed, only the ASGI send is used
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN
except ImportError:  # pragma: no cover - the contract test fails first
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

ADAPTER = "parley/realtime/uvicorn_writer.py"

# What this module reads or sets on a uvicorn WebSocketsSansIOProtocol and on its websockets
# ServerProtocol (`conn`): checked on every socket before it is adapted (a renamed attribute must
# mean "use the ASGI send", not an error in the middle of a fan-out), and against the installed
# versions by tests/test_uvicorn_contract.py.
PROTOCOL_ATTRS = ("conn", "transport", "loop", "queue", "writable", "disconnected", "close_sent",
                  "close_timer", "read_paused", "handshake_complete", "initial_response")
CONNECTION_ATTRS = ("state", "expect_continuation_frame", "extensions", "send_close", "data_to_send")


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


# --- the writers ----------------------------------------------------------------------------------

# Linux's SIOCOUTQ (bytes in a TCP socket's send queue, not yet acknowledged by the peer) is
# the terminal ioctl TIOCOUTQ; elsewhere only the transport's own buffer is counted.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and frees at once


class SansIOWriter(AsgiWriter):
    """Frames through the ASGI send; the kernel's send queue counted and a close that does not
    wait, from the uvicorn websockets-sansio connection behind the send."""

    __slots__ = ("_proto",)

    def __init__(self, send: Send, proto: Any) -> None:
        super().__init__(send)
        self._proto = proto

    def unsent_bytes(self) -> int:
        """The transport's write buffer plus the kernel's send queue."""
        return unsent_bytes(self._proto)

    def close_now(self, code: int, grace_secs: float) -> bool:
        close_now(self._proto, code, grace_secs)
        return True


class DirectWriter(SansIOWriter):
    """Writes prepared frames straight to one uvicorn websockets-sansio connection's transport."""

    __slots__ = ("_conn", "_held", "_tick", "_transport", "_writable")

    def __init__(self, send: Send, proto: Any) -> None:
        super().__init__(send, proto)
        self._conn = proto.conn
        self._transport = proto.transport
        self._writable = proto.writable
        self._tick = _tick()
        self._held: bytes | list[bytes] | None = None  # this pass's frames, not yet written

    def write(self, text: str) -> Blocked | None:
        """Hold the frame for `text` until this pass of the event loop ends, or send it through
        the ASGI send (counted in `fallbacks`) when one of uvicorn's own checks before a data
        frame fails (WebSocketsSansIOProtocol.send): transport not paused, handshake done, no
        close sent, not disconnected, connection OPEN. Frames are whole writes, so they
        interleave safely with uvicorn's pings and close frame."""
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
            fallbacks.frame(self._declined())
            self.flush()
            return start_send(self._send, {"type": "websocket.send", "text": text})
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
        return None

    def _declined(self) -> str:
        proto = self._proto
        if proto.disconnected or proto.close_sent or self._conn.state is not OPEN:
            return "closing"
        if not self._writable.is_set():
            return "transport-paused"
        if not proto.handshake_complete or proto.initial_response is not None:
            return "handshake"
        return "continuation"

    def send(self, text: str) -> Any:
        self.flush()
        return self._send({"type": "websocket.send", "text": text})

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
        self._transport.write(held if type(held) is bytes else b"".join(held))  # type: ignore[arg-type]  # (mypy narrows only isinstance)


def adapt(send: Send) -> AsgiWriter | None:
    """A writer for the uvicorn websockets-sansio connection behind this ASGI `send`, or None
    (use the ASGI send alone). A socket uvicorn serves that gets no DirectWriter while
    PARLEY_PREPARED_FRAMES is on is counted in parley.realtime.writer.fallbacks."""
    proto = getattr(send, "__self__", None)
    if proto is None or WebSocketsSansIOProtocol is None:
        return None
    expected = parley_settings.PREPARED_FRAMES
    if not isinstance(proto, WebSocketsSansIOProtocol):
        if expected and _served_by_uvicorn(proto):
            fallbacks.socket("ws-implementation", f"served by {_name(type(proto))}; the direct write "
                             "needs uvicorn's websockets-sansio (--ws websockets-sansio)")
        return None
    # uvicorn's class (or parley.edge's subclass, which changes shutdown and connection accounting
    # only) with uvicorn's own `send`: a wrapper or an overriding send may do more per frame.
    if getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        if expected:
            fallbacks.socket("send-overridden", f"{_name(type(proto))} does not use uvicorn's own send")
        return None
    missing = [name for name in PROTOCOL_ATTRS if not hasattr(proto, name)]
    missing += [f"conn.{name}" for name in CONNECTION_ATTRS if not hasattr(getattr(proto, "conn", None), name)]
    if missing:
        if expected:
            fallbacks.socket("uvicorn-changed", f"uvicorn's connection has no {', '.join(missing)}: "
                             f"uvicorn changed, re-review {ADAPTER}")
        return None
    if not expected:
        return SansIOWriter(send, proto)
    if proto.conn.extensions:  # e.g. permessage-deflate: each frame depends on the connection
        fallbacks.socket("extension", "a WebSocket extension was negotiated "
                         f"({', '.join(type(e).__name__ for e in proto.conn.extensions)})")
        return SansIOWriter(send, proto)
    fallbacks.direct_socket()
    return DirectWriter(send, proto)


def _served_by_uvicorn(proto: Any) -> bool:
    return any(cls.__module__.startswith("uvicorn.protocols.websockets.") for cls in type(proto).__mro__)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --- what the server will do, said once at start ----------------------------------------------------

def write_path(ws: Any, per_message_deflate: bool, prepared_frames: bool) -> tuple[bool, str]:
    """(direct?, the line config/serve.py logs at start) for uvicorn's --ws value (a name such as
    "websockets-sansio", "module:Class", or the class), --ws-per-message-deflate and
    PARLEY_PREPARED_FRAMES."""
    if not prepared_frames:
        return False, "write path: ASGI send (PARLEY_PREPARED_FRAMES=0)"
    if WebSocketsSansIOProtocol is None:
        return False, ("write path: ASGI send (fallback: uvicorn's websockets-sansio implementation "
                       f"cannot be imported: re-review {ADAPTER})")
    cls = ws
    if isinstance(ws, str):
        from uvicorn.config import WS_PROTOCOLS
        from uvicorn.importer import ImportFromStringError, import_from_string

        target = WS_PROTOCOLS.get(ws, ws)
        if target is None:
            return False, f"write path: none (--ws {ws}: no WebSockets)"
        try:
            cls = import_from_string(target)
        except ImportFromStringError as exc:
            return False, f"write path: ASGI send (fallback: --ws {ws} cannot be imported: {exc})"
    shown = ws if isinstance(ws, str) else _name(ws)
    if not (isinstance(cls, type) and issubclass(cls, WebSocketsSansIOProtocol)):
        return False, (f"write path: ASGI send (fallback: --ws {shown} is not uvicorn's "
                       "websockets-sansio, which the direct write needs)")
    if cls.send is not WebSocketsSansIOProtocol.send:
        return False, f"write path: ASGI send (fallback: --ws {shown} overrides uvicorn's send)"
    line = (f"write path: direct (prepared frames written to uvicorn's websockets-sansio transports, "
            f"--ws {shown}, {ADAPTER})")
    if per_message_deflate:
        line += "; sockets that negotiate permessage-deflate take the ASGI send"
    return True, line


# --- what the server holds for a peer, and a close that does not wait on it -----------------------

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
            queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
            held += queued
        except (OSError, ValueError):
            pass  # closed meanwhile, or not a TCP socket
    return int(held)


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
