"""Handshake guards for the WebSocket side: rate, Origin checking and bearer-token authentication.

Stack (config/asgi.py): HandshakeRateLimit → OriginGuard → BearerTokenAuth, which resolves a
bearer token itself and hands any other handshake to AuthMiddlewareStack (the session cookie),
→ HandshakeBudget, which refuses unauthenticated handshakes and charges authenticated ones to
their user. The consumer checks scope["user"] again.

Which budget a handshake spends (docs/security.md, "Handshake floods from a shared address"): one that ends refused (no or bad
credentials, a missing or foreign Origin) spends its address's; one that authenticates spends
its user's, never the address's, so people sharing an address (NAT) are not locked out by
someone else's failures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from parley import limits, metrics
from parley.conf import parley_settings
from parley.realtime.dbthread import Batched
from parley.realtime.outbound import RAW_SEND_KEY
from parley.selectors import tokens_get_active
from parley.services import tokens_touch

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


# Handshakes that ended refused, by client address; and authenticated handshakes, by user id.
# Module-level so the guards before and after authentication share them. Cluster-wide with
# REDIS_URL (parley.shared_limits), per process without it.
_refused_by_address = limits.BucketMap(limits.HANDSHAKES_PER_IP_PER_MIN, per=60.0, shared="handshakes-refused")
_by_user = limits.BucketMap(limits.HANDSHAKES_PER_USER_PER_MIN, per=60.0, shared="handshakes-user")


def client_address(scope: dict[str, Any]) -> str:
    return (scope.get("client") or ("?", 0))[0]


def has_credentials(scope: dict[str, Any]) -> bool:
    """Whether the handshake carries anything that could authenticate it (a bearer header or the
    session cookie), without checking it: the checks need the database."""
    if header(scope, b"authorization") is not None:
        return True
    cookie = header(scope, b"cookie")
    return cookie is not None and settings.SESSION_COOKIE_NAME in parse_cookie(cookie.decode("latin1"))


async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> Any:
    """Refuse the handshake (HTTP 403) and charge it to its address's budget."""
    await _refused_by_address.shared_take(client_address(scope))
    return await WebsocketDenier()(scope, receive, send)


class HandshakeRateLimit:
    """Refuses (403), before any other work, a handshake without credentials from an address
    whose refused handshakes used up PARLEY_HANDSHAKES_PER_IP_PER_MIN.

    A handshake that carries credentials always goes on to be checked: before authentication
    nothing tells a neighbour's valid session behind the same NAT from an attacker's made-up one,
    and refusing both would let anyone lock out everyone at their address.

    The address is the ASGI scope's client, i.e. the peer as the ASGI server sees it; behind a
    reverse proxy run uvicorn with --proxy-headers so that is the real client.

    With REDIS_URL the budget is the cluster's (one Redis round trip, for handshakes without
    credentials only: those end refused anyway, so the coroutine that awaits it is short-lived).
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        # Not `async def` on purpose (also OriginGuard, HandshakeBudget): returning the inner
        # application's awaitable keeps no coroutine frame of this layer alive for as long as
        # the socket is open — memory every idle socket would pay (docs/benchmarks.md).
        if not parley_settings.REDIS_URL:
            if _refused_by_address.wait(client_address(scope)) and not has_credentials(scope):
                # Not logged: the refusals that spent the budget were, one line each.
                metrics.refused("handshakes_per_ip")
                return WebsocketDenier()(scope, receive, send)
            return self.application(scope, receive, send)
        if has_credentials(scope):
            return self.application(scope, receive, send)
        return self._without_credentials(scope, receive, send)

    async def _without_credentials(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if await _refused_by_address.shared_wait(client_address(scope)):
            # Not logged: the refusals that spent the budget were, one line each.
            metrics.refused("handshakes_per_ip")
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


class HandshakeBudget:
    """After authentication: refuses an unauthenticated handshake (charged to its address), and
    charges an authenticated one to its user's PARLEY_HANDSHAKES_PER_USER_PER_MIN.

    With REDIS_URL that budget is the cluster's: the charge is awaited (one Redis round trip)
    in a coroutine that then runs the socket, so each open socket keeps its frame (a few
    hundred bytes); without REDIS_URL the charge is synchronous and costs a socket nothing.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            log.warning("refused unauthenticated WebSocket handshake from %s", peer(scope))
            return refuse(scope, receive, send)
        if parley_settings.REDIS_URL:
            return self._charged(user, scope, receive, send)
        if _by_user.take(user.pk):
            return self._refuse_rate(user, scope, receive, send)
        return self.application(scope, receive, send)

    async def _charged(self, user: Any, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if await _by_user.shared_take(user.pk):
            return await self._refuse_rate(user, scope, receive, send)
        return await self.application(scope, receive, send)

    @staticmethod
    def _refuse_rate(user: Any, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        log.warning("refused WebSocket handshake of user %s from %s: handshake rate limit",
                    user.pk, peer(scope))
        metrics.refused("handshakes_per_user")
        return WebsocketDenier()(scope, receive, send)


DEFAULT_PORTS = {"http": 80, "https": 443}
# The page origin a socket's own scheme belongs to: a ws:// socket is same-origin with an
# http:// page, a wss:// one with an https:// page.
PAGE_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}

Origin = tuple[str, str, int]  # (scheme, host, port), lower case, IPv6 without brackets


def parse_origin(value: str) -> Origin | None:
    """An `Origin` value (or a configured origin) as (scheme, host, port); None if it is not an
    http(s) origin or is malformed (`null`, `http://[`, a port out of range, a path or user …)."""
    try:
        parts = urlsplit(value.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc or parts.path or parts.query \
            or parts.fragment:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin of the page this server would serve at the handshake's own Host header, with
    the scheme the ASGI server saw (behind a TLS proxy that is `ws` unless the proxy's
    X-Forwarded-Proto is trusted: uvicorn --proxy-headers). None without a Host header, or with
    one that is not in ALLOWED_HOSTS (Django would not serve a page there either)."""
    raw = header(scope, b"host")
    scheme = PAGE_SCHEMES.get(scope.get("scheme", "ws"))
    if raw is None or scheme is None:
        return None
    host = raw.decode("latin1")
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return parse_origin(f"{scheme}://{host}")


@lru_cache(maxsize=8)
def _configured(entries: tuple[str, ...]) -> tuple[frozenset[Origin], tuple[Origin, ...]]:
    """Configured origins, split into exact ones and `scheme://*.domain[:port]` patterns."""
    exact, patterns = set(), []
    for entry in entries:
        entry = entry.rstrip("/")  # "https://chat.example.com/" is a common way to write it
        wildcard = "://*." in entry
        parsed = parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if parsed is None:
            log.warning("ignoring malformed origin %r in PARLEY_ALLOWED_ORIGINS/CSRF_TRUSTED_ORIGINS",
                        entry)
        elif wildcard:
            patterns.append(parsed)
        else:
            exact.add(parsed)
    return frozenset(exact), tuple(patterns)


def trusted_origins() -> tuple[frozenset[Origin], tuple[Origin, ...]]:
    return _configured(tuple(parley_settings.ALLOWED_ORIGINS)
                       + tuple(getattr(settings, "CSRF_TRUSTED_ORIGINS", ())))


def origin_allowed(scope: dict[str, Any], value: str) -> bool:
    """Same origin as the socket (scheme, host and port), or one of the configured origins."""
    origin = parse_origin(value)
    if origin is None:
        return False
    if origin == own_origin(scope):
        return True
    exact, patterns = trusted_origins()
    if origin in exact:
        return True
    scheme, host, port = origin
    # `*.example.com` covers example.com itself too, as in Django's CSRF_TRUSTED_ORIGINS.
    return any(scheme == p_scheme and port == p_port
               and (host == p_host or host.endswith("." + p_host))
               for p_scheme, p_host, p_port in patterns)


class OriginGuard:
    """Refuses handshakes from pages of other origins (cross-site WebSocket hijacking).

    Browsers always send Origin, so a handshake without one is not a browser's: it is accepted
    only if it carries a bearer token (Channels' AllowedHostsOriginValidator would refuse those).
    The whole origin is compared — scheme, host and port — because a page on another port of
    the same host is another program's page, and the browser sends it the user's cookie too.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        origin = header(scope, b"origin")
        if origin is None:
            if bearer_token(scope) is not None:
                return self.application(scope, receive, send)
            log.warning("refused WebSocket handshake without Origin or token from %s", peer(scope))
        elif origin_allowed(scope, origin.decode("latin1")):
            return self.application(scope, receive, send)
        else:
            log.warning("refused WebSocket handshake from foreign Origin %r (%s)",
                        origin.decode("latin1")[:200], peer(scope))
        return refuse(scope, receive, send)


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
        found: tuple[Any, int | None] | None = await _token_user(raw)
        if found is None:
            log.warning("refused WebSocket handshake with an invalid token from %s", peer(scope))
            found = (AnonymousUser(), None)
        # This frame stays alive for as long as the socket is open, so the scope copy is handed
        # on without a name here: the router copies it again and this one can then be freed
        # (part of the 1.6 KB per idle socket that this and parley/realtime/frameless.py saved together,
        # docs/benchmarks.md).
        return await self.application(
            dict(scope, **{RAW_SEND_KEY: send, "user": found[0], "token_id": found[1]}), receive, send
        )
