"""ASGI entry point: Django for HTTP, the chat consumer for WebSockets.

Run with `uvicorn config.asgi:application` (scripts/serve does). The standalone server is one
host project among others: its WebSocket side is parley.asgi.websocket_application(), whose
docstring describes the stack.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Set up Django (apps, models) before importing anything that touches the ORM.
django_asgi_app = get_asgi_application()

import parley.asgi  # noqa: E402
from parley.realtime.frameless import FramelessProtocolTypeRouter  # noqa: E402

# Channels' ProtocolTypeRouter minus a coroutine frame per open socket
# (parley/realtime/frameless.py); the WebSocket stack is the one any host gets (parley/asgi.py).
application = FramelessProtocolTypeRouter(
    {
        # Uploads larger than allowed are refused before Django reads their body (parley/asgi.py).
        "http": parley.asgi.http_application(django_asgi_app),
        "websocket": parley.asgi.websocket_application(),
    }
)
