"""Fan-out: every broadcast to a room leaves through `broadcast()` below, and only through it.

Keeping one exit point (as Zulip does with send_event) means the delivery path can be changed —
a leaner layer, a per-process hub — in one place. Frames are encoded once here and the same text
is handed to every socket; consumers never re-encode a broadcast.
"""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer

from chat import protocol
from chat.models import Message
from chat.payloads import message_payload, user_payload


def room_group(room_id: int) -> str:
    """The channel-layer group of a room's sockets."""
    return f"room.{room_id}"


async def broadcast(room_id: int, event: dict[str, Any]) -> None:
    """Deliver one event to every socket that joined the room, on every server process."""
    await get_channel_layer().group_send(room_group(room_id), event)


async def broadcast_message(*, room_id: int, room_slug: str, message: Message) -> None:
    frame = protocol.encode(
        {"type": "message", "room": room_slug, "message": message_payload(message, room_slug=room_slug)}
    )
    # seq travels beside the frame so each socket can order and de-duplicate without decoding it.
    await broadcast(room_id, {"type": "chat.message", "room_id": room_id, "seq": message.seq, "frame": frame})


async def broadcast_presence(*, room_id: int, room_slug: str, event: str, user: Any, members: int) -> None:
    frame = protocol.encode(
        {"type": "presence", "room": room_slug, "event": event, "user": user_payload(user), "members": members}
    )
    await broadcast(room_id, {"type": "chat.presence", "room_id": room_id, "frame": frame})


async def broadcast_typing(*, room_id: int, room_slug: str, user: Any) -> None:
    frame = protocol.encode({"type": "typing", "room": room_slug, "user": user_payload(user)})
    await broadcast(room_id, {"type": "chat.typing", "room_id": room_id, "user_id": user.pk, "frame": frame})
