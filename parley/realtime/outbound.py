"""A socket's outbound queue: bounded in frames and bytes, written at once while the client keeps up.

Why a queue: Channels writes to the socket inside the consumer's dispatch, so a client that stops
reading stalls its consumer, its channel-layer queue fills, and every broadcast to it is silently
dropped while its memory grows in the ASGI server. Here the consumer only hands frames to this
object (never blocks). A client that falls more than PARLEY_OUTBOUND_MAX_MESSAGES frames or
PARLEY_OUTBOUND_MAX_BYTES behind is cut off (close 4413), as Centrifugo does, so the server's
memory stays flat whatever clients do. The bytes count what the server holds for the socket below
the queue too (its transport buffer and kernel send queue, FrameWriter.unsent_bytes): a socket
falls behind only once those are full, and on loopback the kernel alone held ~2.7 MB of it.

Closing does not wait on the client either (FrameWriter.close_now, under uvicorn's
websockets-sansio): uvicorn's own close waits for a writable transport, which for a client that
does not read is never, and the socket kept its kernel buffers and its user's socket slot. A close
queued behind frames (close_after_flush) waits for them at most PARLEY_CLOSE_GRACE_SECS.

Why "at once": a frame to a socket that keeps up is written inside the hub's loop over the room's
sockets, without a task (a task per socket per frame cost a third of a broadcast,
docs/benchmarks.md); only when the socket's writer says the write waits on the peer does a
writer task take over: it finishes that write, then drains the frames queued behind it, and ends
when the queue is empty. How a frame reaches the socket (the ASGI send, or under uvicorn's
websockets-sansio the broadcast's frame bytes, framed once for all recipients) is the
FrameWriter's business (parley.realtime.writer); this module talks only to that interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from parley.conf import parley_settings
from parley.realtime.tasks import spawn
from parley.realtime.writer import Blocked, FrameWriter, Send, writer_for

log = logging.getLogger(__name__)

_CLOSE = object()

# The key under which parley.ws_auth.BearerTokenAuth leaves the ASGI server's own `send` in the
# scope. Channels' session middleware (the cookie path) wraps `send` to save the session on HTTP
# responses; on a WebSocket frame the wrapper does nothing but cost a few attribute lookups and a
# coroutine per frame per socket. The outbound queue writes chat frames with the raw `send`
# instead (the handshake, accept and close still go through the full stack). A key in the scope
# rather than a middleware of its own: that middleware's scope copy cost every open socket
# ~0.4 KB (docs/benchmarks.md).
RAW_SEND_KEY = "parley.raw_send"


class Outbound:
    # One per open socket: no per-instance __dict__ (idle memory, docs/benchmarks.md).
    __slots__ = (
        "_bytes",
        "_close",
        "_deadline",
        "_drainer",
        "_frames",
        "_max_bytes",
        "_max_frames",
        "_on_overflow",
        "_writer",
        "closed",
    )

    def __init__(self, send: Send, close: Callable[[int], Awaitable[None]], on_overflow: Callable[[], None]) -> None:
        # How frames reach the socket behind the ASGI `send` (parley.realtime.writer).
        self._writer: FrameWriter = writer_for(send)
        self._close = close  # closes the socket with a code
        self._on_overflow = on_overflow
        # Created when first needed: most sockets never fall behind, and an empty deque is
        # ~600 bytes per idle socket.
        self._frames: deque[tuple[object, int]] | None = None
        self._bytes = 0
        self._max_frames = int(parley_settings.OUTBOUND_MAX_MESSAGES)
        self._max_bytes = int(parley_settings.OUTBOUND_MAX_BYTES)
        self._drainer: asyncio.Task[None] | None = None  # only while the socket is behind
        self._deadline: asyncio.TimerHandle | None = None  # close_after_flush's grace
        self.closed = False

    @property
    def backlog(self) -> tuple[int, int]:
        """(frames, bytes) waiting to be written."""
        return len(self._frames or ()), self._bytes

    def put(self, text: str, size: int | None = None) -> None:
        """Write one frame now, or queue it behind the ones still waiting.

        `size` is its UTF-8 length when the caller knows it already.
        """
        if self.closed:
            return
        if self._drainer is None:
            try:
                blocked = self._writer.write(text)
            except Exception:
                self._gone()
                return
            if blocked is not None:
                # The write waits for the transport to drain: finish it, and what queues
                # behind it, in a writer task.
                self._drainer = asyncio.ensure_future(self._drain(blocked))
            return
        size = len(text.encode()) if size is None else size
        frames = self._queue()
        frames.append((text, size))
        self._bytes += size
        # Behind: the transport's buffer and the kernel's send queue are full too, and count
        # (FrameWriter.unsent_bytes: one ioctl under uvicorn, only on this path).
        if len(frames) > self._max_frames or self._bytes + self._writer.unsent_bytes() > self._max_bytes:
            # Drop the backlog now: holding it for a client that does not read is the leak.
            frames.clear()
            self._bytes = 0
            self.closed = True
            self._on_overflow()

    @property
    def unsent(self) -> int:
        """Bytes the server holds for this socket below the ASGI send (0 if it cannot tell)."""
        return self._writer.unsent_bytes()

    def close_after_flush(self, code: int) -> None:
        """Close the socket once every frame queued so far is written (e.g. an error, then 4429),
        or without them if the client has not taken them within PARLEY_CLOSE_GRACE_SECS."""
        if self.closed:
            return
        self.closed = True
        self._queue().append((_CLOSE, code))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        self._deadline = asyncio.get_running_loop().call_later(
            parley_settings.CLOSE_GRACE_SECS, self._close_late, code)

    def _close_late(self, code: int) -> None:
        self._deadline = None
        if self._drainer is not None:  # still waiting on the client to read
            spawn(self._close(code))

    def close_now(self, code: int) -> bool:
        """Drop whatever waits, write the close frame now and reset the connection if it is
        still open after PARLEY_CLOSE_GRACE_SECS (FrameWriter.close_now). False when the
        socket's writer cannot (not uvicorn's websockets-sansio): use the ASGI close."""
        self.flush()  # what this pass wrote goes before the close frame
        self._stop_writing()
        return self._writer.close_now(code, parley_settings.CLOSE_GRACE_SECS)

    def stop(self) -> None:
        """Stop writing (the socket is gone)."""
        self._stop_writing()

    def _stop_writing(self) -> None:
        self.closed = True
        self._frames = None
        self._bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        drainer = self._drainer
        if drainer is not None and drainer is not asyncio.current_task():
            self._drainer = None
            drainer.cancel()

    def _queue(self) -> deque[tuple[object, int]]:
        if self._frames is None:
            self._frames = deque()
        return self._frames

    def flush(self) -> None:
        """Write the frames the writer holds for this pass of the event loop now: before
        anything reaches the socket another way (a close), so nothing overtakes them."""
        self._writer.flush()

    async def _drain(self, blocked: Blocked | None = None) -> None:
        try:
            if blocked is not None:
                await blocked
            while self._frames:
                item, size = self._frames.popleft()
                self._bytes -= size
                if item is _CLOSE:
                    self._frames = None
                    self.flush()
                    await self._close(size)
                    return
                await self._writer.send(item)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception:
            self._gone()
        finally:
            self._drainer = None
            if not self._frames:
                self._frames = None  # caught up: give the deque back

    def _gone(self) -> None:
        # The socket went away under us; the consumer's disconnect() cleans up.
        log.debug("outbound write failed: socket gone", exc_info=True)
        self.closed = True
        self._frames = None
        self._bytes = 0
