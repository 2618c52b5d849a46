"""parley.realtime.uvicorn_writer: broadcasts framed once and written straight to uvicorn's
websockets-sansio sockets, and parley.realtime.writer's choice of writer and fallback count.

The unit tests pin the frame bytes to what websockets itself writes; the server tests run the
real config.asgi.application under an in-process uvicorn (websockets-sansio, as scripts/serve)
and a real WebSocket client, and count which path each frame took. tests/test_uvicorn_contract.py
checks what the adapter reads of uvicorn against the installed version.
"""

from __future__ import annotations

import asyncio
import json
import socket
import warnings
from typing import Any

import pytest
from websockets.frames import Opcode
from websockets.protocol import SERVER, Protocol

from parley import fanout, protocol
from parley.realtime import uvicorn_writer
from parley.realtime.writer import AsgiWriter, fallbacks, writer_for
from tests.conftest import make_room, make_token, make_user, override_parley
from tests.support.inprocess import *  # noqa: F403  (the `server` fixture)
from tests.support.inprocess import open_and_join
from tests.support.server import ServerProcess


def websockets_writes(text: str) -> bytes:
    """What websockets' own server-side protocol writes for send_text (uvicorn calls it)."""
    proto = Protocol(SERVER)
    proto.send_text(text.encode())
    return b"".join(proto.data_to_send())


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_text_frame_is_the_bytes_websockets_would_write(length):
    text = ("é" * length)[:length]  # two UTF-8 bytes per char: crosses the length encodings
    assert uvicorn_writer.text_frame(text) == websockets_writes(text)
    assert uvicorn_writer.text_frame(text)[0] == 0x80 | Opcode.TEXT.value  # FIN, text, unmasked


def test_a_broadcast_is_framed_once_for_all_its_recipients():
    text = json.dumps({"type": "message", "n": 1})
    first = uvicorn_writer.prepared(text)
    assert uvicorn_writer.prepared(text) is first  # the same str object: the cached bytes
    other = "".join(["{", text[1:]])  # equal, but another object: framed again, same bytes
    assert other is not text and uvicorn_writer.prepared(other) == first
    assert uvicorn_writer.prepared("x") == websockets_writes("x")


@pytest.fixture(autouse=True)
def fresh_fallbacks():
    fallbacks.reset()
    yield
    fallbacks.reset()


async def test_any_other_send_gets_the_asgi_writer_and_is_not_a_fallback():
    async def asgi_send(message: dict[str, Any]) -> None:
        pass

    class NotUvicorn:
        async def send(self, message: dict[str, Any]) -> None:
            pass

    for send in (asgi_send, NotUvicorn().send):  # e.g. the test communicator, daphne
        writer = writer_for(send)
        assert type(writer) is AsgiWriter
        assert writer.unsent_bytes() == 0 and writer.close_now(4413, 1.0) is False
    assert fallbacks.sockets == 0  # nobody expected the direct path there


def test_a_uvicorn_without_the_attributes_it_reads_falls_back_and_is_counted(caplog):
    """A future uvicorn that renames what the adapter reads: the ASGI send, counted, logged once."""

    class Renamed(uvicorn_writer.WebSocketsSansIOProtocol):  # type: ignore[misc]
        def __init__(self) -> None:  # no uvicorn state at all
            pass

    assert type(writer_for(Renamed().send)) is AsgiWriter
    assert type(writer_for(Renamed().send)) is AsgiWriter
    assert fallbacks.sockets == 2 and fallbacks.socket_reasons == {"uvicorn-changed": 2}
    logged = [r.getMessage() for r in caplog.records if r.name == "parley.realtime.writer"]
    assert len(logged) == 1 and "re-review parley/realtime/uvicorn_writer.py" in logged[0]


def test_uvicorns_other_websocket_implementations_are_counted_fallbacks():
    with warnings.catch_warnings():  # uvicorn's legacy implementation warns that it is deprecated
        warnings.simplefilter("ignore")
        from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

    proto = WebSocketProtocol.__new__(WebSocketProtocol)  # its send is all the adapter looks at
    assert type(writer_for(proto.send)) is AsgiWriter
    assert fallbacks.socket_reasons == {"ws-implementation": 1}


@override_parley(PREPARED_FRAMES=False)
def test_with_prepared_frames_off_nothing_is_a_fallback():
    class Renamed(uvicorn_writer.WebSocketsSansIOProtocol):  # type: ignore[misc]
        def __init__(self) -> None:
            pass

    assert type(writer_for(Renamed().send)) is AsgiWriter
    assert fallbacks.sockets == 0


# --- the write path the server says at start -------------------------------------------------------

def test_the_production_flags_write_directly():
    from config import serve

    direct, line = uvicorn_writer.write_path(serve.WS_PROTOCOL, False, True)
    assert direct and line.startswith("write path: direct") and serve.WS_PROTOCOL in line
    assert uvicorn_writer.write_path("websockets-sansio", False, True)[0]


@pytest.mark.parametrize(("ws", "deflate", "prepared", "direct", "says"), [
    ("websockets", False, True, False, "fallback: --ws websockets is not uvicorn's websockets-sansio"),
    ("websockets-sansio", False, False, False, "ASGI send (PARLEY_PREPARED_FRAMES=0)"),
    ("websockets-sansio", True, True, True, "sockets that negotiate permessage-deflate take the ASGI send"),
    ("parley.nowhere:Protocol", False, True, False, "fallback: --ws parley.nowhere:Protocol cannot be imported"),
    ("none", False, True, False, "write path: none"),
])
def test_the_start_line_says_why_frames_take_the_asgi_send(ws, deflate, prepared, direct, says):
    with warnings.catch_warnings():  # uvicorn's legacy implementation warns that it is deprecated
        warnings.simplefilter("ignore")
        got_direct, line = uvicorn_writer.write_path(ws, deflate, prepared)
    assert got_direct is direct and says in line


@pytest.mark.slow
def test_a_server_process_logs_its_write_path_once_at_start():
    """config/serve.py, as scripts/serve runs it: one line, and a `--ws` given on the command
    line (it wins over Parley's) is reported as the fallback it is."""
    srv = ServerProcess()
    try:
        for args, expected in (([], "[parley] write path: direct"),
                               (["--ws", "websockets"], "[parley] write path: ASGI send (fallback: --ws websockets ")):
            srv.server_args = args  # the same data dir, migrated once
            srv.start()
            srv.stop()
            this_start = srv.log_path.read_text().split(f"--- start {srv.starts} ---")[1]
            lines = [line for line in this_start.splitlines() if "write path:" in line]
            assert len(lines) == 1 and lines[0].startswith(expected), lines
    finally:
        srv.cleanup()


# --- one write per socket per pass of the event loop -------------------------------------------

class FakeConnection:
    """What DirectWriter reads of a uvicorn websockets-sansio connection, with its writes logged
    (a unit test of the one-write-per-pass batching; the real connection is in the server tests)."""

    def __init__(self, log: list[Any]) -> None:
        from websockets.protocol import OPEN

        self.conn = type("Conn", (), {"state": OPEN, "expect_continuation_frame": False})()
        self.transport = type("Transport", (), {"write": lambda _self, data: log.append(("transport", data))})()
        self.writable = asyncio.Event()
        self.writable.set()
        self.disconnected = self.close_sent = False
        self.handshake_complete = True
        self.initial_response = None


async def test_the_frames_of_one_pass_leave_in_one_write_in_order():
    log: list[Any] = []
    proto = FakeConnection(log)
    async def asgi_send(message: dict[str, Any]) -> None:
        log.append(("asgi", message["text"]))

    writer = uvicorn_writer.DirectWriter(asgi_send, proto)
    assert writer.write("a") is None and writer.write("b") is None and writer.write("c") is None
    assert log == []  # held until the pass ends
    await asyncio.sleep(0)
    assert log == [("transport", uvicorn_writer.text_frame("a") + uvicorn_writer.text_frame("b") + uvicorn_writer.text_frame("c"))]
    assert writer.write("d") is None
    writer.flush()  # at once, e.g. before a close
    await asyncio.sleep(0)
    assert log[1:] == [("transport", uvicorn_writer.text_frame("d"))]  # and not again when the pass ends
    assert writer.write("e") is None
    proto.close_sent = True  # a close frame went out meanwhile: nothing may follow it
    await asyncio.sleep(0)
    assert len(log) == 2


async def test_held_frames_go_before_anything_the_asgi_send_writes():
    from parley.realtime.outbound import Outbound

    log: list[Any] = []
    proto = FakeConnection(log)

    async def asgi_send(message: dict[str, Any]) -> None:
        log.append(("asgi", message["text"]))

    out = Outbound(asgi_send, close=lambda code: asyncio.sleep(0), on_overflow=lambda: None)
    out._writer = uvicorn_writer.DirectWriter(asgi_send, proto)  # as writer_for() gives one under uvicorn
    out.put("first")
    proto.writable.clear()  # the transport paused: the next frame goes through the ASGI send
    out.put("second")
    await asyncio.sleep(0)
    assert log == [("transport", uvicorn_writer.text_frame("first")), ("asgi", "second")]
    assert fallbacks.frames == 1 and fallbacks.frame_reasons == {"transport-paused": 1}


# --- a real uvicorn in this event loop ---------------------------------------------------------

class PathCounter:
    """Counts DirectWriter.write calls by the path they took, read off `fallbacks`: a write that
    did not add a frame fallback was written directly."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.direct = 0
        self.fallback = 0
        original = uvicorn_writer.DirectWriter.write

        def counting(writer: uvicorn_writer.DirectWriter, text: str) -> Any:
            before = fallbacks.frames
            blocked = original(writer, text)
            if fallbacks.frames == before:
                self.direct += 1
            else:
                self.fallback += 1
            return blocked

        monkeypatch.setattr(uvicorn_writer.DirectWriter, "write", counting)


async def frames_until(ws: Any, kind: str, count: int) -> list[dict[str, Any]]:
    got = []
    while len(got) < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            got.append(frame)
    return got


@pytest.mark.django_db(transaction=True)
async def test_broadcasts_reach_every_socket_written_directly(server, monkeypatch):
    paths = PathCounter(monkeypatch)
    alice = await make_user("alice")
    room = await make_room("lobby", owner=alice)
    token = await make_token(alice)
    sockets = [await open_and_join(server, token, "lobby") for _ in range(3)]
    try:
        await sockets[0].send(json.dumps({"type": "send", "ref": "s", "room": "lobby", "text": "héllo 👋"}))
        for ws in sockets:
            (frame,) = await frames_until(ws, "message", 1)
            assert frame["message"]["text"] == "héllo 👋" and frame["room"] == room.slug
        assert paths.direct >= 3 and paths.fallback == 0
        assert fallbacks.sockets == 0 and fallbacks.frames == 0
    finally:
        for ws in sockets:
            await ws.close()


async def publish_fake(room: Any, seq: int, text: str) -> None:
    """A room message event as parley.fanout builds it, without the database (any size)."""
    frame, size = protocol.encode_sized(
        {"type": "message", "room": room.slug, "message": {"seq": seq, "text": text, "fake": True}})
    await fanout.broadcast(room.pk, {"type": "chat.message", "room_id": room.pk, "seq": seq,
                                     "frame": frame, "size": size})


async def eventually(check: Any, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.django_db(transaction=True)
# The backlog this test builds on purpose must not trip the slow-reader cut-off (4413).
@override_parley(OUTBOUND_MAX_BYTES=256 * 2**20, OUTBOUND_MAX_MESSAGES=100_000)
async def test_a_slow_reader_falls_back_to_the_asgi_send_and_still_gets_every_frame_in_order(server, monkeypatch):
    """The client stops reading: the server's transport pauses, DirectWriter declines, the
    outbound queue's writer task takes over through the ASGI send; when the client reads again
    the direct path resumes. Nothing is lost, doubled or reordered across the switches."""
    paths = PathCounter(monkeypatch)
    alice = await make_user("alice")
    room = await make_room("lobby", owner=alice)
    token = await make_token(alice)
    # A small receive buffer and max_queue=1: the client stops reading the TCP socket as soon as
    # one frame waits unread, and the kernel holds little for it; the server's transport pauses.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", int(server.split(":")[2].split("/")[0])))
    ws = await open_and_join(server, token, "lobby", max_queue=1, max_size=2**20, sock=sock)
    try:
        seq = 0
        while paths.fallback == 0 and seq < 1000:  # up to 60 MB; a few MB pause it
            for _ in range(20):
                seq += 1
                await publish_fake(room, seq, f"{seq:05d} " + "x" * 60_000)
            await asyncio.sleep(0.01)  # a pass of the loop: the held frames are written (uvicorn_writer._Tick)
            await eventually(lambda sent=seq: paths.direct + paths.fallback >= sent - 20, timeout=5)
        assert paths.fallback >= 1, "the transport never paused"
        assert fallbacks.frame_reasons["transport-paused"] == fallbacks.frames == paths.fallback
        got = await frames_until(ws, "message", seq)
        assert [f["message"]["seq"] for f in got] == list(range(1, seq + 1))
        assert all(f["message"]["text"].startswith(f"{f['message']['seq']:05d} ") for f in got)
        direct_before = paths.direct
        await publish_fake(room, seq + 1, "after")
        (frame,) = await frames_until(ws, "message", 1)
        assert frame["message"]["seq"] == seq + 1
        assert paths.direct == direct_before + 1  # caught up: written directly again
    finally:
        await ws.close()


@pytest.mark.django_db(transaction=True)
@override_parley(PREPARED_FRAMES=False)
async def test_prepared_frames_off_sends_everything_through_asgi(server, monkeypatch):
    paths = PathCounter(monkeypatch)
    alice = await make_user("alice")
    await make_room("lobby", owner=alice)
    token = await make_token(alice)
    ws = await open_and_join(server, token, "lobby")
    try:
        await ws.send(json.dumps({"type": "send", "ref": "s", "room": "lobby", "text": "hi"}))
        (frame,) = await frames_until(ws, "message", 1)
        assert frame["message"]["text"] == "hi"
        assert paths.direct == paths.fallback == 0
        assert fallbacks.sockets == fallbacks.frames == 0  # the direct path was not expected
    finally:
        await ws.close()
