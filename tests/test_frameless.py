"""parley.realtime.frameless: the URL router and consumer app that keep no coroutine frame per socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.compatibility import guarantee_single_callable
from django.urls import path, re_path

from parley.consumers import ChatConsumer
from parley.realtime.frameless import FramelessProtocolTypeRouter, FramelessURLRouter
from parley.realtime.outbound import RAW_SEND_KEY
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _recorder(seen: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> str:
        seen.append(scope)
        return "ran"
    return app


async def test_routes_like_channels_url_router():
    seen: list[dict[str, Any]] = []
    router = FramelessURLRouter([
        path("ws/rooms/<slug:room>/", _recorder(seen), {"extra": 1}),
        re_path(r"^ws/chat/$", _recorder(seen)),
    ])
    awaitable = router({"type": "websocket", "path": "/ws/rooms/lobby/"}, None, None)
    assert seen == []  # nothing ran yet: the call only hands back the routed app's awaitable
    assert await awaitable == "ran"
    assert seen[0]["url_route"] == {"args": (), "kwargs": {"room": "lobby", "extra": 1}}
    assert await router({"type": "websocket", "path": "/app/ws/chat/", "root_path": "/app"}, None, None) == "ran"
    with pytest.raises(ValueError, match="No route found"):
        router({"type": "websocket", "path": "/nowhere/"}, None, None)


async def test_routes_by_protocol_like_channels_protocol_type_router():
    seen: list[dict[str, Any]] = []
    router = FramelessProtocolTypeRouter({"websocket": _recorder(seen)})
    assert await router({"type": "websocket"}, None, None) == "ran" and len(seen) == 1
    with pytest.raises(ValueError, match="No application configured for scope type 'http'"):
        router({"type": "http"}, None, None)


def test_look_like_asgi3_single_callables():
    """asgiref (WebsocketCommunicator) would call a plain function as an ASGI 2 app otherwise."""
    router, protocols = FramelessURLRouter([]), FramelessProtocolTypeRouter({})
    app = ChatConsumer.as_asgi()
    assert asyncio.iscoroutinefunction(router.__call__) and asyncio.iscoroutinefunction(app)
    assert asyncio.iscoroutinefunction(protocols.__call__)
    assert guarantee_single_callable(app) is app
    assert app.consumer_class is ChatConsumer  # type: ignore[attr-defined]


def _suspended_chain(task: asyncio.Task[Any]) -> list[Any]:
    """The coroutines a task is suspended in, outermost first."""
    chain, coro = [], task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        chain.append(coro)
        coro = coro.cr_await
    return chain


async def test_an_open_socket_keeps_one_scope_copy_and_no_router_frame(connect):
    """What an idle socket holds on to: no router or as_asgi frame, and BearerTokenAuth's frame
    keeps no copy of the scope (the consumer's copy is the one that lives)."""
    client = await connect(await make_user("ada"))
    chain = _suspended_chain(client.ws.future)
    names = [coro.cr_code.co_qualname for coro in chain]
    assert not {"ProtocolTypeRouter.__call__", "URLRouter.__call__", "AsyncConsumer.as_asgi.<locals>.app"} & set(names)
    assert "BearerTokenAuth.__call__" in names and "ChatConsumer.__call__" in names
    auth = chain[names.index("BearerTokenAuth.__call__")]
    held = [v for v in auth.cr_frame.f_locals.values() if isinstance(v, dict) and RAW_SEND_KEY in v]
    assert held == []
