"""How rooms, users and messages look on the wire (docs/protocol.md §2). One shape, one place."""

from typing import Any

from chat.models import Message, Room


def user_payload(user: Any) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username()}


def room_payload(room: Room, *, last_seq: int | None = None) -> dict[str, Any]:
    return {
        "slug": room.slug,
        "title": room.title,
        "private": room.is_private,
        "epoch": room.epoch,
        "last_seq": room.last_seq if last_seq is None else last_seq,
    }


def timestamp(value: Any) -> str:
    """UTC, ISO 8601, milliseconds, 'Z' — the one timestamp format of the protocol.

    Formatted field by field: strftime took 5.6 µs a call against 3.8 (timeit), and every
    stored message is formatted for its ack and for its broadcast."""
    v = value
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}."
            f"{v.microsecond // 1000:03d}Z")


def message_payload(message: Message, *, room_slug: str) -> dict[str, Any]:
    # author must be loaded (select_related) or passed in; this runs for every delivered message.
    return {
        "room": room_slug,
        "seq": message.seq,
        "id": message.pk,
        "client_id": message.client_id,
        "author": user_payload(message.author),
        "text": message.text,
        "ts": timestamp(message.created_at),
    }
