"""WebSocket URL routes, mounted by config/asgi.py inside the auth and origin middleware."""

from django.urls import path

from parley.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
]
