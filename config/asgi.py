"""ASGI entry point: Django for HTTP, the chat consumer for WebSockets.

Run with `uvicorn config.asgi:application` (scripts/serve does). The WebSocket stack, outside in:
HandshakeRateLimit refuses addresses that reconnect too fast; OriginGuard refuses foreign Origins;
BearerTokenAuth resolves `Authorization: Bearer`, or hands the handshake to AuthMiddlewareStack,
which resolves the session cookie (either way it keeps the server's own send for chat frames,
parley/realtime/outbound.py); HandshakeBudget refuses the unauthenticated and charges the rest to their
user; URLRouter picks the consumer.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Set up Django (apps, models) before importing anything that touches the ORM.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402

from parley.realtime.frameless import FramelessProtocolTypeRouter, FramelessURLRouter  # noqa: E402
from parley.routing import websocket_urlpatterns  # noqa: E402
from parley.ws_auth import (  # noqa: E402
    BearerTokenAuth,
    HandshakeBudget,
    HandshakeRateLimit,
    OriginGuard,
)

# Channels' URLRouter and ProtocolTypeRouter, minus a coroutine frame each per open socket
# (parley/realtime/frameless.py).
router = FramelessURLRouter(websocket_urlpatterns)
authenticated = HandshakeBudget(router)
application = FramelessProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": HandshakeRateLimit(OriginGuard(
            BearerTokenAuth(authenticated, fallback=AuthMiddlewareStack(authenticated)))),
    }
)
