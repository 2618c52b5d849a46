"""`Authorization: Bearer <token>` for the HTTP API (the WebSocket side is parley/ws_auth.py)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from parley.conf import parley_settings
from parley.selectors import token_get_active
from parley.services import token_touch


def bearer_authenticate(request: HttpRequest) -> JsonResponse | None:
    """Authenticates a request that carries a bearer token as the token's user; returns the 401
    for a present but invalid token (never a silent fallback to the session), else None.

    Such a request cannot be forged cross-site (a browser never adds the header by itself), so it
    is exempt from CSRF. The JSON API's views call this themselves, so a host project needs no
    middleware for tokens; BearerTokenMiddleware runs it for every view of the standalone server.
    """
    if getattr(request, "_parley_bearer_checked", False):
        return None
    request._parley_bearer_checked = True
    value = request.headers.get("Authorization", "")
    scheme, _, raw = value.partition(" ")
    if scheme.lower() == "bearer":
        if parley_settings.METRICS_TOKEN and metrics_token_matches(value):
            return None  # /metrics' own secret (parley.health), not an API token: nobody's user
        token = token_get_active(raw=raw.strip()) if raw.strip() else None
        if token is None:
            return api_error(401, "invalid_token", "the bearer token is invalid or revoked")
        token_touch(token=token)
        request.user = token.user
        request.auth_token = token
        request._dont_enforce_csrf_checks = True
    return None


class BearerTokenMiddleware:
    """bearer_authenticate for every request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return bearer_authenticate(request) or self.get_response(request)


def metrics_token_matches(authorization: str) -> bool:
    """Whether an Authorization header carries PARLEY["METRICS_TOKEN"] (compared in constant time)."""
    token = parley_settings.METRICS_TOKEN
    scheme, _, raw = authorization.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(raw.strip().encode(), token.encode())


def api_error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, **extra}}, status=status)
