"""A client that stops reading: what the kernel holds for it counts, and its close does not wait.

Under a real uvicorn (websockets-sansio, in the test's process: tests/support/inprocess.py) with
raw TCP clients that complete the handshake and then read nothing. tests/test_server_stalled.py
runs the same against a server process with many such clients in a busy room.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from parley import consumers
from parley.realtime import uvicorn_writer
from tests.conftest import make_room, make_token, make_user, override_parley
from tests.support import rawws
from tests.support.inprocess import *  # noqa: F403  (the `server` fixture)
from tests.test_wire import publish_fake

pytestmark = pytest.mark.django_db(transaction=True)


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def stalled_client(url: str, token: str, room: str) -> socket.socket:
    return await asyncio.to_thread(rawws.stalled_client, port_of(url), token, room)


def server_end(server_port: int, client_port: int) -> tuple[int, int] | None:
    """(TCP state, bytes in the send queue) of the server's end of that connection, or None."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16) == server_port
                    and int(fields[2].split(":")[1], 16) == client_port):
                return int(fields[3], 16), int(fields[4].split(":")[0], 16)
    return None


async def gone(server_port: int, client_port: int, timeout: float) -> bool:
    """The server's end of the connection is gone (or in TIME_WAIT) within timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        end = server_end(server_port, client_port)
        if end is None or end[0] == 6:
            return True
        await asyncio.sleep(0.05)
    return False


async def fill(room: Any, until: Any, *, size: int = 60_000, most: int = 500) -> int:
    """Broadcast big frames to the room until `until()` (or `most` of them); how many it took."""
    for seq in range(1, most + 1):
        await publish_fake(room, seq, "x" * size)
        if until():
            return seq
        if seq % 10 == 0:
            await asyncio.sleep(0.01)  # a pass of the loop: held frames are written (parley.realtime.uvicorn_writer)
    return most


async def test_unsent_bytes_counts_the_kernels_send_queue():
    """The transport's buffer alone misses what the kernel holds: megabytes on loopback."""
    transports: list[asyncio.Transport] = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    srv = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    try:
        await asyncio.to_thread(client.connect, srv.sockets[0].getsockname())
        while not transports:
            await asyncio.sleep(0.01)
        transport = transports[0]
        transport.write(b"x" * 8_000_000)
        await asyncio.sleep(0.2)
        held = uvicorn_writer.unsent_bytes(SimpleNamespace(transport=transport, disconnected=False))
        in_buffer = transport.get_write_buffer_size()
        assert held > in_buffer + 100_000  # the kernel's share
        assert held <= 8_000_000
    finally:
        client.close()
        srv.close()


@override_parley(OUTBOUND_MAX_BYTES=1024 * 1024, CLOSE_GRACE_SECS=0.5)
async def test_a_reader_that_stops_is_cut_counting_the_kernel_then_reset_and_its_slot_freed(server, monkeypatch):
    alice = await make_user("alice")
    room = await make_room("lobby", owner=alice)
    seen: list[tuple[int, int | None]] = []
    overflow = consumers.ChatConsumer._on_outbound_overflow

    def spy(self: Any) -> None:
        # (what the server holds below the dropped queue, the user's sockets after the close)
        seen.append((getattr(self.outbound, "unsent", 0), None))
        overflow(self)
        seen[-1] = (seen[-1][0], consumers._sockets_per_user.get(alice.pk))

    monkeypatch.setattr(consumers.ChatConsumer, "_on_outbound_overflow", spy)  # before the socket binds it
    sock = await stalled_client(server, await make_token(alice), "lobby")
    await asyncio.sleep(0.2)
    assert consumers._sockets_per_user.get(alice.pk) == 1
    sent = await fill(room, lambda: bool(seen))
    try:
        assert seen, f"never cut after {sent} frames of 60 KB"
        ((unsent, slot_after),) = seen
        assert unsent > 0  # the kernel's and the transport's share, counted against the budget
        assert slot_after is None  # the user's socket slot is free at once, not at the reset
        client_port = sock.getsockname()[1]
        assert await gone(port_of(server), client_port, timeout=3), server_end(port_of(server), client_port)
        # What the server took for the socket beyond what it still held below the queue (the
        # client's own buffers, the dropped queue) is far under the budget: the kernel's share
        # counted, so the cut came as soon as the socket fell behind.
        assert sent * 60_000 - unsent < 512 * 1024, (sent, unsent)
    finally:
        sock.close()


@override_parley(OUTBOUND_MAX_BYTES=256 * 2**20, OUTBOUND_MAX_MESSAGES=100_000, FRAMES_PER_SEC=1, FRAMES_BURST=1, RATE_LIMIT_STRIKES=3, CLOSE_GRACE_SECS=0.5)
async def test_a_close_queued_behind_a_backlog_the_client_never_reads_does_not_wait_for_it(server):
    """4429 after a flood from a client that also stopped reading: the close waits for the
    queued frames at most PARLEY_CLOSE_GRACE_SECS, then the connection is reset after another."""
    alice = await make_user("alice")
    room = await make_room("lobby", owner=alice)
    sock = await stalled_client(server, await make_token(alice), "lobby")
    await asyncio.sleep(0.2)
    server_port, client_port = port_of(server), sock.getsockname()[1]

    def behind() -> bool:
        end = server_end(server_port, client_port)
        return end is not None and end[1] > 500_000

    await fill(room, behind, most=200)  # the kernel is full: frames now queue in the server
    await fill(room, lambda: False, most=20)
    try:
        for _ in range(6):  # beyond the frame rate: rate_limited, three strikes, 4429
            rawws.send_frame(sock, {"type": "ping"})
        await asyncio.sleep(0.3)
        assert consumers._sockets_per_user.get(alice.pk) is None or await gone(server_port, client_port, 3)
        assert await gone(server_port, client_port, timeout=4), server_end(server_port, client_port)
    finally:
        sock.close()
