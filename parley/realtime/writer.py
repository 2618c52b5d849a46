"""How one socket's frames reach its peer, below the outbound queue: the writer interface.

parley.realtime.outbound bounds and orders a socket's frames; a FrameWriter puts them on the
socket. Two kinds exist:

- AsgiWriter, for every ASGI server (daphne, the test communicator, any uvicorn): frames go
  through the server's ASGI `send`, started by hand (below) so that a frame to a socket that
  keeps up is written inside the caller's loop over a room's sockets, without a task.
- parley.realtime.uvicorn_writer's writers, for sockets served by uvicorn's websockets-sansio
  implementation: each broadcast is framed once and the bytes are written to the transport
  directly, the kernel's send queue is counted, and a close does not wait on a peer that does not
  read. Everything that leans on uvicorn's internals is in that one module; when a socket cannot
  be served that way it gets an AsgiWriter, and `fallbacks` counts it.

Why the ASGI send is started by hand: uvicorn's (and the test communicator's) `send` for a
WebSocket frame finishes without suspending unless the socket's transport is paused (its kernel
buffer is full: the client reads slowly). So `write` runs the send coroutine to its first
suspension point, as a bare ASGI app's `await send(...)` loop would. Only when it suspends
(back-pressure) does the caller need a task: `write` returns the suspended send as a Blocked,
which the outbound queue's writer task awaits before draining what queued behind it. A task per
socket per frame, and the second trip through Channels' middleware wrappers, cost a third of a
broadcast (docs/benchmarks.md). This leans on the coroutine protocol and on asyncio's
`_asyncio_future_blocking` flag (see _finish): tests/test_outbound.py runs on every supported
Python.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class FrameWriter(Protocol):
    """One socket's way to the wire."""

    def write(self, text: str) -> Blocked | None:
        """Write one text frame without waiting: None when it is written (or held for this pass
        of the event loop, see flush), else the write that waits on the peer, for the caller's
        task to await; the caller queues later frames behind it. Raises if the socket is gone."""
        ...

    def send(self, text: str) -> Awaitable[None]:
        """Write one text frame, waiting as long as the transport needs (the writer task's way)."""
        ...

    def flush(self) -> None:
        """Write now what `write` holds: before anything reaches the socket another way."""
        ...

    def unsent_bytes(self) -> int:
        """Bytes the server holds for this socket below the ASGI send (0 if it cannot tell)."""
        ...

    def close_now(self, code: int, grace_secs: float) -> bool:
        """Send the close frame without waiting on the peer, tell the app the socket is gone, and
        drop the connection if the peer has not completed the close within grace_secs. False if
        this server cannot: the caller closes through ASGI."""
        ...


class Blocked:
    """An ASGI send started by hand that suspended: awaiting this finishes it in the awaiting task."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, None]:
        # A coroutine is made only when awaited: a writer task cancelled before it ran leaves
        # nothing "never awaited" behind (the started send is closed when collected).
        return _finish(self._coro, self._waiting_on).__await__()


def start_send(send: Send, message: dict[str, Any]) -> Blocked | None:
    """Run `send(message)` up to its first suspension point: None if it finished, else the rest."""
    coro = send(message)
    try:
        waiting_on = coro.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return None  # written: the common case
    return Blocked(coro, waiting_on)  # type: ignore[arg-type]


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


class AsgiWriter:
    """Frames through the ASGI server's `send` (started by hand); nothing below it is visible."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def write(self, text: str) -> Blocked | None:
        return start_send(self._send, {"type": "websocket.send", "text": text})

    def send(self, text: str) -> Awaitable[None]:
        return self._send({"type": "websocket.send", "text": text})

    def flush(self) -> None:
        pass

    def unsent_bytes(self) -> int:
        return 0

    def close_now(self, code: int, grace_secs: float) -> bool:
        return False


class Fallbacks:
    """Sockets and frames that took the ASGI send where the direct write was expected (this
    process). `sockets`/`frames` are totals; `socket_reasons`/`frame_reasons` count them by a
    short, stable reason (metric labels). A socket is expected to be written directly when
    PARLEY_PREPARED_FRAMES is on and uvicorn serves it; a frame, when its socket has a direct
    writer. The first socket that falls back is logged with the details, once per process."""

    __slots__ = ("direct", "frame_reasons", "frames", "socket_reasons", "sockets")

    def __init__(self) -> None:
        self.direct = 0  # sockets that got the direct write (the expected case), for comparison
        self.sockets = 0
        self.frames = 0
        self.socket_reasons: Counter[str] = Counter()
        self.frame_reasons: Counter[str] = Counter()

    def socket(self, reason: str, detail: str) -> None:
        if not self.sockets:
            log.warning("a socket's frames take the ASGI send, not the direct write: %s "
                        "(logged once; parley.realtime.writer.fallbacks counts them)", detail)
        self.sockets += 1
        self.socket_reasons[reason] += 1

    def direct_socket(self) -> None:
        self.direct += 1

    def frame(self, reason: str) -> None:
        self.frames += 1
        self.frame_reasons[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counts as plain data: {"sockets": n, "frames": n, "socket_reasons": {...}, ...}."""
        return {"direct": self.direct, "sockets": self.sockets, "frames": self.frames,
                "socket_reasons": dict(self.socket_reasons), "frame_reasons": dict(self.frame_reasons)}

    def reset(self) -> None:
        self.direct = self.sockets = self.frames = 0
        self.socket_reasons.clear()
        self.frame_reasons.clear()


fallbacks = Fallbacks()


def writer_for(send: Send) -> FrameWriter:
    """The writer for the socket behind this ASGI `send`: uvicorn's adapter where it applies,
    else the ASGI send."""
    # Imported here: the adapter builds on AsgiWriter and counts into `fallbacks` above.
    from parley.realtime import uvicorn_writer

    return uvicorn_writer.adapt(send) or AsgiWriter(send)
