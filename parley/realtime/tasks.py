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
