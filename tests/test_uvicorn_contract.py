"""What parley/realtime/uvicorn_writer.py relies on in uvicorn and websockets, checked against the
installed versions by introspection.

At runtime the adapter only notices a missing attribute (the socket then takes the ASGI send and
is counted in parley.realtime.writer.fallbacks); it cannot notice that uvicorn's `send` makes a
new check before a frame, or that its close no longer waits for `close_timer`. So every uvicorn
method whose behaviour the adapter copies is pinned here by its source: a failure means "read
the new uvicorn code against the adapter, fix what differs, then record what you reviewed
below". No server runs here; tests/test_wire.py and tests/test_slow_reader.py run the adapter
under a real uvicorn.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import textwrap

import pytest
import uvicorn
import websockets
from uvicorn.config import WS_PROTOCOLS, Config
from uvicorn.importer import import_from_string
from uvicorn.server import ServerState

from parley.realtime import uvicorn_writer
from parley.realtime.uvicorn_writer import ADAPTER, CONNECTION_ATTRS, PROTOCOL_ATTRS

REVIEWED_WITH = {"uvicorn": "0.54.0", "websockets": "17.4"}

# sha256 (first 16 hex digits) of the dedented source of each uvicorn WebSocketsSansIOProtocol
# method the adapter mirrors or depends on, as reviewed:
# - send: DirectWriter.write makes the checks its data-frame branch makes; close_now is its
#   `websocket.close` branch without the wait for a writable transport;
# - handle_close: on the peer's close reply it cancels `close_timer` and closes the transport;
# - run_asgi: it closes the transport at the app's end only while `close_timer` is None;
# - connection_lost: sets `disconnected`, sets `writable`, cancels `close_timer`;
# - pause_writing / resume_writing: `writable` is the transport's pause state.
REVIEWED_SOURCE = {
    "send": "560baa5c639d3a4c",
    "handle_close": "6d4f59e51a4ea41d",
    "run_asgi": "632f86c7cd771ab9",
    "connection_lost": "44a325646ee17ef3",
    "pause_writing": "706981ee7dc59872",
    "resume_writing": "0c0d433fc901eba0",
}

# The attributes of `self` uvicorn's send reads or sets, as reviewed: a new one is a new check
# (or new state) the direct write may have to copy.
REVIEWED_SEND_READS = {
    "close_sent", "close_timeout", "close_timer", "conn", "default_headers", "disconnected",
    "handshake_complete", "initial_response", "logger", "loop", "queue", "read_paused", "response",
    "scope", "start_keepalive", "transport", "writable",
}


def changed(library: str, what: str) -> str:
    return (f"{library} changed: re-review {ADAPTER} ({what}). Reviewed with uvicorn "
            f"{REVIEWED_WITH['uvicorn']}, websockets {REVIEWED_WITH['websockets']}; installed: uvicorn "
            f"{uvicorn.__version__}, websockets {websockets.__version__}. After the review, update "
            f"tests/test_uvicorn_contract.py and the pins in pyproject.toml.")


def sansio() -> type:
    cls = uvicorn_writer.WebSocketsSansIOProtocol
    assert cls is not None, changed("uvicorn", "uvicorn.protocols.websockets.websockets_sansio_impl."
                                    "WebSocketsSansIOProtocol cannot be imported")
    return cls


def source_of(func: object) -> str:
    return textwrap.dedent(inspect.getsource(func))  # type: ignore[arg-type]


async def app(scope: object, receive: object, send: object) -> None:
    pass


@pytest.fixture
async def connection() -> object:
    """A real WebSocketsSansIOProtocol as uvicorn builds one per connection (no transport yet)."""
    config = Config(app, ws="websockets-sansio", ws_per_message_deflate=False, lifespan="off",
                    log_config=None)  # leaves the test run's logging alone
    return sansio()(config, ServerState(), {}, _loop=asyncio.get_running_loop())


def test_websockets_sansio_is_the_class_the_adapter_imports():
    cls = sansio()
    assert import_from_string(WS_PROTOCOLS["websockets-sansio"]) is cls, changed(
        "uvicorn", f"--ws websockets-sansio is now {WS_PROTOCOLS.get('websockets-sansio')}")
    from parley.edge import ParleyWebSocketProtocol

    # The server config/serve.py runs: a subclass that keeps uvicorn's own send.
    assert issubclass(ParleyWebSocketProtocol, cls) and ParleyWebSocketProtocol.send is cls.send


async def test_a_connection_has_every_attribute_the_adapter_reads(connection):
    missing = [name for name in PROTOCOL_ATTRS if not hasattr(connection, name)]
    assert not missing, changed("uvicorn", f"WebSocketsSansIOProtocol has no {', '.join(missing)}")
    assert isinstance(connection.writable, asyncio.Event) and connection.writable.is_set(), changed(
        "uvicorn", "`writable` is not an asyncio.Event set while the transport is not paused")
    assert connection.close_timer is None and connection.close_sent is False and connection.disconnected is False
    assert connection.initial_response is None and connection.handshake_complete is False
    from websockets.server import ServerProtocol

    assert isinstance(connection.conn, ServerProtocol), changed("uvicorn", "`conn` is not websockets' ServerProtocol")
    missing = [name for name in CONNECTION_ATTRS if not hasattr(connection.conn, name)]
    assert not missing, changed("websockets", f"ServerProtocol has no {', '.join(missing)}")
    assert connection.conn.extensions == [] and connection.conn.expect_continuation_frame is False


async def test_writable_follows_the_transports_pause(connection):
    connection.pause_writing()
    assert not connection.writable.is_set(), changed("uvicorn", "pause_writing() no longer clears `writable`")
    connection.resume_writing()
    assert connection.writable.is_set(), changed("uvicorn", "resume_writing() no longer sets `writable`")


async def test_send_is_a_coroutine_function_of_one_message(connection):
    cls = sansio()
    assert inspect.iscoroutinefunction(cls.send), changed("uvicorn", "send is not an `async def`")
    params = list(inspect.signature(cls.send).parameters)
    assert params == ["self", "message"], changed("uvicorn", f"send takes {params}")
    bound = connection.send
    assert bound.__self__ is connection and bound.__func__ is cls.send  # what adapt() recognises
    # The hand-driven send (parley.realtime.writer.start_send) drives what send returns with
    # send()/throw()/close(): it must be a coroutine, not just an awaitable.
    coro = bound({"type": "websocket.send", "text": "x"})
    try:
        assert inspect.iscoroutine(coro), changed("uvicorn", f"send returns {type(coro)}")
    finally:
        coro.close()


def test_send_reads_what_was_reviewed():
    tree = ast.parse(source_of(sansio().send))
    reads = {node.attr for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    assert reads == REVIEWED_SEND_READS, changed(
        "uvicorn", f"send now also reads {sorted(reads - REVIEWED_SEND_READS)} and no longer "
        f"{sorted(REVIEWED_SEND_READS - reads)}")


@pytest.mark.parametrize("method", sorted(REVIEWED_SOURCE))
def test_the_methods_the_adapter_mirrors_are_as_reviewed(method):
    func = getattr(sansio(), method, None)
    assert func is not None, changed("uvicorn", f"WebSocketsSansIOProtocol.{method} is gone")
    digest = hashlib.sha256(source_of(func).encode()).hexdigest()[:16]
    assert digest == REVIEWED_SOURCE[method], changed(
        "uvicorn", f"WebSocketsSansIOProtocol.{method} is not the code reviewed (source sha256 {digest})")


def test_websockets_frames_are_built_as_the_adapter_builds_them():
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN, SERVER, Protocol, State

    assert OPEN is State.OPEN, changed("websockets", "websockets.protocol.OPEN is not State.OPEN")
    params = inspect.signature(Frame.serialize).parameters
    assert {"mask", "extensions"} <= set(params), changed("websockets", f"Frame.serialize takes {list(params)}")
    assert Opcode.TEXT.value == 1
    proto = Protocol(SERVER)
    proto.send_text("héllo".encode())
    assert uvicorn_writer.text_frame("héllo") == b"".join(proto.data_to_send()), changed(
        "websockets", "a server text frame is no longer the bytes Frame.serialize(mask=False) makes")
