"""Sign-in, sign-up and password-reset throttles kept in process memory, like every counter of
parley/limits.py: with N server processes behind a balancer a client gets up to N times the budget.

Failed sign-ins per username and address are counted by django-axes in the standalone server
(config/settings.py), in the database and so across processes. What is left here is what axes's
per-pair count does not do: failures per client address over every username (one password tried
on many accounts), accounts created per address, and password-reset mails per address and per
recipient. Checks come before the password is hashed, so a refused attempt costs no hashing.
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
from parley.auth_backends import DISABLED_ACCOUNT_ATTR

HOUR_SECS = 3600.0

_login_failures_by_address = limits.BucketMap(limits.LOGIN_FAILURES_PER_IP_PER_HOUR, per=HOUR_SECS)
_signups_by_address = limits.BucketMap(limits.SIGNUPS_PER_IP_PER_HOUR, per=HOUR_SECS)
_resets_by_address = limits.BucketMap(limits.PASSWORD_RESETS_PER_IP_PER_HOUR, per=HOUR_SECS)
_resets_by_email = limits.BucketMap(limits.PASSWORD_RESETS_PER_EMAIL_PER_HOUR, per=HOUR_SECS)

# Set on the request by a refusal; throttled_status() turns it into 429 + Retry-After.
RETRY_AFTER_ATTR = "parley_retry_after_secs"

DISABLED_ACCOUNT_MESSAGE = "This account has been disabled."


def client_address(request: HttpRequest | None) -> str:
    """The peer as the ASGI server saw it: behind a proxy, uvicorn --proxy-headers with the
    proxy in --forwarded-allow-ips puts the client's address here. The standalone server's
    django-axes reads the same (config/auth.py), so the forwarded header is trusted in one place
    only: uvicorn's."""
    return (request.META.get("REMOTE_ADDR") if request is not None else None) or "?"


def _minutes(secs: float) -> str:
    minutes = max(1, math.ceil(secs / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _refuse(request: HttpRequest | None, wait_secs: float, message: str) -> ValidationError:
    if request is not None:
        setattr(request, RETRY_AFTER_ATTR, wait_secs)
    return ValidationError(message, code="throttled", params={"wait": _minutes(wait_secs)})


class ThrottledLoginMixin:
    """For AuthenticationForm and its subclasses: refuse while the client address has used up
    its failures, count each failure; say "disabled" to whoever gave a disabled account's right
    password (parley.auth_backends flags it), and the usual "enter a correct username and
    password" to everyone else, whether the username exists or not."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not username or not password:
            return super().clean()  # type: ignore[misc]  # field errors, no attempt made
        address = client_address(self.request)
        wait = _login_failures_by_address.wait(address)
        if wait:
            raise _refuse(self.request, wait,
                          "Too many failed sign-in attempts. Try again in %(wait)s.")
        try:
            return super().clean()  # type: ignore[misc]
        except ValidationError:
            _login_failures_by_address.take(address)
            if getattr(self.request, DISABLED_ACCOUNT_ATTR, False):
                raise ValidationError(DISABLED_ACCOUNT_MESSAGE, code="inactive") from None
            raise


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


def password_reset_refusal(request: HttpRequest, email: str) -> ValidationError | None:
    """Charge one reset mail to the request's address, then to the e-mail address it names —
    whether an account has that address or not, since the answer must not tell; the error to
    show if either has none left. A request its address may not make costs the e-mail address
    nothing."""
    wait = (_resets_by_address.take(client_address(request))
            or _resets_by_email.take(email.strip().casefold()[:254]))
    if wait:
        return _refuse(request, wait, "Too many password reset requests. "
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
