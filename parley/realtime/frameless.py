"""ASGI layers that keep no coroutine frame per open socket.

An `async def __call__` that ends in `return await inner(...)` stays suspended, with its frame
and every local in it, for as long as the socket it routes is open: each layer costs every
idle socket a few hundred bytes (docs/benchmarks.md, the idle scenario). A plain function that
returns the inner application's awaitable does the same routing and is gone once it returns;
whoever awaited it (the ASGI server, or the layer above) awaits the inner application instead.
The three here are Channels' ProtocolTypeRouter, URLRouter and `as_asgi` app, unchanged in what
they route and how; parley.ws_auth's HandshakeRateLimit and OriginGuard follow the same rule
(BearerTokenAuth cannot: it awaits the token lookup first, so it keeps its frame but no scope).

`markcoroutinefunction` keeps them looking like ASGI 3 single callables to code that checks
(asgiref's guarantee_single_callable, used by WebsocketCommunicator): they return an awaitable.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls.exceptions import Resolver404


class FramelessProtocolTypeRouter(ProtocolTypeRouter):  # type: ignore[misc]  # (Channels is untyped)
    """channels.routing.ProtocolTypeRouter whose call returns the application's awaitable."""

    @markcoroutinefunction
    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        if scope["type"] in self.application_mapping:
            app: Callable[..., Awaitable[Any]] = self.application_mapping[scope["type"]]
            return app(scope, receive, send)
        raise ValueError(f"No application configured for scope type {scope['type']!r}")


class FramelessURLRouter(URLRouter):  # type: ignore[misc]
    """channels.routing.URLRouter whose call returns the routed application's awaitable."""

    @markcoroutinefunction
    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        # The body of URLRouter.__call__ (Channels 4.3), with `return await` made `return`.
        path = scope.get("path_remaining", scope.get("path", None))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path):]
        path = path.lstrip("/")
        for route in self.routes:
            try:
                match = route.pattern.match(path)
                if match:
                    new_path, args, kwargs = match
                    kwargs.update(route.default_args)
                    outer = scope.get("url_route", {})
                    url_route = {"args": outer.get("args", ()) + args,
                                 "kwargs": {**outer.get("kwargs", {}), **kwargs}}
                    callback: Callable[..., Awaitable[Any]] = route.callback
                    return callback(dict(scope, path_remaining=new_path, url_route=url_route), receive, send)
            except Resolver404:
                pass
        if "path_remaining" in scope:
            raise Resolver404(f"No route found for path {path!r}.")
        raise ValueError(f"No route found for path {path!r}.")


def consumer_app(cls: type, **initkwargs: Any) -> Callable[..., Awaitable[Any]]:
    """What AsyncConsumer.as_asgi returns — one consumer instance per connection — as a plain
    function returning the consumer's coroutine."""

    @markcoroutinefunction
    def app(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        consumer: Callable[..., Awaitable[Any]] = cls(**initkwargs)
        return consumer(scope, receive, send)

    app.consumer_class = cls  # type: ignore[attr-defined]
    app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
    functools.update_wrapper(app, cls, updated=())
    return app
