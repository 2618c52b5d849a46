"""Fan-out: every broadcast to a room leaves through `broadcast()` below, and only through it.

Keeping one exit point (as Zulip does with send_event) means the delivery path can be changed
in one place (bench/baselines/parley_layer.py swaps in stock group_send there, for comparison). Frames are encoded once here and the same text
is handed to every socket; consumers never re-encode a broadcast.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from asgiref.sync import async_to_sync

from parley import events, protocol
from parley.conf import parley_settings
from parley.models import Message
from parley.payloads import entry_frame, message_payload, user_payload
from parley.realtime.hub import (
    LocalHub,
    get_hub,
    local_hubs,
    local_user_hubs,
    publish_from_sync,
    publish_user_from_sync,
)

log = logging.getLogger(__name__)


async def broadcast(room_id: int, event: dict[str, Any]) -> None:
    """Deliver one event to every socket that joined the room, on every server process:
    through parley.realtime.hub (one synchronous loop over local sockets, one Redis publish per
    message across processes)."""
    await get_hub().publish(room_id, event)


def message_event(*, room_id: int, room_slug: str, message: Message) -> dict[str, Any]:
    """The room event of one stored message, its frame encoded once for every socket."""
    frame, size = protocol.encode_sized(
        {"type": "message", "room": room_slug, "message": message_payload(message, room_slug=room_slug)}
    )
    # seq travels beside the frame so each socket can order and de-duplicate without decoding it;
    # size so each socket can account its outbound bytes without encoding it again.
    event = {"type": "chat.message", "room_id": room_id, "seq": message.seq, "frame": frame, "size": size}
    if message.attachments:
        # Version 1 sockets keep version 1's frame: the message without its files (parley.delivery).
        event["v1"] = protocol.encode_sized({"type": "message", "room": room_slug, "message": message_payload(
            message, room_slug=room_slug, attachments=False)})
    return event


async def broadcast_message(*, room_id: int, room_slug: str, message: Message) -> None:
    await broadcast(room_id, message_event(room_id=room_id, room_slug=room_slug, message=message))


def entry_event(*, room_id: int, room_slug: str, entry: Message) -> dict[str, Any]:
    """The room event of an edit, delete or reaction entry (docs/protocol.md §10): ordered by
    seq with the messages, sent to version 2 sockets only (a version 1 socket's order skips it:
    parley.delivery)."""
    frame, size = protocol.encode_sized(entry_frame(entry, room_slug=room_slug))
    return {"type": "chat.entry", "room_id": room_id, "seq": entry.seq, "frame": frame, "size": size}


def log_event(*, room_id: int, room_slug: str, entry: Message) -> dict[str, Any]:
    """The room event of any log entry read back from the database (parley.roomwatch)."""
    if entry.kind == Message.Kind.MESSAGE:
        return message_event(room_id=room_id, room_slug=room_slug, message=entry)
    return entry_event(room_id=room_id, room_slug=room_slug, entry=entry)


async def broadcast_entry(*, room_id: int, room_slug: str, entry: Message) -> None:
    await broadcast(room_id, entry_event(room_id=room_id, room_slug=room_slug, entry=entry))


def custom_event(*, room_id: int, room_slug: str, payload: Any) -> dict[str, Any]:
    """parley.publish_event's room event: a `custom` frame (docs/protocol.md §4) for every socket
    whose join completed. Relayed as presence is (a ready subscription, no origin to skip)."""
    frame = protocol.encode({"type": "custom", "room": room_slug, "payload": payload})
    return {"type": "chat.custom", "room_id": room_id, "frame": frame, "origin": ""}


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
    """A user lost access to a room: their sockets in it leave at once (parley.delivery)."""
    await broadcast(room_id, {"type": "chat.revoke", "room_id": room_id, "user_id": user_id})


def user_event(*, user_id: int, frame: dict[str, Any], skip_socket: str | None = None,
               leave_room_id: int | None = None) -> dict[str, Any]:
    """An event for every socket of one user (version 2 sockets: parley.delivery), the frame
    encoded once; `skip_socket` (a socket id) does not get it — the socket whose own command
    caused it, which has its reply. `leave_room_id`: sockets in that room leave it first."""
    event = {"type": "user.frame", "user_id": user_id, "frame": protocol.encode(frame), "skip": skip_socket}
    if leave_room_id is not None:
        event["leave_room"] = leave_room_id
    return event


async def broadcast_user(*, user_id: int, frame: dict[str, Any], skip_socket: str | None = None) -> None:
    """Send a frame to every socket of the user, in every process (with REDIS_URL)."""
    await get_hub().publish_user(user_id, user_event(user_id=user_id, frame=frame, skip_socket=skip_socket))


async def close_credential_sockets(*, credential: tuple[str, int]) -> None:
    """Not a room broadcast: closes (4401) the sockets opened with a revoked API token,
    ("token", id), or by a deactivated user, ("user", id), in every process (through the
    hub's control channel on Redis).
    """
    await get_hub().revoke(credential)


# --- From synchronous code in any thread or process -----------------------------------------


def deliver_from_sync(room_id: int, event: dict[str, Any]) -> str:
    """Hand one room event to every server process's sockets from synchronous code — a view's
    thread, a management command, a worker, the shell — and say which way it went:

    - "redis": REDIS_URL is set; one PUBLISH, and every process subscribed to the room delivers
      it. If this process serves sockets (a view of the server), its hubs are handed the event
      directly first and skip the Redis copy: with Redis down they still get it, in real time.
    - "local": no Redis (or Redis refused the publish), and this process runs sockets: each of
      its hubs delivers it on its event loop.
    - "room-log": no Redis and no sockets here (another process). Nothing is sent: a message is
      in the room's log already, and every server process reads it from there within
      PARLEY_ROOM_LOG_POLL_MS (parley.roomwatch). An event that is not stored cannot go this way
      (parley.api.publish_event refuses it before).
    """
    hubs = local_hubs()
    _deliver_locally(hubs, room_id, event)
    if parley_settings.REDIS_URL:
        try:
            publish_from_sync(parley_settings.REDIS_URL, parley_settings.REDIS_PREFIX, room_id, event,
                              delivered_by=[hub.origin for hub in hubs])
        except Exception:
            if not hubs:
                raise
            # This process's sockets have it; the others read it from the database when their
            # subscription comes back (Redis pub/sub would not have kept it for them either).
            log.warning("Redis publish failed; room %s's other processes get the event from the "
                        "database", room_id, exc_info=True)
            return "local"
        return "redis"
    return "local" if hubs else "room-log"


def deliver_user_from_sync(user_id: int, event: dict[str, Any]) -> str:
    """deliver_from_sync for a user event (user_event): "redis" or "local" as there. Without
    Redis only this process's sockets get it; a user's sockets on other processes learn the
    state it announces (stored already) from their next `rooms` snapshot, on reconnect."""
    hubs = local_user_hubs()
    for hub in hubs:
        _call_on_loop(hub, hub.deliver_user, user_id, event)
    if parley_settings.REDIS_URL:
        try:
            publish_user_from_sync(parley_settings.REDIS_URL, parley_settings.REDIS_PREFIX, user_id, event,
                                   delivered_by=[hub.origin for hub in hubs])
        except Exception:
            log.warning("Redis publish of a user event failed; other processes' sockets see the "
                        "change on their next rooms snapshot", exc_info=True)
            return "local"
        return "redis"
    return "local"


def _call_on_loop(hub: LocalHub, fn: Any, *args: Any) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if hub.loop is running:
        fn(*args)
    else:
        hub.loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]


def _deliver_locally(hubs: list[LocalHub], room_id: int, event: dict[str, Any]) -> None:
    for hub in hubs:
        _call_on_loop(hub, hub.deliver, room_id, event)


def live_delivery_possible() -> bool:
    """Whether an event that is not stored can reach sockets from here (publish_event): with
    Redis, or in a process that serves sockets — one whose hub has sockets, or that loaded the
    consumer (the ASGI application does; a management command or a worker does not)."""
    return (bool(parley_settings.REDIS_URL) or bool(local_hubs())
            or "parley.consumers" in sys.modules)


# --- Subscriptions to parley.events ---------------------------------------------------------


def _on_message_posted(event: events.MessagePosted) -> None:
    if event.source == "socket":
        # The consumer broadcasts its own sends, after its ack (the sender sees the ack first).
        return
    assert event.room_slug is not None
    try:
        how = deliver_from_sync(event.room_id, message_event(
            room_id=event.room_id, room_slug=event.room_slug, message=event.message))
    except Exception:
        # Stored already: sockets read it on the room's next message (gap fill) or on resume.
        log.exception("live delivery of %s#%s failed; clients get it from the room log",
                      event.room_slug, event.message.seq)
        return
    log.debug("%s#%s posted from %s, delivered by %s", event.room_slug, event.message.seq, event.source, how)


def _on_entry_added(event: events.EntryAdded) -> None:
    if event.source == "socket":
        return  # the command broadcasts it after its reply, as a socket's send does
    try:
        deliver_from_sync(event.room_id, entry_event(room_id=event.room_id, room_slug=event.room_slug,
                                                     entry=event.entry))
    except Exception:
        log.exception("live delivery of %s#%s failed; clients get it from the room log",
                      event.room_slug, event.entry.seq)


def _on_app_event(event: events.AppEventPublished) -> None:
    deliver_from_sync(event.room_id, custom_event(room_id=event.room_id, room_slug=event.room_slug,
                                                  payload=event.payload))


def _on_member_removed(event: events.MemberRemoved) -> None:
    async_to_sync(broadcast_removed)(room_id=event.room_id, user_id=event.user_id)


def _on_user_notified(event: events.UserNotified) -> None:
    for user_id in event.user_ids:
        try:
            deliver_user_from_sync(user_id, user_event(user_id=user_id, frame=event.frame,
                                                       skip_socket=event.skip_socket,
                                                       leave_room_id=event.leave_room_id))
        except Exception:
            log.exception("live delivery of a %s event to user %s failed", event.frame.get("type"), user_id)


def _on_credential_revoked(event: events.CredentialRevoked) -> None:
    async_to_sync(close_credential_sockets)(credential=event.credential)


events.subscribe(events.MessagePosted, _on_message_posted)
events.subscribe(events.EntryAdded, _on_entry_added)
events.subscribe(events.AppEventPublished, _on_app_event)
events.subscribe(events.MemberRemoved, _on_member_removed)
events.subscribe(events.CredentialRevoked, _on_credential_revoked)
events.subscribe(events.UserNotified, _on_user_notified)
