"""Fan-out: every broadcast to a room leaves through `broadcast()` below, and only through it.

Keeping one exit point (as Zulip does with send_event) means the delivery path can be changed —
a leaner layer, a per-process hub — in one place. Frames are encoded once here and the same text
is handed to every socket; consumers never re-encode a broadcast.
"""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer

from parley import protocol
from parley.models import Message
from parley.payloads import message_payload, user_payload
from parley.realtime.hub import get_hub, hub_enabled


def room_group(room_id: int) -> str:
    """The channel-layer group of a room's sockets."""
    return f"room.{room_id}"


def credential_group(credential: tuple[str, int]) -> str:
    """The channel-layer group (PARLEY_FANOUT=layer) of the sockets opened with one API token,
    ("token", id), or by one user, ("user", id): closed together when those are revoked."""
    kind, ident = credential
    return f"{kind}.{ident}"


async def broadcast(room_id: int, event: dict[str, Any]) -> None:
    """Deliver one event to every socket that joined the room, on every server process.

    By default through parley.realtime.hub (one synchronous loop over local sockets, one Redis publish per
    message across processes); with PARLEY_FANOUT=layer through stock Channels group_send.
    """
    if hub_enabled():
        await get_hub().publish(room_id, event)
    else:
        await get_channel_layer().group_send(room_group(room_id), event)


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
    await broadcast(room_id, {"type": "chat.presence", "room_id": room_id, "frame": frame, "origin": origin})


async def broadcast_typing(*, room_id: int, room_slug: str, user: Any) -> None:
    frame = protocol.encode({"type": "typing", "room": room_slug, "user": user_payload(user)})
    await broadcast(room_id, {"type": "chat.typing", "room_id": room_id, "user_id": user.pk, "frame": frame})


async def broadcast_removed(*, room_id: int, user_id: int) -> None:
    """A user lost access to a room: their sockets in it leave at once (chat_revoke)."""
    await broadcast(room_id, {"type": "chat.revoke", "room_id": room_id, "user_id": user_id})


async def close_credential_sockets(*, credential: tuple[str, int]) -> None:
    """Not a room broadcast: closes (4401) the sockets opened with a revoked API token,
    ("token", id), or by a deactivated user, ("user", id), in every process.

    Through the hub (its control channel on Redis) by default; through a channel-layer group
    per credential with PARLEY_FANOUT=layer, where every socket has a channel anyway.
    """
    if hub_enabled():
        await get_hub().revoke(credential)
    else:
        await get_channel_layer().group_send(credential_group(credential), {"type": "auth.revoked"})
