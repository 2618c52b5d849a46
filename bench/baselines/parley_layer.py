"""Baseline: Parley itself, with its room broadcasts through stock Channels `group_send` instead
of its per-process hub (parley.realtime.hub) — what the hub is measured against.

Everything else is Parley's: the same settings, handshake stack, consumer, commands, ordering and
outbound queue. Only the room fan-out differs: every socket gets a channel-layer channel (and so
Channels' own loop, one receive task per source), each joined room is a layer group, and a
broadcast is one group_send, which copies the event into every member's queue, whose consumer
then wakes and delivers it. Revocations still go through the hub: they are not fan-out.

The swap happens in two places, before Django loads Parley: parley.realtime.hub.get_hub returns
a hub whose room methods are the layer's, and ws/chat/ routes to LayerChatConsumer.

Run: python -m config.serve --app bench.baselines.parley_layer:application (bench/servers.py).
"""

from __future__ import annotations

import os
from typing import Any

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.baselines.parley_layer_settings"

import django
from channels.consumer import AsyncConsumer
from channels.layers import DEFAULT_CHANNEL_LAYER, get_channel_layer

from parley.realtime import hub as parley_hub
from parley.realtime.loops import per_loop


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


class LayerHub:
    """The hub's interface with rooms on the channel layer; the rest is the process's real hub."""

    def __init__(self, hub: parley_hub.LocalHub) -> None:
        self._hub = hub

    async def subscribe(self, room_id: int, receiver: Any) -> None:
        await get_channel_layer().group_add(room_group(room_id), receiver.session.socket_id)

    async def unsubscribe(self, room_id: int, receiver: Any) -> None:
        await get_channel_layer().group_discard(room_group(room_id), receiver.session.socket_id)

    async def publish(self, room_id: int, event: dict[str, Any]) -> None:
        await get_channel_layer().group_send(room_group(room_id), event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)


_real_get_hub = parley_hub.get_hub


@per_loop
def _get_layer_hub() -> LayerHub:
    return LayerHub(_real_get_hub())


parley_hub.get_hub = _get_layer_hub  # before anything imports it by name
django.setup()

from django.urls import path  # noqa: E402

from parley import routing  # noqa: E402
from parley.consumers import ChatConsumer  # noqa: E402


class LayerChatConsumer(ChatConsumer):
    """Parley's consumer on a channel-layer channel: room events arrive as layer messages
    (type "chat.message" → chat_message …) and go to the socket's delivery as the hub's would."""

    channel_layer_alias = DEFAULT_CHANNEL_LAYER

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Channels' own loop: the client's receive raced against the layer's, a task each.
        await AsyncConsumer.__call__(self, scope, receive, send)

    async def chat_message(self, event: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.delivery.hub_event(event)

    parley_presence = chat_typing = chat_revoke = chat_message


routing.websocket_urlpatterns[:] = [path("ws/chat/", LayerChatConsumer.as_asgi())]

from config.asgi import application  # noqa: E402, F401
