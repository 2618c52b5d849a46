"""The consumer's database work: one hop to the database thread's read lane (parley.realtime.dbthread) per command.

Each function bundles the authorization check with the read it guards, so checking access on
every command — not only at join — costs no extra round trip to the thread pool. Sends go
through parley.ingest instead, which batches them into shared transactions on the other thread
(parley.realtime.dbthread says why reads and writes have a lane each).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from parley import conversation, protocol, selectors, services
from parley.conf import parley_settings
from parley.models import Message, Room
from parley.payloads import (
    ReaderReactions,
    entries_bytes,
    fit_page,
    messages_bytes,
    room_state_payload,
)
from parley.realtime.dbthread import Batched, read_thread
from parley.revocation import CredentialsRevoked
from parley.selectors import Credential
from parley.services import MessageRefused
from parley.storage import db as storage

P = ParamSpec("P")
R = TypeVar("R")


def db_call(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """fn, run in the database thread's read lane (parley.realtime.dbthread); the caller awaits its result.

    Not database_sync_to_async: asgiref copies the thread's context variables back into the
    caller's context after every call, re-homing the storage of each asgiref Local it finds,
    which from a socket's task leaves ~0.6 KB in every open socket's context. The database
    thread touches no context at all.
    """

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return read_thread.submit(fn, *args, **kwargs)  # type: ignore[misc]  # (ReadLane borrows DatabaseThread's methods)

    return call


# (room, messages, has_more, recovered, high_seq, last_seq, what the reader put on the page's
# messages). For a recovered resume of a version 2 socket, `messages` holds every log entry
# after after_seq (the reply's `events`); otherwise `message` entries only.
Snapshot = tuple[Room, list[Message], bool, bool | None, int, int, ReaderReactions]


def load_room(user: Any, slug: str) -> Awaitable[Room | None]:
    """The room if this user may see it (selectors.room_get_visible), in the read lane."""
    return _load_rooms((user, slug))


_load_rooms: Batched[tuple[Any, str], Room | None] = Batched(
    lambda wanted: selectors.rooms_get_visible(wanted=wanted), thread=read_thread)


async def join_snapshot(user: Any, cmd: protocol.Join, token_id: int | None = None,
                        v2: bool = False) -> Snapshot | None:
    """(room, messages, has_more, recovered, high_seq, last_seq) for a join, or None if the user
    may not see the room. Read after subscribing (parley.commands.join). Raises
    CredentialsRevoked if the user, or the socket's API token `token_id`, no longer holds.

    Joins that reach the read lane together are read together (join_snapshots): in a
    reconnect storm that is one hop and a few queries for many sockets, not two each.
    """
    found = await _join_snapshots((user, cmd, token_id, v2))
    if isinstance(found, CredentialsRevoked):
        raise found
    return found


def join_snapshots(items: list[tuple[Any, protocol.Join]], tokens: list[int | None] | None = None,
                   versions: list[bool] | None = None) -> list[Snapshot | CredentialsRevoked | None]:
    """join_snapshot for each (user, join), `tokens` the API token of each join's socket: one
    query for all their rooms (and with it, in the same round trip on PostgreSQL, one for
    whether their users and tokens still hold), one for the messages of every resuming join
    (the ten members of a room that resume after the same seq share the rows), and each
    distinct page read once. A join whose credentials were lost gets CredentialsRevoked."""
    tokens = tokens if tokens is not None else [None] * len(items)
    v2s = versions if versions is not None else [False] * len(items)
    credentials = [("user", user.pk) for user, _ in items] + [("token", t) for t in tokens if t is not None]
    rooms, lost = selectors.rooms_get_visible_checked(wanted=[(user, cmd.room) for user, cmd in items],
                                                      credentials=credentials)
    refused = [_refused(user, token_id, lost) for (user, _), token_id in zip(items, tokens, strict=True)]
    rooms = [None if no else room for room, no in zip(rooms, refused, strict=True)]
    # A version 2 `joined` lists a DM's members in its room object (docs/protocol.md §12): one
    # query, only when a DM is joined.
    selectors.rooms_with_dm_members(rooms=[r for r, v2 in zip(rooms, v2s, strict=True)
                                           if v2 and r is not None and r.kind == Room.Kind.DM])
    resumes: dict[int, tuple[int, int, int]] = {i: (room.pk, cmd.after_seq or 0, room.last_seq) for i, (room, (_, cmd)) in enumerate(zip(rooms, items, strict=True))
               if room is not None and _resumable(room, cmd)}
    ranges = dict(zip(resumes, selectors.messages_in_ranges(ranges=list(resumes.values())), strict=True))
    pages: dict[tuple[int, int], tuple[list[Message], bool]] = {}
    found = [no or (_snapshot(room, cmd, ranges.get(i), pages, v2) if room is not None else None)
             for i, (room, (_, cmd), no, v2) in enumerate(zip(rooms, items, refused, v2s, strict=True))]
    return _with_readers_reactions(found, [user for user, _ in items], v2s)


def _with_readers_reactions(found: list[Any], users: list[Any], v2s: list[bool]) -> list[Any]:
    """Each snapshot with what its reader put on its messages (a page's `me`): one query for the
    whole batch, none when no message of it has reactions. A version 2 resume has no pages'
    reactions (its `reaction` entries carry them)."""
    wanted = [(i, users[i].pk, s[1]) for i, s in enumerate(found)
              if isinstance(s, tuple) and not (s[3] and v2s[i]) and any(m.reactions for m in s[1])]
    if not wanted:
        return found
    mine = selectors.reactions_of(pairs={(user_id, m.pk) for _, user_id, ms in wanted for m in ms if m.reactions})
    for i, user_id, messages in wanted:
        found[i] = (*found[i][:6], {m.pk: mine[(user_id, m.pk)] for m in messages if (user_id, m.pk) in mine})
    return found


_join_snapshots: Batched[tuple[Any, protocol.Join, int | None, bool], Snapshot | CredentialsRevoked | None] = Batched(
    lambda items: join_snapshots([(user, cmd) for user, cmd, _, _ in items], [t for _, _, t, _ in items],
                                 [v2 for _, _, _, v2 in items]),
    thread=read_thread)


def _refused(user: Any, token_id: int | None, lost: set[Credential]) -> CredentialsRevoked | None:
    mine = {c for c in (("user", user.pk), ("token", token_id)) if c in lost}
    return CredentialsRevoked(mine) if mine else None


def _check(allowed: bool, lost: set[Credential]) -> bool:
    """room_user_can_use's answer: whether the room may be used; raises if credentials were lost."""
    if lost:
        raise CredentialsRevoked(lost)
    return allowed


def _resumable(room: Room, cmd: protocol.Join) -> bool:
    """The join resumes this room's log within PARLEY_RESUME_MAX_GAP. No epoch, no resume:
    the client could be holding seqs of another log of this room."""
    if cmd.after_seq is None or cmd.epoch != room.epoch:
        return False
    return 0 <= room.last_seq - cmd.after_seq <= parley_settings.RESUME_MAX_GAP


def _snapshot(room: Room, cmd: protocol.Join, missed: list[Message] | None,
              pages: dict[tuple[int, int], tuple[list[Message], bool]], v2: bool) -> Snapshot:
    """One join's snapshot: `missed` are the log entries after its after_seq up to the room's
    last_seq if it resumes (else None); pages holds the page reads already made. A version 2
    resume replays every entry (the reply's `events`), a version 1 resume the messages."""
    last_seq = room.last_seq
    recovered: bool | None = None
    if missed is not None and cmd.after_seq is not None:
        high = max([cmd.after_seq] + [m.seq for m in missed])
        if not v2:
            missed = [m for m in missed if m.kind == Message.Kind.MESSAGE]
        # Measured as encoded (JSON escapes included), like the page below: the reply is one frame.
        size = entries_bytes(missed, room_slug=room.slug) if v2 else messages_bytes(missed, room_slug=room.slug)
        if size <= parley_settings.REPLY_MAX_BYTES:
            return room, missed, cmd.after_seq > 0, True, high, max(last_seq, high), {}
    if cmd.after_seq is not None:
        recovered = False  # asked to resume, and cannot: a page instead
    key = (room.pk, cmd.limit)
    if key not in pages:
        pages[key] = selectors.message_page(room_id=room.pk, before=None, limit=cmd.limit)
    messages, has_more = _fit(*pages[key], room.slug)
    # The room's last_seq as read before the page: every entry up to it was committed before
    # the page was read, so the page shows its effect (an edit of an older message included) and
    # it is not sent again; an entry committed later has a greater seq and comes live. (Not a
    # last_seq read after the page: an entry committed in between would be dropped as seen.)
    high = max(messages[-1].seq if messages else 0, last_seq)
    return room, messages, has_more, recovered, high, high, {}


def _fit(messages: list[Message], has_more: bool, room_slug: str) -> tuple[list[Message], bool]:
    """Cut an ascending page from its oldest end until its encoded messages fit
    PARLEY_REPLY_MAX_BYTES (then has_more): the frame stays within what a client accepts."""
    return fit_page(messages, has_more, room_slug=room_slug, budget_bytes=parley_settings.REPLY_MAX_BYTES)


# What a history request costs before its page is read (parley.limits.ByteBudget): at most its
# reply frame's bytes. A message adds at most its text (4 bytes per character in UTF-8) and its
# fields; the page is cut to PARLEY_REPLY_MAX_BYTES. The read is then charged what it sent.
MESSAGE_FIELDS_BYTES = 256
HISTORY_MIN_COST_BYTES = 1024  # even an empty page is a query and a frame


def history_reserve_bytes(limit: int) -> int:
    """The most a `history` reply of `limit` messages can cost (reserved before the read)."""
    per_message = 4 * parley_settings.MAX_TEXT_CHARS + MESSAGE_FIELDS_BYTES
    return HISTORY_MIN_COST_BYTES + min(limit * per_message, parley_settings.REPLY_MAX_BYTES)


@db_call
def history(user: Any, room_id: int, room_slug: str, before: int | None, limit: int,
            token_id: int | None = None) -> tuple[list[Message], bool, ReaderReactions] | None:
    """A page of the room's history and what the reader put on it, None if the user may not
    see the room; CredentialsRevoked if the user or the socket's API token no longer holds."""
    if not _check(*selectors.room_user_can_use(user=user, room_id=room_id, token_id=token_id)):
        return None
    messages, has_more = _fit(*selectors.message_page(room_id=room_id, before=before, limit=limit), room_slug)
    return messages, has_more, selectors.reactions_mine(user_id=user.pk, messages=messages)


@db_call
def can_access(user: Any, room_id: int, token_id: int | None = None) -> bool:
    """Whether the user may use the room; CredentialsRevoked if the user or the socket's API
    token no longer holds."""
    return _check(*selectors.room_user_can_use(user=user, room_id=room_id, token_id=token_id))


@db_call
def messages_after(room_id: int, after_seq: int, before: int | None, limit: int) -> list[Message]:
    """Committed log entries with after_seq < seq (< before): fills gaps in live delivery."""
    return selectors.message_range(room_id=room_id, after_seq=after_seq, before=before, limit=limit)


def change_entry(what: str, user: Any, room_id: int, room_slug: str, seq: int, token_id: int | None,
                 fields: dict[str, Any]) -> Any:
    """An edit, delete or reaction from a socket (parley.conversation), on the database
    thread's write lane (parley.commands submits it there: it writes)."""
    # The room by its slug in plain SQL (parley.storage.reads), as a join reads it.
    room = next((r for r in storage().rooms_by_slug([room_slug]) if r.pk == room_id), None)
    if room is None:
        raise MessageRefused(protocol.ROOM_NOT_FOUND, "no such room")
    if what == "edit":
        return conversation.message_edit(room=room, actor=user, seq=seq, token_id=token_id, source="socket", **fields)
    if what == "delete":
        return conversation.message_delete(room=room, actor=user, seq=seq, token_id=token_id, source="socket")
    return conversation.reaction_set(room=room, actor=user, seq=seq, token_id=token_id, source="socket", **fields)


# --- Attention (docs/protocol.md §11) ---------------------------------------------------------


@db_call
def room_list(user: Any, token_id: int | None = None) -> list[dict[str, Any]]:
    """The user's room list as room-state objects (the `rooms` frame); CredentialsRevoked if the
    user or the socket's API token no longer holds."""
    lost = selectors.credentials_lost(credentials=[("user", user.pk)] + ([("token", token_id)] if token_id else []))
    if lost:
        raise CredentialsRevoked(lost)
    return [room_state_payload(*row) for row in selectors.room_state_list(user=user)]


def mark_read(user: Any, slug: str, seq: int, token_id: int | None, socket_id: str) -> selectors.RoomStateRow | None:
    """A socket's `read`, on the database thread's write lane: the room if the user may see it
    (no join needed), its marker moved (services.room_state_mark_read); None: no such room."""
    credentials: list[Credential] = [("user", user.pk)] + ([("token", token_id)] if token_id else [])
    rooms, lost = selectors.rooms_get_visible_checked(wanted=[(user, slug)], credentials=credentials)
    if lost:
        raise CredentialsRevoked(lost)
    if rooms[0] is None:
        return None
    return services.room_state_mark_read(user=user, room=rooms[0], seq=seq, skip_socket=socket_id)


def _open_states(opened: list[tuple[int, int, int]]) -> list[None]:
    services.room_states_open(opened=opened)
    return [None] * len(opened)


# Public rooms joined: their RoomStates, made in batches off the join's path (parley.commands),
# in the read lane: nothing waits for them, so they must not go ahead of a send's commit.
open_states: Batched[tuple[int, int, int], None] = Batched(_open_states, thread=read_thread)
