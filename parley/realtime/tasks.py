"""Fire-and-forget tasks that cannot vanish: the event loop keeps only a weak reference to a
task, so one nobody holds may be garbage-collected before it finishes (asyncio docs,
"Important: save a reference"). `spawn` holds each until it is done and logs what it raised,
which nobody would otherwise await."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)

_running: set[asyncio.Future[Any]] = set()


def spawn(coro: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run `coro` as a task of the running loop, held until done."""
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Future[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %r failed", task, exc_info=error)


class Periodic:
    """A round every `interval_secs()` while `active()` holds, as one task started on demand.

    `ensure_running` starts the task unless it runs already; it stops by itself once `active()`
    is false (nothing to watch: no queries in an idle process) or the interval is 0 (off). The
    interval is read again each round, so a changed setting applies at the next one. A round
    that raises (the database is away) is logged and the next round tries again.
    """

    what = "periodic round"  # for the log line

    def __init__(self) -> None:
        self.task: asyncio.Future[None] | None = None

    def interval_secs(self) -> float:
        raise NotImplementedError

    def active(self) -> bool:
        raise NotImplementedError

    async def round(self) -> object:
        raise NotImplementedError

    def ensure_running(self) -> None:
        if self.interval_secs() > 0 and (self.task is None or self.task.done()):
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.active():
            interval = self.interval_secs()
            if interval <= 0:
                return
            await asyncio.sleep(interval)
            try:
                await self.round()
            except Exception:
                log.warning("%s failed; retrying in %.2f s", self.what, interval, exc_info=True)
