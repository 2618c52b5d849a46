"""Handshake guards for the WebSocket side: rate, Origin checking and bearer-token authentication.

Stack (config/asgi.py): HandshakeRateLimit → OriginGuard → BearerTokenAuth, which resolves a
bearer token itself and hands any other handshake to AuthMiddlewareStack (the session cookie).
The consumer then refuses any handshake whose scope["user"] is not authenticated.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from chat import limits
from chat.dbthread import Batched
from chat.outbound import RAW_SEND_KEY
from chat.selectors import tokens_get_active
from chat.services import tokens_touch

log = logging.getLogger("parley.security")


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The token from `Authorization: Bearer <token>`, or None if the header is absent or not Bearer."""
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def peer(scope: dict[str, Any]) -> str:
    client = scope.get("client") or ("?", 0)
    return f"{client[0]}:{client[1]}"


class HandshakeRateLimit:
    """Refuses (403) WebSocket handshakes from an address over PARLEY_HANDSHAKES_PER_IP_PER_MIN.

    The address is the ASGI scope's client, i.e. the peer as the ASGI server sees it; behind a
    reverse proxy run uvicorn with --proxy-headers so that is the real client.
    """

    def __init__(self, application: Any) -> None:
        self.application = application
        self.buckets = limits.BucketMap(limits.HANDSHAKES_PER_IP_PER_MIN, per=60.0)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        # Not `async def` on purpose (also OriginGuard): returning the inner
        # application's awaitable keeps no coroutine frame of this layer alive for as long as
        # the socket is open — memory every idle socket would pay (docs/benchmarks.md).
        address = (scope.get("client") or ("?", 0))[0]
        if self.buckets.take(address):
            log.warning("refused WebSocket handshake from %s: handshake rate limit", address)
            return WebsocketDenier()(scope, receive, send)
        return self.application(scope, receive, send)


class OriginGuard(OriginValidator):
    """Refuses handshakes from pages on other sites (cross-site WebSocket hijacking).

    Browsers always send Origin, so a handshake without one is not a browser's: it is accepted
    only if it carries a bearer token. Channels' AllowedHostsOriginValidator would refuse those.
    """

    def __init__(self, application: Any) -> None:
        super().__init__(application, settings.ALLOWED_HOSTS)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:  # type: ignore[override]
        origin = header(scope, b"origin")
        if origin is None:
            if bearer_token(scope) is not None:
                return self.application(scope, receive, send)
            log.warning("refused WebSocket handshake without Origin or token from %s", peer(scope))
        elif self.valid_origin(urlparse(origin.decode("latin1"))):
            return self.application(scope, receive, send)
        else:
            log.warning("refused WebSocket handshake from foreign Origin %r (%s)",
                        origin.decode("latin1")[:200], peer(scope))
        return WebsocketDenier()(scope, receive, send)


def _token_users(raws: list[str]) -> list[tuple[Any, int] | None]:
    """(user, token id) for each bearer secret, or None where it authenticates nobody: one query
    for however many handshakes reached the database thread together (a reconnect storm's
    handshakes spent ~2 ms each on the thread when each had its own query; docs/benchmarks.md)."""
    tokens = tokens_get_active(raws=raws)
    tokens_touch(tokens=[t for t in tokens if t is not None])
    return [(t.user, t.pk) if t is not None else None for t in tokens]


_token_user = Batched(_token_users)


class BearerTokenAuth:
    """Sets scope["user"] from a bearer token when the handshake carries one.

    A handshake without a token goes to `fallback` (the session-cookie stack, for browsers).
    One with a token skips it: it never uses a session, and resolving one cost a thread hop per
    handshake on the database thread that a reconnect storm queues on (docs/benchmarks.md).
    A present but invalid token yields AnonymousUser — no fallback to the session cookie, so a
    client never silently runs as someone else than the token says.
    """

    def __init__(self, application: Any, fallback: Any = None) -> None:
        self.application = application
        self.fallback = fallback if fallback is not None else application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        raw = bearer_token(scope)
        if raw is None:
            return await self.fallback(dict(scope, **{RAW_SEND_KEY: send}), receive, send)
        found = await _token_user(raw)
        if found is None:
            log.warning("refused WebSocket handshake with an invalid token from %s", peer(scope))
            found = (AnonymousUser(), None)
        # This frame stays alive for as long as the socket is open, so the scope copy is handed
        # on without a name here: the router copies it again and this one can then be freed
        # (part of the 1.6 KB per idle socket that this and chat/frameless.py saved together,
        # docs/benchmarks.md).
        return await self.application(
            dict(scope, **{RAW_SEND_KEY: send, "user": found[0], "token_id": found[1]}), receive, send
        )
