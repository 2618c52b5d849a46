"""The thread that runs this process's socket-side database work, one call after another.

The consumers' reads (chat.consumer_db), the bearer-token lookup of a handshake (chat.ws_auth)
and the group commit (chat.ingest) used to hop through Channels' database_sync_to_async: each
call built a concurrent.futures.Future (with its Condition and RLock), an asyncio.shield, a
copied context, an entry in asgiref's WeakSet of tasks and a thread-pool work item, and asgiref
copied the thread's context back afterwards. In a reconnect storm (two hops per client) that
was ~15% of the server's samples (docs/benchmarks.md, "Connect path"). This thread takes work
from a SimpleQueue and settles an asyncio future through call_soon_threadsafe, nothing more.

What database_sync_to_async guaranteed is kept: the calls run one at a time on one thread
(Django connections are per thread; the group commit and the seq reservation rely on calls
not overlapping), and stale connections are closed before and after each call
(close_old_connections, as Channels does; CONN_HEALTH_CHECKS then checks before the next query).
HTTP views still run through Django's own handler threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections

R = TypeVar("R")
log = logging.getLogger(__name__)


class DatabaseThread:
    def __init__(self, name: str = "parley-db") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> asyncio.Future[R]:
        """Run fn(*args, **kwargs) on the thread; await the returned future for its result.

        Cancelling the future does not stop a call already running (as with
        database_sync_to_async): its result is dropped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._put(functools.partial(fn, *args, **kwargs), loop, future)
        return future

    def run(self, fn: Callable[..., R], *args: Any, timeout: float | None = None) -> R:
        """Run fn(*args) on the thread from synchronous code and wait for it (tests, shutdown)."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._put(functools.partial(fn, *args), None, future)
        return future.result(timeout)

    def _put(self, job: Callable[[], Any], loop: Any, future: Any) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._jobs.put((job, loop, future))

    def _work(self) -> None:
        while True:
            job, loop, future = self._jobs.get()
            try:
                _close_stale()
                outcome = (True, job())
            except BaseException as exc:  # noqa: BLE001  (handed to the caller, whatever it is)
                outcome = (False, exc)
            finally:
                _close_stale()
            if loop is None:
                _settle(future, outcome)
                continue
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting any more


def _close_stale() -> None:
    # Never let this end the thread: every socket's database work would wait forever.
    try:
        close_old_connections()
    except Exception:
        log.exception("closing stale database connections failed")


def _settle(future: Any, outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


database_thread = DatabaseThread()
