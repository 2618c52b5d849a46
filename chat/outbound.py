"""A socket's outbound queue: bounded in frames and bytes, drained by one writer task.

Why: Channels writes to the socket inside the consumer's dispatch, so a client that stops reading
stalls its consumer, its channel-layer queue fills, and every broadcast to it is silently dropped
while its memory grows in the ASGI server. Here the consumer only appends to this queue (never
blocks); the writer task feeds the socket as fast as the client reads; and a client that falls
more than PARLEY_OUTBOUND_MAX_MESSAGES frames or PARLEY_OUTBOUND_MAX_BYTES behind is cut off
(close 4413), as Centrifugo does, so the server's memory stays flat whatever clients do.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from chat import limits

log = logging.getLogger(__name__)

_CLOSE = object()


class Outbound:
    def __init__(self, write: Callable[[str], Awaitable[None]], close: Callable[[int], Awaitable[None]],
                 on_overflow: Callable[[], None]) -> None:
        self._write = write  # writes one text frame to the socket
        self._close = close  # closes the socket with a code
        self._on_overflow = on_overflow
        self._frames: deque[tuple[object, int]] = deque()
        self._bytes = 0
        self._max_frames = int(limits.OUTBOUND_MAX_MESSAGES.value)
        self._max_bytes = int(limits.OUTBOUND_MAX_BYTES.value)
        self._wakeup = asyncio.Event()
        self.closed = False
        self._task = asyncio.ensure_future(self._run())

    @property
    def backlog(self) -> tuple[int, int]:
        """(frames, bytes) waiting to be written."""
        return len(self._frames), self._bytes

    def put(self, text: str, size: int | None = None) -> None:
        """Queue one frame. `size` is its UTF-8 length when the caller knows it already."""
        if self.closed:
            return
        size = len(text.encode()) if size is None else size
        self._frames.append((text, size))
        self._bytes += size
        if len(self._frames) > self._max_frames or self._bytes > self._max_bytes:
            # Drop the backlog now: holding it for a client that does not read is the leak.
            self._frames.clear()
            self._bytes = 0
            self.closed = True
            self._on_overflow()
            return
        self._wakeup.set()

    def close_after_flush(self, code: int) -> None:
        """Close the socket once every frame queued so far is written (e.g. an error, then 4429)."""
        if not self.closed:
            self.closed = True
            self._frames.append((_CLOSE, code))
            self._wakeup.set()

    def stop(self) -> None:
        """Stop the writer (the socket is gone)."""
        self.closed = True
        self._frames.clear()
        self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._frames:
                    item, size = self._frames.popleft()
                    if item is _CLOSE:
                        await self._close(size)
                        return
                    self._bytes -= size
                    await self._write(item)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away under us; the consumer's disconnect cleans up
            log.debug("outbound writer stopped", exc_info=True)
