"""Fan-out: every broadcast to a room leaves through `broadcast()` below, and only through it.

Keeping one exit point (as Zulip does with send_event) means the delivery path can be changed
in one place (bench/baselines/parley_layer.py swaps in stock group_send there, for comparison). Frames are encoded once here and the same text
is handed to every socket; consumers never re-encode a broadcast.
"""

from __future__ import annotations

from typing import Any

from parley import protocol
from parley.models import Message
from parley.payloads import message_payload, user_payload
from parley.realtime.hub import get_hub


async def broadcast(room_id: int, event: dict[str, Any]) -> None:
    """Deliver one event to every socket that joined the room, on every server process:
    through parley.realtime.hub (one synchronous loop over local sockets, one Redis publish per
    message across processes)."""
    await get_hub().publish(room_id, event)


async def broadcast_message(*, room_id: int, room_slug: str, message: Message) -> None:
    frame, size = protocol.encode_sized(
        {"type": "message", "room": room_slug, "message": message_payload(message, room_slug=room_slug)}
    )
    # seq travels beside the frame so each socket can order and de-duplicate without decoding it;
    # size so each socket can account its outbound bytes without encoding it again.
    await broadcast(room_id, {"type": "chat.message", "room_id": room_id, "seq": message.seq,
                              "frame": frame, "size": size})


async def broadcast_presence(*, room_id: int, room_slug: str, event: str, user: Any, members: int,
                             origin: str) -> None:
    """`origin` is the channel of the socket that joined or left; it already knows (joined/left)."""
    frame = protocol.encode(
        {"type": "presence", "room": room_slug, "event": event, "user": user_payload(user), "members": members}
    )
    await broadcast(room_id, {"type": "parley.presence", "room_id": room_id, "frame": frame, "origin": origin})


async def broadcast_typing(*, room_id: int, room_slug: str, user: Any) -> None:
    frame = protocol.encode({"type": "typing", "room": room_slug, "user": user_payload(user)})
    await broadcast(room_id, {"type": "chat.typing", "room_id": room_id, "user_id": user.pk, "frame": frame})


async def broadcast_removed(*, room_id: int, user_id: int) -> None:
    """A user lost access to a room: their sockets in it leave at once (parley.delivery)."""
    await broadcast(room_id, {"type": "chat.revoke", "room_id": room_id, "user_id": user_id})


async def close_credential_sockets(*, credential: tuple[str, int]) -> None:
    """Not a room broadcast: closes (4401) the sockets opened with a revoked API token,
    ("token", id), or by a deactivated user, ("user", id), in every process (through the
    hub's control channel on Redis).
    """
    await get_hub().revoke(credential)
