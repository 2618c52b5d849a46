"""The consumer's database work: one hop to the read thread (chat.dbthread) per command.

Each function bundles the authorization check with the read it guards, so checking access on
every command — not only at join — costs no extra round trip to the thread pool. Sends go
through chat.ingest instead, which batches them into shared transactions on the other thread
(chat.dbthread says why reads and writes have a lane each).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from django.conf import settings

from chat import protocol, selectors
from chat.dbthread import Batched, read_thread
from chat.models import Message, Room

P = ParamSpec("P")
R = TypeVar("R")


def db_call(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """fn, run on the read thread (chat.dbthread); the caller awaits its result.

    It used to be database_sync_to_async in a child task: asgiref copies the thread's context
    variables back into the caller's context after every call, re-homing the storage of each
    asgiref Local it finds, and called from a socket's task that left ~0.6 KB in every open
    socket's context. The read thread touches no context at all.
    """

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return read_thread.submit(fn, *args, **kwargs)

    return call


Snapshot = tuple[Room, list[Message], bool, bool | None, int, int]


def load_room(user: Any, slug: str) -> Awaitable[Room | None]:
    """The room if this user may see it (selectors.room_get_visible), on the read thread."""
    return _load_rooms((user, slug))


_load_rooms: Batched[tuple[Any, str], Room | None] = Batched(
    lambda wanted: selectors.rooms_get_visible(wanted=wanted), thread=read_thread)


def join_snapshot(user: Any, cmd: protocol.Join) -> Awaitable[Snapshot | None]:
    """(room, messages, has_more, recovered, high_seq, last_seq) for a join, or None if the user
    may not see the room. Read after subscribing (ChatConsumer.do_join).

    Joins that reach the read thread together are read together (join_snapshots): in a
    reconnect storm, each socket's join used to be one hop and two queries of its own.
    """
    return _join_snapshots((user, cmd))


def join_snapshots(items: list[tuple[Any, protocol.Join]]) -> list[Snapshot | None]:
    """join_snapshot for each (user, join): one query for all their rooms, one for the
    messages of every resuming join (the ten members of a room that resume after the same seq
    share the rows), and each distinct page read once."""
    rooms = selectors.rooms_get_visible(wanted=[(user, cmd.room) for user, cmd in items])
    resumes = {i: (room.pk, cmd.after_seq, room.last_seq) for i, (room, (_, cmd)) in enumerate(zip(rooms, items, strict=True))
               if room is not None and _resumable(room, cmd)}
    ranges = dict(zip(resumes, selectors.messages_in_ranges(ranges=list(resumes.values())), strict=True))
    pages: dict[tuple[int, int], tuple[list[Message], bool]] = {}
    return [_snapshot(room, cmd, ranges.get(i), pages) if room is not None else None
            for i, (room, (_, cmd)) in enumerate(zip(rooms, items, strict=True))]


_join_snapshots: Batched[tuple[Any, protocol.Join], Snapshot | None] = Batched(join_snapshots, thread=read_thread)


def _resumable(room: Room, cmd: protocol.Join) -> bool:
    """The join resumes this room's log within PARLEY_RESUME_MAX_GAP. No epoch, no resume:
    the client could be holding seqs of another log of this room."""
    if cmd.after_seq is None or cmd.epoch != room.epoch:
        return False
    return 0 <= room.last_seq - cmd.after_seq <= settings.PARLEY_RESUME_MAX_GAP


def _snapshot(room: Room, cmd: protocol.Join, missed: list[Message] | None,
              pages: dict[tuple[int, int], tuple[list[Message], bool]]) -> Snapshot:
    """One join's snapshot: `missed` are the messages after its after_seq up to the room's
    last_seq if it resumes (else None); pages holds the page reads already made."""
    last_seq = room.last_seq
    recovered: bool | None = None
    if missed is not None and cmd.after_seq is not None:
        if _reply_bytes(missed) <= settings.PARLEY_REPLY_MAX_BYTES:
            high = max([cmd.after_seq] + [m.seq for m in missed])
            return room, missed, cmd.after_seq > 0, True, high, max(last_seq, high)
    if cmd.after_seq is not None:
        recovered = False  # asked to resume, and cannot: a page instead
    key = (room.pk, cmd.limit)
    if key not in pages:
        pages[key] = selectors.message_page(room_id=room.pk, before=None, limit=cmd.limit)
    messages, has_more = _fit(*pages[key])
    # Not last_seq: a message committed after the page was read is still on its way to us as a
    # live event, and must not be dropped as "already seen".
    high = messages[-1].seq if messages else 0
    return room, messages, has_more, recovered, high, max(last_seq, high)


def _message_bytes(message: Message) -> int:
    """Roughly what one message adds to a reply frame: its text plus ~200 bytes of fields."""
    return len(message.text.encode()) + 200


def _reply_bytes(messages: list[Message]) -> int:
    return sum(_message_bytes(m) for m in messages)


def _fit(messages: list[Message], has_more: bool) -> tuple[list[Message], bool]:
    """Cut an ascending page from its oldest end to PARLEY_REPLY_MAX_BYTES (then has_more)."""
    budget, kept = settings.PARLEY_REPLY_MAX_BYTES, 0
    for message in reversed(messages):
        budget -= _message_bytes(message)
        if budget < 0:
            break
        kept += 1
    if kept == len(messages):
        return messages, has_more
    return messages[len(messages) - max(kept, 1):], True


# What a history request costs before its page is read (chat.limits.ByteBudget): at most its
# reply frame's bytes. A message adds at most its text (4 bytes per character in UTF-8) and its
# fields; the page is cut to PARLEY_REPLY_MAX_BYTES. The read is then charged what it sent.
MESSAGE_FIELDS_BYTES = 256
HISTORY_MIN_COST_BYTES = 1024  # even an empty page is a query and a frame


def history_reserve_bytes(limit: int) -> int:
    """The most a `history` reply of `limit` messages can cost (reserved before the read)."""
    per_message = 4 * settings.PARLEY_MAX_TEXT_CHARS + MESSAGE_FIELDS_BYTES
    return HISTORY_MIN_COST_BYTES + min(limit * per_message, settings.PARLEY_REPLY_MAX_BYTES)


@db_call
def history(user: Any, room_id: int, before: int | None, limit: int) -> tuple[list[Message], bool] | None:
    if not selectors.room_user_can_access(user=user, room_id=room_id):
        return None
    return _fit(*selectors.message_page(room_id=room_id, before=before, limit=limit))


@db_call
def can_access(user: Any, room_id: int) -> bool:
    return selectors.room_user_can_access(user=user, room_id=room_id)


@db_call
def messages_after(room_id: int, after_seq: int, before: int | None, limit: int) -> list[Message]:
    """Committed messages with after_seq < seq (< before): fills gaps in live delivery."""
    return selectors.message_range(room_id=room_id, after_seq=after_seq, before=before, limit=limit)
