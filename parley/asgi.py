"""The WebSocket side of Parley as one ASGI application, for a host project's asgi.py.

    django_asgi_app = get_asgi_application()   # first: sets Django up before Parley's models load
    import parley.asgi
    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": parley.asgi.websocket_application(),
    })

The stack, outside in: HandshakeRateLimit refuses addresses that reconnect too fast;
OriginGuard refuses foreign Origins; BearerTokenAuth resolves `Authorization: Bearer`, or hands
the handshake to AuthMiddlewareStack, which resolves the host's session cookie (either way it
keeps the server's own send for chat frames, parley/realtime/outbound.py); HandshakeBudget
refuses the unauthenticated and charges the rest to their user; the router sends
`ws/chat/` (parley.routing.websocket_urlpatterns) to the consumer. A host that composes its own
stack imports those pieces from parley.ws_auth and parley.routing instead.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from channels.auth import AuthMiddlewareStack

from parley.realtime.frameless import FramelessURLRouter
from parley.routing import websocket_urlpatterns
from parley.ws_auth import BearerTokenAuth, HandshakeBudget, HandshakeRateLimit, OriginGuard


def http_application(django_app: Any) -> Any:
    """Django's ASGI app for "http", behind UploadBodyGuard: an upload whose body is larger
    than PARLEY_UPLOAD_MAX_BYTES allows is answered 413 before Django reads (and spools) its
    body. Without it the upload view still refuses such a request, after Django has read it."""
    return UploadBodyGuard(django_app)


class UploadBodyGuard:
    """ASGI middleware for POST …/api/rooms/<slug>/uploads: a Content-Length over the upload
    limit (plus the multipart envelope) is answered 413 `file_too_large` at once, the body
    unread; a body without Content-Length (chunked) is cut off once it passes the same bound,
    and answered the same."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _UPLOAD_PATH.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        from parley.conf import parley_settings
        from parley.upload_views import MULTIPART_OVERHEAD_BYTES

        bound = parley_settings.UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > bound:
            return await _refuse_too_large(send)
        seen = 0
        refused = False

        async def counted() -> dict[str, Any]:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > bound and not refused:
                    refused = True
                    await _refuse_too_large(send)
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        await self.app(scope, counted, send)


_UPLOAD_PATH = re.compile(r"/api/rooms/[^/]+/uploads\Z")


async def _refuse_too_large(send: Any) -> None:
    from parley.conf import parley_settings

    body = orjson.dumps({"error": {"code": "file_too_large", "message": (
        f"a file may have at most {parley_settings.UPLOAD_MAX_BYTES:,.0f} bytes")}})
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def websocket_application() -> Any:
    """Parley's WebSocket stack (rate limit, Origin check, token or session auth, handshake
    budget, routing of ws/chat/), ready for ProtocolTypeRouter's "websocket" key."""
    # Channels' URLRouter minus a coroutine frame per open socket (parley/realtime/frameless.py).
    authenticated = HandshakeBudget(FramelessURLRouter(websocket_urlpatterns))
    return HandshakeRateLimit(OriginGuard(
        BearerTokenAuth(authenticated, fallback=AuthMiddlewareStack(authenticated))))
