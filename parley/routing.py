"""WebSocket URL routes, mounted by parley.asgi.websocket_application() inside the auth and
origin middleware (or by a host's own stack)."""

from django.urls import path

from parley.consumers import ChatConsumer
from parley.protocol import WEBSOCKET_PATH

websocket_urlpatterns = [
    path(WEBSOCKET_PATH, ChatConsumer.as_asgi()),
]
