"""Posting from server code: views, management commands, signal receivers, Celery-style
workers, the Django shell. Exposed as `parley.post_message`, `parley.apost_message` and
`parley.publish_event` (README, "Posting from your own code").

    import parley
    message = parley.post_message("lobby", "Deploy finished", author=bot_user)

A message is stored with the room's next seq (the WebSocket `send`'s validation and access rule,
the same client_id idempotency) and reaches every live socket in the room after the transaction
commits, from any process: with REDIS_URL through Redis; without it, in the server's own
process at once, from any other process through the room log (PARLEY_ROOM_LOG_POLL_MS,
parley.roomwatch). If no server runs at all it is still stored, and clients get it when they
join or resume. `parley.signals.message_posted` is sent for it on commit.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async

from parley import events, fanout, services
from parley.conf import parley_settings
from parley.models import Message, Room
from parley.services import MessageRefused, PostForbidden, RoomNotFound

__all__ = [
    "EventNotDeliverable", "EventRefused", "MessageRefused", "PostForbidden", "RoomNotFound",
    "apost_message", "apublish_event", "post_message", "publish_event",
]


class EventRefused(ValueError):
    """publish_event's payload is not JSON, or its JSON is over PARLEY_CUSTOM_PAYLOAD_MAX_BYTES
    (`code` "payload_too_large" or "bad_payload"). Nothing was sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EventNotDeliverable(RuntimeError):
    """publish_event was called where no live delivery is possible: no REDIS_URL, and this
    process runs no sockets (a management command or worker beside the embedded default). Events
    are not stored, so no room log could bring it later: it is refused rather than lost."""


def post_message(room: Room | str, text: str, *, author: Any, client_id: str | None = None,
                 reply_to: int | None = None, attachments: list[int] | None = None) -> Message:
    """Store `text` in `room` (a slug or a Room) as `author` (a user) and return the Message.

    Validated as a WebSocket `send` is: the text is trimmed, must not be empty, at most
    PARLEY_MAX_TEXT_CHARS characters, without U+0000; `client_id` (1-64 characters) is the
    idempotency key, and a second call with the same (room, author, client_id) returns the first
    message without storing or broadcasting another. `reply_to` is the seq of a message of the
    room this one answers (docs/protocol.md §10; `message_not_found` if there is none,
    `message_deleted` if it was deleted); `@username` mentions are resolved as for a socket's
    send. `attachments` are ids of `author`'s own unattached uploads in the room
    (docs/protocol.md §14: `attachment_not_found`, `too_many_attachments`); with them `text`
    may be empty. Raises RoomNotFound (`code`
    "room_not_found": no such room, or a private room `author` is not a member of),
    PostForbidden ("forbidden": `author` is inactive or unsaved) or MessageRefused (the text's
    or client_id's code), all subclasses of MessageRefused and ValueError; nothing is stored then.

    Live delivery and `message_posted` happen when the transaction commits: at once outside
    `transaction.atomic()`, at the end of the block inside one, never if it rolls back.
    Synchronous: from async code use `apost_message`. Not rate-limited (server code is trusted;
    the HTTP API applies the per-user message rate).
    """
    message, _ = services.message_post(room=room, text=text, author=author, client_id=client_id,
                                       reply_to=reply_to, attachments=attachments, source="python")
    return message


async def apost_message(room: Room | str, text: str, *, author: Any, client_id: str | None = None,
                        reply_to: int | None = None, attachments: list[int] | None = None) -> Message:
    """post_message for async code (async views, consumers, tasks): the same call, run in
    Django's thread for synchronous database work."""
    return await sync_to_async(post_message)(room, text, author=author, client_id=client_id, reply_to=reply_to,
                                             attachments=attachments)


def publish_event(room: Room | str, payload: Any) -> None:
    """Send an app-defined event to every socket that joined `room` (a slug or a Room), as a
    `custom` frame `{"type": "custom", "room": slug, "payload": payload}` (docs/protocol.md §4).

    Not stored: a socket that is not connected (or not yet joined) when it goes out never sees it,
    and a resume does not bring it back; use post_message for what must not be missed. `payload`
    is any JSON value, at most PARLEY_CUSTOM_PAYLOAD_MAX_BYTES as JSON (EventRefused). Sent when
    the transaction commits, like post_message. Raises RoomNotFound for an unknown room and
    EventNotDeliverable where it could not reach any socket (no REDIS_URL and no server in this
    process). Room access is the caller's business: every socket in the room receives it.
    """
    try:
        size = len(json.dumps(payload, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise EventRefused("bad_payload", f"the payload is not JSON: {exc}") from None
    max_bytes = int(parley_settings.CUSTOM_PAYLOAD_MAX_BYTES)
    if size > max_bytes:
        raise EventRefused("payload_too_large", f"the payload is {size:,} bytes of JSON; the limit is {max_bytes:,}")
    if not fanout.live_delivery_possible():
        raise EventNotDeliverable("no REDIS_URL and no server in this process: set REDIS_URL to publish "
                                  "events from other processes (messages need no Redis: post_message)")
    target = room if isinstance(room, Room) else (
        Room.objects.filter(slug=room).first() if isinstance(room, str) else None)
    if target is None:
        raise RoomNotFound(str(room))
    events.send_event_on_commit(events.AppEventPublished(room_id=target.pk, room_slug=target.slug, payload=payload))


async def apublish_event(room: Room | str, payload: Any) -> None:
    """publish_event for async code."""
    await sync_to_async(publish_event)(room, payload)
