"""The thread that runs this process's socket-side database work, one call after another.

The consumers' reads (parley.consumer_db), the bearer-token lookup of a handshake (parley.ws_auth)
and the group commit (parley.ingest) run here rather than through Channels'
database_sync_to_async, where each call builds a concurrent.futures.Future (with its Condition and RLock), an asyncio.shield, a
copied context, an entry in asgiref's WeakSet of tasks and a thread-pool work item, and asgiref
copies the thread's context back afterwards. In a reconnect storm (two hops per client) that
measured ~15% of the server's samples (docs/benchmarks.md, "Connect path"). This thread takes work
from a SimpleQueue and settles an asyncio future through call_soon_threadsafe, nothing more.

What database_sync_to_async guaranteed is kept: the calls run one at a time on one thread
(Django connections are per thread; the group commit and the seq reservation rely on calls
not overlapping), and stale connections are closed before and after each call
(close_old_connections, as Channels does; CONN_HEALTH_CHECKS then checks before the next query).
HTTP views still run through Django's own handler threads.

One thread, two lanes: `database_thread` takes the writes — the group commit (parley.ingest)
and the bearer-token lookup of a handshake (which stamps the token's last use) — before any read
waiting in `read_thread`'s lane (parley.consumer_db: joins, history, access checks, gap fills).
With one FIFO for both, every send's commit (and so its ack and its delivery) queued behind
whatever reads were ahead of it: 100 sockets paging history full of 4,000-character messages
pushed other users' ack p99 from a few ms to seconds. Now a write waits at most for the one read
already running. The lanes share the thread, and so one database connection: a read of a
separate connection beside the writer (a thread of its own, tried first) left reconnect storms
with gaps on SQLite (`python -m bench --only reconnect`: gaps in 2 runs of 3 against none in 3
on the single connection), and the join's "subscribe, then read" rule needs every read to see
each commit whose broadcast came before it. Within a lane the order is FIFO. How much reading a
user and the process may do is bounded separately (parley.limits.ByteBudget).

Reads that many sockets make at once (the bearer-token lookup of a handshake, the snapshot of
a join) go through `Batched`: the calls made while the thread is busy ride in one job, which
answers them all with one query where the read allows it (docs/benchmarks.md, "Connect path").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import close_old_connections

R = TypeVar("R")
T = TypeVar("T")
log = logging.getLogger(__name__)


class DatabaseThread:
    def __init__(self, name: str = "parley-db") -> None:
        self._name = name
        # (lane, order, job, loop, future): lane 0 (writes) before lane 1 (reads), FIFO in each.
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], Any], Any, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
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

    def pending(self) -> int:
        """Jobs waiting for the thread, both lanes (approximate: read without a lock)."""
        return self._jobs.qsize()

    def run(self, fn: Callable[..., R], *args: Any, timeout: float | None = None) -> R:
        """Run fn(*args) on the thread from synchronous code and wait for it (tests, shutdown)."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._put(functools.partial(fn, *args), None, future)
        return future.result(timeout)

    def _put(self, job: Callable[[], Any], loop: Any, future: Any, lane: int = 0) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._jobs.put((lane, next(self._order), job, loop, future))

    def _work(self) -> None:
        while True:
            _lane, _order, job, loop, future = self._jobs.get()
            try:
                _close_stale()
                outcome = (True, job())
            except BaseException as exc:
                outcome = (False, exc)
            finally:
                _close_stale()
            if future is None:
                if not outcome[0]:
                    log.error("database thread job failed", exc_info=outcome[1])
                continue
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


def _settle_all(settles: list[tuple[Any, tuple[bool, Any]]]) -> None:
    for future, outcome in settles:
        _settle(future, outcome)


def _settle(future: Any, outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ReadLane:
    """The read lane of a DatabaseThread: the same calls (submit, run, and Batched's thread=),
    on the same thread and connection, taken only when no write is waiting."""

    LANE = 1

    def __init__(self, thread: DatabaseThread) -> None:
        self._thread = thread

    # The same calls, put in this lane by _put below (a ReadLane duck-types the thread's state).
    submit = DatabaseThread.submit
    run = DatabaseThread.run

    def _put(self, job: Callable[[], Any], loop: Any, future: Any, lane: int = LANE) -> None:
        self._thread._put(job, loop, future, lane)


database_thread = DatabaseThread()  # the writes' lane: the group commit, the token lookup
read_thread = ReadLane(database_thread)  # the consumers' reads, after any waiting write


class Batched(Generic[T, R]):
    """`many(items) -> results` (one result per item, in order) for the items of every call
    made while the database thread was busy: await `batched(item)` for one item's result.

    Nothing waits to fill a batch: the first call queues a job, and whatever calls arrive
    before the thread reaches it join it — one at a time when the thread is idle, hundreds
    at once in a reconnect storm. Each job hands the thread's results back to an event loop in
    one callback per loop, not one per item. If `many` raises, every item of that chunk gets
    the exception. The job runs in the thread's queue order, so an item can be answered
    before work queued after its call but before its job: only for reads that do not care
    (each is its own autocommit snapshot anyway).
    """

    def __init__(self, many: Callable[[list[T]], list[R]], *, max_items: int = 256,
                 thread: DatabaseThread | ReadLane | None = None) -> None:
        self.many = many
        self.max_items = max_items  # one statement's bound parameters stay well under SQLite's limit
        self._thread = thread
        self._lock = threading.Lock()
        self._pending: list[tuple[T, Any, asyncio.Future[R]]] = []
        self._queued = False

    def __call__(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._pending.append((item, loop, future))
            if self._queued:
                return future
            self._queued = True
        (self._thread or database_thread)._put(self._drain, None, None)
        return future

    def _drain(self) -> None:
        """Called on the database thread: answers every item that has arrived since the job
        was queued."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._queued = False
        for start in range(0, len(batch), self.max_items):
            chunk = batch[start:start + self.max_items]
            try:
                results = self.many([item for item, _, _ in chunk])
                if len(results) != len(chunk):
                    raise RuntimeError(f"{self.many!r} returned {len(results)} results for {len(chunk)} items")
                outcomes: list[tuple[bool, Any]] = [(True, r) for r in results]
            except BaseException as exc:
                outcomes = [(False, exc)] * len(chunk)
            by_loop: dict[Any, list[tuple[Any, tuple[bool, Any]]]] = {}
            for (_, loop, future), outcome in zip(chunk, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, settles in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, settles)
                except RuntimeError:
                    pass  # that loop is closed: nobody is waiting any more
