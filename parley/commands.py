"""The client's commands (docs/protocol.md §4), one handler each, over the socket's session.

Each handler gets the parsed command (parley.protocol) and its `ref`, answers with at most one
reply frame, and raises ProtocolError for the one error frame instead (parley.consumers sends
it). The consumer has charged the frame to the socket's frame budget before any handler runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.db import DatabaseError

from parley import consumer_db as db
from parley import fanout, limits, metrics, opened_rooms, protocol
from parley.conf import parley_settings
from parley.conversation import Change
from parley.ingest import get_writer
from parley.payloads import entry_frame, message_payload, read_frame, room_payload, timestamp
from parley.protocol import ProtocolError
from parley.realtime.dbthread import database_thread
from parley.realtime.ordering import Subscription
from parley.realtime.tasks import spawn
from parley.services import MessageRefused
from parley.session import Session, room_not_found

log = logging.getLogger(__name__)

# Per-user budgets. The message bucket is one per user for the WebSocket send and POST
# /api/rooms/<slug>/messages together, cluster-wide with REDIS_URL (one Redis round trip per
# send); the history budget is per process (parley/limits.py).
_user_message_buckets = limits.USER_MESSAGE_BUCKETS
_user_edit_buckets = limits.USER_EDIT_BUCKETS
_user_read_buckets = limits.USER_READ_BUCKETS
_history_budget = limits.ByteBudget(limits.HISTORY_BYTES_PER_SEC, limits.HISTORY_BURST_BYTES,
                                    limits.HISTORY_PROCESS_BYTES_PER_SEC, limits.HISTORY_PROCESS_BURST_BYTES)

_RESUMED = metrics.RESUMES.labels("true")
_NOT_RESUMED = metrics.RESUMES.labels("false")

Handler = Callable[[Session, Any, str | None], Awaitable[None]]


async def join(session: Session, cmd: protocol.Join, ref: str | None) -> None:
    # A join reads a page as history does, so its reply is charged to the user's history
    # budget too, after the read (its size is known only then), into debt if need be; a
    # join while in debt is refused. Not to the process budget: a reconnect storm's joins
    # must not be refused because of everyone else's.
    user = session.user
    wait = _history_budget.debt_wait(user.pk)
    if wait:
        metrics.refused("history")
        raise ProtocolError(protocol.RATE_LIMITED, "too much history read; retry the join later",
                            room=cmd.room, retry_after_ms=ms(wait))
    for _attempt in range(2):
        sub = session.subs_by_slug.get(cmd.room)
        first_join = sub is None
        if sub is None:
            sub = await session.subscribe(cmd.room)
        sub.ready = False  # live events queue in sub.pending until the snapshot is sent
        # Read after subscribing: whatever commits after the read is then certain to arrive
        # live, and whatever the read saw is dropped by seq when it arrives. The same hop
        # checks that the user may see the room.
        found = await db.join_snapshot(user, cmd, session.token_id, session.v2)
        if found is not None and found[0].pk == sub.room_id:
            break
        await session.unsubscribe(sub)
        if found is None:  # no such room, or not for this user (any more)
            raise room_not_found(cmd.room)
        session.relearn_room(cmd.room, found[0].pk)
    else:
        raise room_not_found(cmd.room)
    room, messages, has_more, recovered, high, last_seq, mine = found
    members = await session.presence_join(room.pk, room.slug, first_join, sub)
    replay = recovered and session.v2  # a version 2 resume lists the log's entries (protocol.md §10)
    reply = with_ref({
        "type": "joined",
        "room": room_payload(room, last_seq=last_seq, v2=session.v2),
        "messages": [] if replay else [message_payload(m, room_slug=room.slug, reader_reactions=mine,
                                                       attachments=session.v2) for m in messages],
        "has_more": has_more,
        "members": [{"id": m.id, "username": m.username} for m in members],
        "recovered": recovered,
    }, ref)
    if replay:
        reply["events"] = [entry_frame(m, room_slug=room.slug) for m in messages]
    text, size = protocol.encode_sized(reply)
    if size > protocol.max_server_frame_bytes():
        # The messages fit their budget already (consumer_db): only a room with thousands of
        # users online gets here, and its member list gives way so the frame stays one a
        # client accepts (protocol.md §3).
        reply["members"] = members_that_fit(reply["members"])
        text, size = protocol.encode_sized(reply)
    _history_budget.charge_after(user.pk, size)
    session.send_message(text, size)
    session.delivery.start(sub, high)
    if first_join and not room.is_private:
        _open_state(user.pk, room.pk, last_seq)
    metrics.JOINS.inc()
    if recovered is not None:
        (_RESUMED if recovered else _NOT_RESUMED).inc()


async def leave(session: Session, cmd: protocol.Leave, ref: str | None) -> None:
    await session.unsubscribe(session.joined(cmd.room))
    session.send_frame(with_ref({"type": "left", "room": cmd.room}, ref))


async def send(session: Session, cmd: protocol.Send, ref: str | None) -> None:
    started = time.perf_counter()
    sub = session.joined(cmd.room)
    wait = await _user_message_buckets.shared_take(session.user.pk)
    if wait:
        metrics.refused("messages")
        raise ProtocolError(protocol.RATE_LIMITED, "too many messages; retry later with the same client_id",
                            room=sub.slug, retry_after_ms=ms(wait))
    try:
        result = await get_writer().submit(user=session.user, room_id=sub.room_id, text=cmd.text,
                                           client_id=cmd.client_id, token_id=session.token_id,
                                           reply_to=cmd.reply_to, attachments=cmd.attachments)
    except DatabaseError:
        log.exception("could not store a message in room %s", sub.slug)
        raise ProtocolError(protocol.COMMIT_FAILED, "the message was not stored; retry with the same client_id",
                            room=sub.slug) from None
    except MessageRefused as refused:  # a reply to no message of the room or a deleted one, a bad attachment
        raise ProtocolError(refused.code, refused.message, field=refused.field, room=sub.slug) from None
    if result is None:
        await session.unsubscribe(sub)
        raise room_not_found(cmd.room)
    message, duplicate = result
    committed = time.perf_counter()
    session.send_frame(with_ref({
        "type": "ack", "room": sub.slug, "client_id": message.client_id, "seq": message.seq,
        "id": message.pk, "ts": timestamp(message.created_at), "duplicate": duplicate,
    }, ref))
    metrics.MESSAGES_ACKED.inc()
    metrics.ACK_LATENCY.observe(time.perf_counter() - started)
    if not duplicate:
        try:
            await fanout.broadcast_message(room_id=sub.room_id, room_slug=sub.slug, message=message)
            metrics.FANOUT_LATENCY.observe(time.perf_counter() - committed)
        except Exception:
            # Committed and acked already: sockets that missed the event fill the gap from the
            # database on the next message, and reconnecting clients resume past it.
            log.exception("broadcast of %s#%s failed", sub.slug, message.seq)


async def history(session: Session, cmd: protocol.History, ref: str | None) -> None:
    sub = session.joined(cmd.room)
    user = session.user
    # Charged before the read, for the largest reply it could give; settled to the reply's
    # real size after (parley.limits.ByteBudget).
    wait, reserved = _history_budget.reserve(user.pk, db.history_reserve_bytes(cmd.limit))
    if wait:
        metrics.refused("history")
        raise ProtocolError(protocol.RATE_LIMITED, "too much history read; retry later",
                            room=sub.slug, retry_after_ms=ms(wait))
    used = db.HISTORY_MIN_COST_BYTES
    try:
        result = await db.history(user, sub.room_id, sub.slug, cmd.before, cmd.limit, session.token_id)
        if result is None:
            await session.unsubscribe(sub)
            raise room_not_found(cmd.room)
        messages, has_more, mine = result
        text, size = protocol.encode_sized(with_ref({
            "type": "history", "room": sub.slug, "has_more": has_more,
            "messages": [message_payload(m, room_slug=sub.slug, reader_reactions=mine, attachments=session.v2)
                         for m in messages],
        }, ref))
        used = max(used, size)
        session.send_message(text, size)
    finally:
        _history_budget.settle(user.pk, reserved, used)


async def edit(session: Session, cmd: protocol.Edit, ref: str | None) -> None:
    change, sub = await _change(session, cmd, "edit", text=cmd.text)
    message = change.message
    session.send_frame(with_ref({
        "type": "edited", "room": sub.slug, "target": cmd.seq, "seq": _entry_seq(change),
        "edited_at": timestamp(message.edited_at) if message.edited_at else None,
    }, ref))
    await _broadcast_entry(sub, change)


async def delete(session: Session, cmd: protocol.Delete, ref: str | None) -> None:
    change, sub = await _change(session, cmd, "delete")
    session.send_frame(with_ref({"type": "deleted", "room": sub.slug, "target": cmd.seq,
                                 "seq": _entry_seq(change)}, ref))
    await _broadcast_entry(sub, change)


async def react(session: Session, cmd: protocol.React, ref: str | None) -> None:
    change, sub = await _change(session, cmd, "react", emoji=cmd.emoji, add=cmd.add)
    session.send_frame(with_ref({
        "type": "reacted", "room": sub.slug, "target": cmd.seq, "emoji": cmd.emoji,
        "op": "add" if cmd.add else "remove", "seq": _entry_seq(change), "count": change.count(cmd.emoji),
    }, ref))
    await _broadcast_entry(sub, change)


async def _change(session: Session, cmd: protocol.Edit | protocol.Delete | protocol.React, what: str,
                  **fields: Any) -> tuple[Change, Subscription]:
    """Charge the user's edit bucket, then make the change on the database thread's write lane
    (parley.conversation checks access and rights there): the change and the joined room."""
    sub = session.joined(cmd.room)
    wait = await _user_edit_buckets.shared_take(session.user.pk)
    if wait:
        metrics.refused("edits")
        raise ProtocolError(protocol.RATE_LIMITED, "too many edits and reactions; retry later",
                            room=sub.slug, retry_after_ms=ms(wait))
    try:
        change = await database_thread.submit(db.change_entry, what, session.user, sub.room_id, sub.slug, cmd.seq,
                                              session.token_id, fields)
    except DatabaseError:
        log.exception("could not store a change in room %s", sub.slug)
        raise ProtocolError(protocol.COMMIT_FAILED, "nothing was changed; retry", room=sub.slug) from None
    except MessageRefused as refused:
        if refused.code == protocol.ROOM_NOT_FOUND:  # access lost meanwhile: leave, as send does
            await session.unsubscribe(sub)
            raise room_not_found(cmd.room) from None
        raise ProtocolError(refused.code, refused.message, field=refused.field, room=sub.slug) from None
    return change, sub


def _entry_seq(change: Change) -> int | None:
    return change.entry.seq if change.entry is not None else None


async def _broadcast_entry(sub: Subscription, change: Change) -> None:
    if change.entry is None:
        return
    try:
        await fanout.broadcast_entry(room_id=sub.room_id, room_slug=sub.slug, entry=change.entry)
    except Exception:
        # Committed and answered: sockets that missed it fill the gap from the database.
        log.exception("broadcast of %s#%s failed", sub.slug, change.entry.seq)


async def typing(session: Session, cmd: protocol.Typing, ref: str | None) -> None:
    sub = session.joined(cmd.room)
    now = time.monotonic()
    if (now - sub.typing_at) * 1000 < parley_settings.TYPING_MIN_INTERVAL_MS:
        return  # relayed one a moment ago; peers show "typing" for seconds anyway
    sub.typing_at = now
    if not await db.can_access(session.user, sub.room_id, session.token_id):
        await session.unsubscribe(sub)
        raise room_not_found(cmd.room)
    await fanout.broadcast_typing(room_id=sub.room_id, room_slug=sub.slug, user=session.user)


async def ping(session: Session, cmd: protocol.Ping, ref: str | None) -> None:
    # Presence was kept alive by the consumer's receive(), as for every frame.
    session.send_frame(with_ref({"type": "pong"}, ref))


# --- Attention (docs/protocol.md §11) ---------------------------------------------------------

def _open_state(user_id: int, room_id: int, last_seq: int) -> None:
    """The user opened a public room: their RoomState (listed, read up to the room's last_seq
    now) unless this process knows they have it listed (parley.opened_rooms), written after
    the join's reply, batched with other joins'."""
    if not opened_rooms.remember(user_id, room_id):
        return

    async def write() -> None:
        try:
            await db.open_states((user_id, room_id, last_seq))
        except Exception:
            opened_rooms.forget(user_id, room_id)  # the next join tries again
            raise

    spawn(write())


async def _take_read_token(session: Session, room: str | None = None) -> None:
    wait = await _user_read_buckets.shared_take(session.user.pk)
    if wait:
        metrics.refused("reads")
        raise ProtocolError(protocol.RATE_LIMITED, "too many read marks and room lists; retry later",
                            room=room, retry_after_ms=ms(wait))


async def rooms(session: Session, cmd: protocol.Rooms, ref: str | None) -> None:
    await _take_read_token(session)
    await send_rooms(session, ref)


async def send_rooms(session: Session, ref: str | None) -> None:
    """The `rooms` frame: the user's room list (after `hello` on a version 2 socket, and the
    reply to `rooms`)."""
    states = await db.room_list(session.user, session.token_id)
    session.send_frame(with_ref({"type": "rooms", "rooms": states}, ref))


async def read(session: Session, cmd: protocol.Read, ref: str | None) -> None:
    await _take_read_token(session, cmd.room)
    try:
        row = await database_thread.submit(db.mark_read, session.user, cmd.room, cmd.seq, session.token_id,
                                           session.socket_id)
    except DatabaseError:
        log.exception("could not store a read marker in room %s", cmd.room)
        raise ProtocolError(protocol.COMMIT_FAILED, "the read marker was not stored; retry", room=cmd.room) from None
    if row is None:
        raise room_not_found(cmd.room)
    session.send_frame(with_ref(read_frame(*row), ref))


def ms(seconds: float) -> int:
    """A wait as the whole milliseconds of `retry_after_ms` (never 0: 0 would mean "now")."""
    return max(1, int(seconds * 1000 + 0.999))


def members_that_fit(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first members whose encoded list fits what a joined reply leaves them."""
    budget = protocol.REPLY_ENVELOPE_MAX_BYTES - protocol.REPLY_ENVELOPE_FIXED_BYTES
    used, kept = 2, 0
    for member in members:
        used += protocol.encode_sized(member)[1] + 1
        if used > budget:
            break
        kept += 1
    return members[:kept]


def with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame
