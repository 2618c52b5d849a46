"""Sign-in and sign-up throttles, in process memory like every counter of parley/limits.py: with N
server processes behind a balancer a client gets up to N times the budget.

Sign-in failures are counted per client address and per username (token buckets): a password
guesser is slowed whether it tries many passwords on one account or one password on many.
Checks come before the password is hashed, so a refused attempt costs no hashing either. A
successful sign-in forgives the username's failures, not the address's: otherwise an attacker
with an account of their own could sign in between guesses to reset their address.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from parley import limits

HOUR_SECS = 3600.0

_login_failures_by_address = limits.BucketMap(limits.LOGIN_FAILURES_PER_IP_PER_HOUR, per=HOUR_SECS)
_login_failures_by_username = limits.BucketMap(limits.LOGIN_FAILURES_PER_USERNAME_PER_HOUR,
                                               per=HOUR_SECS)
_signups_by_address = limits.BucketMap(limits.SIGNUPS_PER_IP_PER_HOUR, per=HOUR_SECS)

# Set on the request by a refusal; throttled_status() turns it into 429 + Retry-After.
RETRY_AFTER_ATTR = "parley_retry_after_secs"


def client_address(request: HttpRequest | None) -> str:
    """The peer as the ASGI server saw it (behind a proxy: uvicorn --proxy-headers)."""
    return (request.META.get("REMOTE_ADDR") if request is not None else None) or "?"


def username_key(username: str) -> str:
    return username.strip().casefold()[:150]


def _minutes(secs: float) -> str:
    minutes = max(1, math.ceil(secs / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _refuse(request: HttpRequest | None, wait_secs: float, message: str) -> ValidationError:
    if request is not None:
        setattr(request, RETRY_AFTER_ATTR, wait_secs)
    return ValidationError(message, code="throttled", params={"wait": _minutes(wait_secs)})


class ThrottledLoginMixin:
    """For AuthenticationForm and its subclasses: refuse while the address or the username has
    used up its failures, count each failure, forgive the username on success."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not username or not password:
            return super().clean()  # type: ignore[misc]  # field errors, no attempt made
        address, name = client_address(self.request), username_key(username)
        wait = max(_login_failures_by_address.wait(address), _login_failures_by_username.wait(name))
        if wait:
            raise _refuse(self.request, wait,
                          "Too many failed sign-in attempts. Try again in %(wait)s.")
        try:
            cleaned = super().clean()  # type: ignore[misc]
        except ValidationError:
            _login_failures_by_address.take(address)
            _login_failures_by_username.take(name)
            raise
        _login_failures_by_username.forget(name)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


def signup_refusal(request: HttpRequest) -> ValidationError | None:
    """Charge one account to the request's address; the error to show if it has none left."""
    wait = _signups_by_address.take(client_address(request))
    if wait:
        return _refuse(request, wait, "Too many accounts were created from your address. "
                                      "Try again in %(wait)s.")
    return None


def throttled_status(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page that refused a throttled attempt answers 429 with Retry-After (seconds), the form
    and its message still in the body."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        wait = getattr(request, RETRY_AFTER_ATTR, 0.0)
        if wait:
            response.status_code = 429
            response["Retry-After"] = str(math.ceil(wait))
        return response

    return wrapper
