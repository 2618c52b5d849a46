"""Baseline: the Channels tutorial's chat (docs "Tutorial Part 3: Rewrite Chat Server as
Asynchronous"): an AsyncWebsocketConsumer that group_send()s every received message, and a
chat_message handler that json.dumps() it again for each socket.

Differences from the tutorial, on purpose: no AuthMiddlewareStack/AllowedHostsOriginValidator
(the tutorial's auth needs a database and the benchmark's clients carry no cookie; both are no-ops
then) and `[\\w-]` in the room pattern. Layer: see tutorial_settings.

Run: python -m uvicorn bench.baselines.tutorial_asgi:application --lifespan off ...
"""

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.baselines.tutorial_settings")

import django

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        text_data_json = json.loads(text_data)
        message = text_data_json["message"]
        await self.channel_layer.group_send(self.room_group_name, {"type": "chat.message", "message": message})

    async def chat_message(self, event):
        message = event["message"]
        await self.send(text_data=json.dumps({"message": message}))


application = ProtocolTypeRouter({
    "websocket": URLRouter([re_path(r"ws/chat/(?P<room_name>[\w-]+)/$", ChatConsumer.as_asgi())]),
})
