"""Parley's Prometheus metrics: every metric object, and what `/metrics` answers.

Two kinds of metric live here (docs/operations.md lists each one):

- events counted where they happen, in the product's code, at most once per command, per socket
  opened or closed, or per batch: joins, acks, slow-reader closes, refusals and the like;
- readings of counters the engine (parley.realtime) keeps itself — deliveries per broadcast, the
  writer's fallbacks, the database thread's queue. The engine does not import the product, and
  its fan-out loop must not make a Prometheus call per socket per message: it increments plain
  integers, and `sync()` copies them into the metrics below when `/metrics` is scraped.

Several worker processes (`uvicorn --workers N`) are served with prometheus_client's
multi-process mode: set PROMETHEUS_MULTIPROC_DIR to an empty directory writable by every worker
before they start. Each worker then writes its metrics to files there, `/metrics` in any worker
answers the sum over all of them (MultiProcessCollector), and each worker copies the engine's
counters every SYNC_INTERVAL_SECS on a thread of its own, since a scrape reaches only one worker;
the gauges of workers that are gone are dropped when scraped (forget_dead_workers).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Set by the operator for `--workers N` (prometheus_client reads it when a metric is made).
MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
# How often each worker copies the engine's counters into the shared files (multi-process only).
SYNC_INTERVAL_SECS = 1.0

# Seconds: from well under a millisecond (an idle process on loopback) to seconds (a stall).
LATENCY_BUCKETS_SECS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Messages per group commit (parley.ingest.MAX_BATCH is 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# --- counted where they happen -----------------------------------------------------------------

OPEN_SOCKETS = Gauge(
    "parley_open_sockets", "Chat WebSockets open and accepted (their user's socket slot taken).",
    multiprocess_mode="livesum")
JOINS = Counter("parley_joins_total", "Joins answered with a joined reply.")
RESUMES = Counter(
    "parley_resumes_total", "Joins that asked to resume (after_seq): recovered=true got every missed "
    "message, recovered=false got a page instead (gap too large, or another epoch).", ["recovered"])
MESSAGES_ACKED = Counter("parley_messages_acked_total",
                         "Chat messages acked on a socket (duplicates of a client_id included).")
ACK_LATENCY = Histogram(
    "parley_ack_latency_seconds", "From a send frame's handler starting (the frame read and parsed) "
    "to its ack handed to the socket's outbound queue: the message-rate check (cluster-wide with Redis), the "
    "group commit's wait and the commit.",
    buckets=LATENCY_BUCKETS_SECS)
FANOUT_LATENCY = Histogram(
    "parley_fanout_latency_seconds", "From a message's commit result reaching the sender's event loop "
    "(just after its ack) to the broadcast returning: every local socket's outbound queue has the frame; "
    "with Redis, the PUBLISH for the other processes is queued then and sent after (not measured).",
    buckets=LATENCY_BUCKETS_SECS)
INGEST_BATCH = Histogram("parley_ingest_batch_size", "Messages stored by one group commit (parley.ingest).",
                         buckets=BATCH_BUCKETS)
SLOW_READER_CLOSES = Counter(
    "parley_slow_reader_closes_total", "Sockets closed with 4413: the client fell behind its outbound queue's budget.")
RATE_LIMITED = Counter(
    "parley_rate_limited_total", "Requests, frames and handshakes refused by a limit, by the limit "
    "(frames, messages, history, sockets_per_user, handshakes_per_ip, handshakes_per_user, "
    "rooms_created, searches, connections).", ["limit"])
GAP_FILLS = Counter(
    "parley_gap_fills_total", "Reads of missed messages from the database by one socket: reason=gap "
    "(a seq arrived ahead of a missing one), reason=resync (the Redis subscription came back).", ["reason"])

# --- read from the engine at scrape time (sync) ------------------------------------------------

DELIVERIES = Counter("parley_deliveries_total",
                     "Room events handed to local sockets (one per receiving socket per broadcast).")
BROADCASTS = Counter("parley_broadcasts_total", "Room events delivered by this process's hubs (messages, "
                     "presence, typing, custom).")
DROPPED_PUBLISHES = Counter(
    "parley_redis_publishes_dropped_total", "Room events whose copy for the other processes Redis did not "
    "take (down past the client's retries, or the queue full): this process's sockets had them, the others "
    "read them from the database when their subscription is back.")
WRITER_SOCKETS = Counter(
    "parley_writer_sockets_total", "Sockets by how their frames are written: path=direct (prepared frames "
    "straight to uvicorn's transport) or path=asgi with the reason the direct write was expected and not used.",
    ["path", "reason"])
FALLBACK_FRAMES = Counter(
    "parley_writer_fallback_frames_total", "Frames of directly written sockets that took the ASGI send, by reason "
    "(transport-paused: the client reads slowly; closing; handshake; continuation).", ["reason"])
DB_QUEUE = Gauge("parley_db_queue_depth",
                 "Jobs waiting for this process's database thread (writes and reads), when read.",
                 multiprocess_mode="livesum")


class RedisUp(Collector):
    """parley_redis_up: a PING when scraped, by the process that answers the scrape (Redis'
    reachability is the machine's, so one worker's answer stands for all)."""

    HELP = "1 if Redis (REDIS_URL) answered a PING when scraped, 0 if not; absent without REDIS_URL."

    def describe(self) -> Iterator[Metric]:
        # What register() asks for instead of calling collect(), which needs Django ready.
        yield GaugeMetricFamily("parley_redis_up", self.HELP)

    def collect(self) -> Iterator[Metric]:
        from parley.conf import parley_settings
        from parley.health import redis_problem

        if parley_settings.REDIS_URL:
            yield GaugeMetricFamily("parley_redis_up", self.HELP, value=0 if redis_problem() else 1)


class _Copied:
    """Counters copied from plain integers: what was copied so far, so each sync adds the rest."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], total: int, counter: Any) -> None:
        before = self.seen.get(key, 0)
        if total < before:  # the engine's counter was reset (tests): start again from it
            before = 0
        if total > before:
            counter.inc(total - before)
        self.seen[key] = total


_copied = _Copied()


def sync() -> None:
    """Copy the engine's counters and gauges into the metrics."""
    from parley.realtime import dbthread, hub, writer

    stats = hub.stats
    fallbacks = writer.fallbacks
    with _copied.lock:
        _copied.add(("deliveries",), stats.deliveries, DELIVERIES)
        _copied.add(("broadcasts",), stats.broadcasts, BROADCASTS)
        _copied.add(("dropped_publishes",), stats.dropped_publishes, DROPPED_PUBLISHES)
        _copied.add(("sockets", "direct"), fallbacks.direct, WRITER_SOCKETS.labels("direct", ""))
        for reason, count in list(fallbacks.socket_reasons.items()):
            _copied.add(("sockets", "asgi", reason), count, WRITER_SOCKETS.labels("asgi", reason))
        for reason, count in list(fallbacks.frame_reasons.items()):
            _copied.add(("frames", reason), count, FALLBACK_FRAMES.labels(reason))
    DB_QUEUE.set(dbthread.database_thread.pending())


def exposition() -> bytes:
    """The metrics in Prometheus' text format: this process's, or every worker's (multi-process)."""
    sync()
    if MULTIPROC_DIR:
        from prometheus_client import multiprocess

        forget_dead_workers()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(RedisUp())
        return generate_latest(registry)
    return generate_latest()


def forget_dead_workers() -> None:
    """Drop the live gauges (open sockets, queue depth) of processes that are gone.

    prometheus_client leaves that to a `mark_process_dead(pid)` call when a worker exits, but a
    uvicorn worker ends on SIGTERM by re-raising the signal (no atexit), and a killed one runs
    nothing at all; so the worker answering a scrape checks the files' pids instead."""
    from prometheus_client import multiprocess

    for path in Path(MULTIPROC_DIR).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), MULTIPROC_DIR)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def refused(limit: str) -> None:
    """Count one refusal by the named limit (parley_rate_limited_total)."""
    RATE_LIMITED.labels(limit).inc()


def _sync_forever() -> None:
    import time

    from django.apps import apps

    while True:
        time.sleep(SYNC_INTERVAL_SECS)
        if not apps.ready:  # importing the engine before Django is set up would race its start
            continue
        try:
            sync()
        except Exception:  # never let a metrics hiccup end the thread
            pass


def _start_multiprocess_sync() -> None:
    threading.Thread(target=_sync_forever, name="parley-metrics", daemon=True).start()


if MULTIPROC_DIR:
    _start_multiprocess_sync()
else:
    REGISTRY.register(RedisUp())
