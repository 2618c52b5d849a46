"""parley.realtime.outbound: frames go out at once while the socket keeps up, queue (bounded) when it does not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.realtime.outbound import Outbound
from tests.conftest import override_parley


class FakeSocket:
    """An ASGI send whose transport can be paused, like uvicorn's (it awaits `writable`)."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[str] = []
        self.closed_with: list[int] = []
        self.overflows = 0
        self.cancelled = 0
        self.gone = False

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.writable.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.gone:
            raise OSError("client disconnected")
        self.sent.append(message["text"])

    async def close(self, code: int) -> None:
        self.closed_with.append(code)

    def overflow(self) -> None:
        self.overflows += 1

    def outbound(self) -> Outbound:
        return Outbound(self.send, self.close, self.overflow)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_are_written_at_once_without_a_writer_task():
    sock = FakeSocket()
    out = sock.outbound()
    for i in range(3):
        out.put(f"f{i}")
        assert sock.sent == [f"f{j}" for j in range(i + 1)]  # before any await: written in put()
    assert out._drainer is None and out.backlog == (0, 0)


async def test_a_paused_socket_queues_in_order_and_the_writer_catches_up():
    sock = FakeSocket()
    out = sock.outbound()
    out.put("a")
    sock.writable.clear()  # the client stops reading: the kernel buffer is full
    out.put("b")  # this send suspends; a writer task takes it over
    out.put("c")
    out.put("d")
    await settle()
    assert sock.sent == ["a"] and out.backlog == (2, 2)
    sock.writable.set()
    await settle()
    assert sock.sent == ["a", "b", "c", "d"] and out.backlog == (0, 0)
    assert out._drainer is None  # caught up: back to writing at once
    out.put("e")
    assert sock.sent[-1] == "e"


@override_parley(OUTBOUND_MAX_MESSAGES=3)
async def test_a_socket_too_far_behind_is_cut_off_and_its_backlog_dropped():
    sock = FakeSocket()
    out = sock.outbound()
    sock.writable.clear()
    for i in range(5):
        out.put(f"f{i}")
    assert out.closed and sock.overflows == 1 and out.backlog == (0, 0)
    out.put("late")  # ignored once closed
    assert out.backlog == (0, 0) and sock.overflows == 1


@override_parley(OUTBOUND_MAX_BYTES=10)
async def test_the_byte_budget_counts_utf8_bytes():
    sock = FakeSocket()
    out = sock.outbound()
    sock.writable.clear()
    out.put("in flight")
    out.put("ééééé")  # 10 bytes: within the budget
    assert not out.closed and out.backlog == (1, 10)
    out.put("x")
    assert out.closed and sock.overflows == 1


async def test_close_after_flush_writes_what_is_queued_then_closes():
    sock = FakeSocket()
    out = sock.outbound()
    sock.writable.clear()
    out.put("error frame")
    out.close_after_flush(4429)
    out.put("after the close")  # refused: the socket is closing
    sock.writable.set()
    await settle()
    assert sock.sent == ["error frame"] and sock.closed_with == [4429]


async def test_close_after_flush_on_an_idle_socket_closes_at_once():
    sock = FakeSocket()
    out = sock.outbound()
    out.put("hello")
    out.close_after_flush(4429)
    await settle()
    assert sock.sent == ["hello"] and sock.closed_with == [4429]


async def test_stop_cancels_a_write_waiting_on_the_transport():
    sock = FakeSocket()
    out = sock.outbound()
    sock.writable.clear()
    out.put("stuck")
    out.put("queued")
    await settle()
    out.stop()
    await settle()
    assert sock.cancelled == 1 and sock.sent == [] and out.backlog == (0, 0)
    sock.writable.set()
    await settle()
    assert sock.sent == []


@pytest.mark.parametrize("paused", [False, True])
async def test_a_send_that_fails_marks_the_queue_closed_without_raising(paused):
    sock = FakeSocket()
    out = sock.outbound()
    sock.gone = True
    if paused:
        sock.writable.clear()
    out.put("to nobody")
    out.put("also to nobody")
    sock.writable.set()
    await settle()
    assert out.closed and sock.sent == [] and out.backlog == (0, 0)


async def test_a_writer_task_stopped_before_it_ran_leaves_no_unawaited_coroutine():
    import gc
    import warnings

    sock = FakeSocket()
    out = sock.outbound()
    sock.writable.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out.put("stuck")  # the send suspends: a writer task is made, but has not run yet
        out.stop()
        await settle()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert sock.sent == [] and out.backlog == (0, 0)
