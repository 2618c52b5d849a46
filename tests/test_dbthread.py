"""parley.realtime.dbthread: socket-side database work runs on one thread, one call at a time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import connection

from parley.models import Room
from parley.realtime.dbthread import Batched, DatabaseThread, database_thread
from tests.conftest import make_room

pytestmark = pytest.mark.django_db(transaction=True)


async def test_calls_run_on_one_thread_in_order_and_return_their_results():
    seen: list[tuple[str, int]] = []

    def work(i: int) -> int:
        seen.append((threading.current_thread().name, i))
        time.sleep(0.001)
        return i * i

    results = await asyncio.gather(*(database_thread.submit(work, i) for i in range(20)))
    assert results == [i * i for i in range(20)]
    assert [i for _, i in seen] == list(range(20))  # one at a time, in submission order
    assert {name for name, _ in seen} == {"parley-db"}
    assert threading.current_thread().name != "parley-db"


async def test_exceptions_reach_the_caller_and_the_thread_carries_on():
    def boom() -> None:
        raise LookupError("no such thing")

    with pytest.raises(LookupError, match="no such thing"):
        await database_thread.submit(boom)
    assert await database_thread.submit(lambda x, *, y: x + y, 1, y=2) == 3


async def test_it_uses_the_orm_with_its_own_connection_closed_when_stale(monkeypatch):
    """Stale connections are closed around each call, as database_sync_to_async did."""
    await make_room("lobby")
    calls = []
    monkeypatch.setattr("parley.realtime.dbthread.close_old_connections", lambda: calls.append(1))
    assert await database_thread.submit(lambda: list(Room.objects.values_list("slug", flat=True))) == ["lobby"]
    assert calls == [1, 1]
    here = connection.connection
    there = await database_thread.submit(lambda: (connection.ensure_connection(), connection.connection)[1])
    assert there is not None and there is not here


async def test_a_cancelled_caller_does_not_stop_the_thread():
    release = threading.Event()
    thread = DatabaseThread(name="parley-db-test")
    blocked = thread.submit(release.wait, 5)
    blocked.cancel()
    release.set()
    assert await thread.submit(lambda: "still here") == "still here"


def test_synchronous_callers_wait_for_the_result():
    assert database_thread.run(lambda: threading.current_thread().name, timeout=5) == "parley-db"


# --- Batched: the calls made while the thread is busy share one job -------------------------

async def test_batched_calls_made_while_the_thread_is_busy_share_one_call():
    thread = DatabaseThread(name="parley-db-batch")
    calls: list[list[int]] = []

    def many(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * 10 for i in items]

    square = Batched(many, thread=thread)
    assert await square(1) == 10  # an idle thread answers one at once: nothing waits to fill a batch
    release = threading.Event()
    busy = thread.submit(release.wait, 5)
    futures = [square(i) for i in range(2, 7)]
    await asyncio.sleep(0.05)
    assert calls == [[1]] and not any(f.done() for f in futures)
    release.set()
    assert await asyncio.gather(*futures) == [20, 30, 40, 50, 60]
    assert calls == [[1], [2, 3, 4, 5, 6]]
    assert await busy is True


async def test_batched_splits_into_chunks_of_max_items():
    thread = DatabaseThread(name="parley-db-batch")
    calls: list[list[int]] = []
    double = Batched(lambda items: (calls.append(list(items)), [2 * i for i in items])[1], max_items=2, thread=thread)
    release = threading.Event()
    thread.submit(release.wait, 5)
    futures = [double(i) for i in range(5)]
    release.set()
    assert await asyncio.gather(*futures) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1], [2, 3], [4]]


async def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_works():
    thread = DatabaseThread(name="parley-db-batch")

    def many(items: list[int]) -> list[int]:
        if 13 in items:
            raise LookupError("unlucky batch")
        return items

    echo = Batched(many, thread=thread)
    release = threading.Event()
    thread.submit(release.wait, 5)
    futures = [echo(12), echo(13)]
    release.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert await echo(14) == 14
    wrong = Batched(lambda items: [], thread=thread)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await wrong(1)
    assert await thread.submit(lambda: "still here") == "still here"


# --- two lanes on one thread: writes first ---------------------------------------------------

async def test_writes_are_taken_before_waiting_reads_and_each_lane_is_fifo():
    """A write queued behind reads runs as soon as the job running now ends; the reads then run
    in the order they came (parley.realtime.dbthread.ReadLane)."""
    from parley.realtime.dbthread import DatabaseThread, ReadLane

    thread = DatabaseThread("parley-db-lanes")
    reads = ReadLane(thread)
    ran: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def blocker() -> None:
        entered.set()
        release.wait(10)
        ran.append("running")

    first = thread.submit(blocker)
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    waiting = [reads.submit(ran.append, f"read{i}") for i in range(3)]
    write = thread.submit(ran.append, "write")
    release.set()
    await asyncio.gather(first, write, *waiting)
    assert ran == ["running", "write", "read0", "read1", "read2"]
