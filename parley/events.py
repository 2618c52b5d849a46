"""Domain events, sent when the transaction that caused them commits: the one way product code
tells the rest of Parley (fan-out, the `message_posted` signal) that something happened.

Services never call fan-out themselves: they call `send_event_on_commit(...)`, and whoever
cares subscribes to the event's class (`subscribe`). This is Zulip's `send_event_on_commit`:
an event about a write that rolls back is never seen, and one about a write inside a caller's
`transaction.atomic()` waits for that block's commit. Outside any transaction the event is
dispatched at once.

Subscribers run synchronously, one after another, in the thread that committed; one that
raises is logged and does not keep the others from running. Today's subscribers: parley.fanout
(live delivery) and parley.receivers (the `message_posted` signal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import transaction

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class MessagePosted:
    """A new message was stored (never for an idempotent replay, which stores nothing).

    `source` is where it came from: "socket" (a WebSocket `send`, parley.ingest), "http"
    (POST /api/rooms/<slug>/messages) or "python" (parley.post_message). `room_slug` is None
    on the socket path, which knows the room by id only.
    """

    message: Any
    room_id: int
    room_slug: str | None
    source: str


@dataclass(frozen=True, slots=True)
class EntryAdded:
    """An edit, delete or reaction entry was stored in a room's log (parley.conversation).
    `source` as MessagePosted's: "socket" (the command broadcasts it itself), "http", "python"
    or "admin"."""

    entry: Any
    message: Any  # the message the entry changed, as it is after the change
    room_id: int
    room_slug: str
    source: str


@dataclass(frozen=True, slots=True)
class AppEventPublished:
    """parley.publish_event: an app-defined payload for the room's sockets, never stored."""

    room_id: int
    room_slug: str
    payload: Any


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """A user lost access to a private room: their sockets in it must leave."""

    room_id: int
    user_id: int


@dataclass(frozen=True, slots=True)
class CredentialRevoked:
    """An API token was revoked, ("token", id), or a user deactivated or deleted, ("user", id)."""

    credential: tuple[str, int]


@dataclass(frozen=True, slots=True)
class UserNotified:
    """A frame for every socket of these users, not of a room (a room added to or removed from
    their list, a read marker moved): parley.fanout.user_event. `skip_socket` is the socket id
    whose own command caused it (its reply says so already). `leave_room_id`: the room the
    users' version 2 sockets leave before they get the frame (room_removed, parley.rooms)."""

    user_ids: tuple[int, ...]
    frame: dict[str, Any]
    skip_socket: str | None = None
    leave_room_id: int | None = None


_subscribers: dict[type, list[Callable[[Any], None]]] = {}


def subscribe(event_type: type[E], handler: Callable[[E], None]) -> None:
    """Call `handler(event)` for every event of this class from now on (once per handler)."""
    handlers = _subscribers.setdefault(event_type, [])
    if handler not in handlers:
        handlers.append(handler)


def has_subscribers(event_type: type) -> bool:
    return bool(_subscribers.get(event_type))


def send_event_on_commit(event: Any, *, using: str | None = None) -> None:
    """Dispatch `event` once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: send_event(event), using=using)


def send_event(event: Any) -> None:
    """Dispatch an event whose write is committed already (parley.ingest's group commit)."""
    for handler in tuple(_subscribers.get(type(event), ())):
        try:
            handler(event)
        except Exception:  # the write is committed: one subscriber must not cost the others
            log.exception("a subscriber of %s failed", type(event).__name__)
