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

from typing import Any

from channels.auth import AuthMiddlewareStack

from parley.realtime.frameless import FramelessURLRouter
from parley.routing import websocket_urlpatterns
from parley.ws_auth import BearerTokenAuth, HandshakeBudget, HandshakeRateLimit, OriginGuard


def websocket_application() -> Any:
    """Parley's WebSocket stack (rate limit, Origin check, token or session auth, handshake
    budget, routing of ws/chat/), ready for ProtocolTypeRouter's "websocket" key."""
    # Channels' URLRouter minus a coroutine frame per open socket (parley/realtime/frameless.py).
    authenticated = HandshakeBudget(FramelessURLRouter(websocket_urlpatterns))
    return HandshakeRateLimit(OriginGuard(
        BearerTokenAuth(authenticated, fallback=AuthMiddlewareStack(authenticated))))
