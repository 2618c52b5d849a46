"""Security headers: the Content-Security-Policy Parley's pages are written for, and the
Permissions-Policy header Django does not set.

The standalone server sends the policy with django-csp (config/settings.py reads CSP_DIRECTIVES);
a host project sends it however it likes — django-csp's DIRECTIVES take CSP_DIRECTIVES as they
are, and CONTENT_SECURITY_POLICY is the same policy as one header value. Nothing here needs
django-csp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

# Scripts only from our own origin (no inline script, no eval): even if some text slipped into
# the page as HTML, the browser would refuse to run it. WebSockets to our own host only.
CSP_DIRECTIVES: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "object-src": ["'none'"],
}
CONTENT_SECURITY_POLICY = "; ".join(f"{name} {' '.join(sources)}"
                                    for name, sources in CSP_DIRECTIVES.items())
# The admin ships inline scripts of its own: its pages go without the policy.
CSP_EXCLUDED_PREFIXES = ["/admin/"]

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=()"


class SecurityHeadersMiddleware:
    """Sets Permissions-Policy on every response that has none."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
