"""The standalone server's django-axes wiring (config/settings.py AXES_*): the guard backend and
the page a locked-out sign-in gets. The parley package itself never imports axes."""

from __future__ import annotations

import math
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKOUT_STATUS = 429  # settings.AXES_HTTP_RESPONSE_CODE says the same, for axes's own answers


class SignInGuard(AxesStandaloneBackend):
    """Axes's lockout check, for every authenticate() that comes with a request — every sign-in
    page does. One without a request (a shell, the test client's login()) has no client address
    to key a lockout by; axes would raise, this lets the password backends answer it."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


def client_ip(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: REMOTE_ADDR, the address parley.throttles counts too (behind a
    proxy, uvicorn --proxy-headers puts the client's there, for trusted proxies only). None when
    there is none (a unix socket, a request made in code such as the test client's login()):
    axes stores addresses in an IP field, which PostgreSQL refuses anything else in."""
    return request.META.get("REMOTE_ADDR") or None


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in card saying why and for how long, 429 + Retry-After
    (seconds). Axes passes (request, response, credentials), or (request, credentials) from its
    async middleware; neither is needed here. The username typed is not echoed, and the page is
    the same for a username that exists and one that does not."""
    cool_off = get_cool_off(request)
    wait_secs = math.ceil(cool_off.total_seconds()) if cool_off else 0
    response = render(request, "registration/locked_out.html",
                      {"wait_minutes": max(1, math.ceil(wait_secs / 60))}, status=LOCKOUT_STATUS)
    if wait_secs:
        response["Retry-After"] = str(wait_secs)
    return response
