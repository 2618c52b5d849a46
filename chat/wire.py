"""Prepared frames: one broadcast framed once, the same bytes written to every local socket.

Why: after the hub (chat.hub) stopped copying and re-encoding per recipient, most of a fan-out's
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

PARLEY_PREPARED_FRAMES=0 turns this off (benchmarks run Parley both ways).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

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


class DirectWriter:
    """Writes prepared frames straight to one uvicorn websockets-sansio connection's transport."""

    __slots__ = ("_proto", "_conn", "_transport", "_writable")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._conn = proto.conn
        self._transport = proto.transport
        self._writable = proto.writable

    def write(self, text: str) -> bool:
        """Write the frame for `text` now and return True, or return False: use the ASGI send.

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
        self._transport.write(last[1] if last[0] is text else prepared(text))
        return True


def direct_writer(send: Any) -> DirectWriter | None:
    """A DirectWriter for the connection behind this ASGI `send`, or None to use `send` itself."""
    if WebSocketsSansIOProtocol is None or not settings.PARLEY_PREPARED_FRAMES:
        return None
    proto = getattr(send, "__self__", None)
    # The exact class and its bound `send`: a subclass or a wrapper may do more per frame.
    if type(proto) is not WebSocketsSansIOProtocol or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
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
