"""A socket's outbound queue: bounded in frames and bytes, written at once while the client keeps up.

Why a queue: Channels writes to the socket inside the consumer's dispatch, so a client that stops
reading stalls its consumer, its channel-layer queue fills, and every broadcast to it is silently
dropped while its memory grows in the ASGI server. Here the consumer only hands frames to this
object (never blocks). A client that falls more than PARLEY_OUTBOUND_MAX_MESSAGES frames or
PARLEY_OUTBOUND_MAX_BYTES behind is cut off (close 4413), as Centrifugo does, so the server's
memory stays flat whatever clients do. The bytes count what the server holds for the socket below
the queue too (its transport buffer and kernel send queue, parley.realtime.wire.unsent_bytes): a socket
falls behind only once those are full, and on loopback the kernel alone held ~2.7 MB of it.

Closing does not wait on the client either (parley.realtime.wire.close_now, under uvicorn's
websockets-sansio): uvicorn's own close waits for a writable transport, which for a client that
does not read is never, and the socket kept its kernel buffers and its user's socket slot. A close
queued behind frames (close_after_flush) waits for them at most PARLEY_CLOSE_GRACE_SECS.

Why "at once": uvicorn's (and the test communicator's) ASGI `send` for a WebSocket frame
finishes without suspending unless the socket's transport is paused (its kernel buffer is full:
the client reads slowly). So a frame is written by starting the send coroutine by hand and
running it to its first suspension point, inside the hub's loop over the room's sockets, as a
bare ASGI app's `await send(...)` loop would. Only when the send suspends (back-pressure) does a
writer task take over: it finishes that send, then drains the frames queued behind it, and ends
when the queue is empty. An earlier version woke one writer task per socket for every frame;
that wake-up and the second trip through Channels' middleware wrappers cost a third of a
broadcast (docs/benchmarks.md). Python 3.12's eager tasks do the same thing more generally.

Under uvicorn's websockets-sansio (scripts/serve) a frame that can go out at once skips the ASGI
send altogether: parley.realtime.wire writes the broadcast's frame bytes, framed once for all recipients,
to the transport. Everything else here (the queue, the writer task, close) is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley.conf import parley_settings
from parley.realtime import wire

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

_CLOSE = object()

# The key under which parley.ws_auth.BearerTokenAuth leaves the ASGI server's own `send` in the
# scope. Channels' session middleware (the cookie path) wraps `send` to save the session on HTTP
# responses; on a WebSocket frame the wrapper does nothing but cost a few attribute lookups and a
# coroutine per frame per socket. The outbound queue writes chat frames with the raw `send`
# instead (the handshake, accept and close still go through the full stack). It used to be a
# middleware of its own; its scope copy cost every open socket ~0.4 KB (docs/benchmarks.md).
RAW_SEND_KEY = "parley.raw_send"


class Outbound:
    # One per open socket: no per-instance __dict__ (idle memory, docs/benchmarks.md).
    __slots__ = ("_send", "_close", "_on_overflow", "_frames", "_bytes", "_max_frames", "_max_bytes",
                 "_writer", "_direct", "_proto", "_deadline", "closed")

    def __init__(self, send: Send, close: Callable[[int], Awaitable[None]], on_overflow: Callable[[], None]) -> None:
        self._send = send  # the ASGI send
        self._close = close  # closes the socket with a code
        self._on_overflow = on_overflow
        # Created when first needed: most sockets never fall behind, and an empty deque is
        # ~600 bytes per idle socket.
        self._frames: deque[tuple[object, int]] | None = None
        self._bytes = 0
        self._max_frames = int(parley_settings.OUTBOUND_MAX_MESSAGES)
        self._max_bytes = int(parley_settings.OUTBOUND_MAX_BYTES)
        self._writer: asyncio.Task[None] | None = None  # only while the socket is behind
        # uvicorn websockets-sansio: write prepared frame bytes directly (parley.realtime.wire), else None.
        self._direct = wire.direct_writer(send)
        # uvicorn websockets-sansio: what the server holds below the ASGI send, and a close that
        # does not wait on the peer (parley.realtime.wire), else None.
        self._proto = wire.server_protocol(send)
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
        if self._writer is None:
            direct = self._direct
            if direct is None or not direct.write(text):
                self._write_now(text)
            return
        size = len(text.encode()) if size is None else size
        frames = self._queue()
        frames.append((text, size))
        self._bytes += size
        # Behind: the transport's buffer and the kernel's send queue are full too, and count
        # (parley.realtime.wire.unsent_bytes, one ioctl, only on this path).
        if len(frames) > self._max_frames or self._bytes + self._unsent() > self._max_bytes:
            # Drop the backlog now: holding it for a client that does not read is the leak.
            frames.clear()
            self._bytes = 0
            self.closed = True
            self._on_overflow()

    @property
    def unsent(self) -> int:
        """Bytes the server holds for this socket below the ASGI send (0 if it cannot tell)."""
        return self._unsent()

    def _unsent(self) -> int:
        return wire.unsent_bytes(self._proto) if self._proto is not None else 0

    def close_after_flush(self, code: int) -> None:
        """Close the socket once every frame queued so far is written (e.g. an error, then 4429),
        or without them if the client has not taken them within PARLEY_CLOSE_GRACE_SECS."""
        if self.closed:
            return
        self.closed = True
        self._queue().append((_CLOSE, code))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._drain())
        self._deadline = asyncio.get_running_loop().call_later(
            parley_settings.CLOSE_GRACE_SECS, self._close_late, code)

    def _close_late(self, code: int) -> None:
        self._deadline = None
        if self._writer is not None:  # still waiting on the client to read
            asyncio.ensure_future(self._close(code))

    def close_now(self, code: int) -> bool:
        """Drop whatever waits, write the close frame now and reset the connection if it is
        still open after PARLEY_CLOSE_GRACE_SECS (parley.realtime.wire.close_now). False when the server
        is not one parley.realtime.wire knows: use the ASGI close."""
        self.flush()  # what this pass wrote goes before the close frame
        self._stop_writing()
        if self._proto is None:
            return False
        wire.close_now(self._proto, code, parley_settings.CLOSE_GRACE_SECS)
        return True

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
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            self._writer = None
            writer.cancel()

    def _queue(self) -> deque[tuple[object, int]]:
        if self._frames is None:
            self._frames = deque()
        return self._frames

    def flush(self) -> None:
        """Write the frames the direct writer holds for this pass of the event loop now: before
        anything reaches the socket another way (the ASGI send, a close), so nothing overtakes
        them."""
        if self._direct is not None:
            self._direct.flush()

    def _write_now(self, text: str) -> None:
        """Write through the ASGI send (no direct writer, or it declined)."""
        self.flush()
        coro = self._send({"type": "websocket.send", "text": text})
        try:
            waiting_on = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return  # written: the common case through an ASGI send
        except Exception:
            self._gone(coro)
            return
        # The server's send waits for the transport to drain: finish it, and what queues behind
        # it, in a writer task.
        self._writer = asyncio.ensure_future(self._drain(coro, waiting_on))

    async def _drain(self, started: Coroutine[Any, Any, None] | None = None, waiting_on: Any = None) -> None:
        try:
            if started is not None:
                await _finish(started, waiting_on)
            while self._frames:
                item, size = self._frames.popleft()
                self._bytes -= size
                self.flush()
                if item is _CLOSE:
                    self._frames = None
                    await self._close(size)
                    return
                await self._send({"type": "websocket.send", "text": item})
        except asyncio.CancelledError:
            raise
        except Exception:
            self._gone(None)
        finally:
            self._writer = None
            if not self._frames:
                self._frames = None  # caught up: give the deque back

    def _gone(self, coro: Any) -> None:
        # The socket went away under us; the consumer's disconnect() cleans up.
        log.debug("outbound write failed: socket gone", exc_info=True)
        if coro is not None:
            coro.close()
        self.closed = True
        self._frames = None
        self._bytes = 0


async def _finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run, inside the current task, a coroutine started by hand that suspended on `waiting_on`.

    What a coroutine yields to asyncio is the future it waits for (or None for a bare yield):
    wait for that here, then resume it, until it returns. Like asyncio's Task step, clear the
    future's `_asyncio_future_blocking` flag first: awaiting a future that still has it set
    raises "await wasn't used with future".
    """
    try:
        while True:
            try:
                if waiting_on is None:
                    await asyncio.sleep(0)
                else:
                    waiting_on._asyncio_future_blocking = False
                    await waiting_on
            except BaseException as exc:  # its future failed, or this task was cancelled
                waiting_on = coro.throw(exc)
                continue
            waiting_on = coro.send(None)
    except StopIteration:
        return
    finally:
        coro.close()
