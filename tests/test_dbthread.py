"""chat.dbthread: socket-side database work runs on one thread, one call at a time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import connection

from chat.dbthread import DatabaseThread, database_thread
from chat.models import Room
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
    monkeypatch.setattr("chat.dbthread.close_old_connections", lambda: calls.append(1))
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
