"""How rooms, users and messages look on the wire (docs/protocol.md §2). One shape, one place."""

from typing import Any

import orjson
from django.urls import NoReverseMatch, reverse

from parley.models import Message, Room, RoomState


def user_payload(user: Any) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username()}


def room_payload(room: Room, *, last_seq: int | None = None, v2: bool = False) -> dict[str, Any]:
    """The room object (docs/protocol.md §2); `v2` (version 2 sockets and HTTP, §12) adds `kind`,
    `archived` and, for a DM, `members` (loaded beforehand as `dm_members`:
    parley.selectors.rooms_with_dm_members)."""
    payload = {
        "slug": room.slug,
        "title": room.title,
        "private": room.is_private,
        "epoch": room.epoch,
        "last_seq": room.last_seq if last_seq is None else last_seq,
    }
    if v2:
        payload["kind"] = room.kind
        payload["archived"] = room.archived_at is not None
        if room.kind == Room.Kind.DM:
            payload["members"] = [user_payload(u) for u in getattr(room, "dm_members", ())]
    return payload


def room_notify(room: Room, state: RoomState | None) -> str:
    """The room's effective notify setting for the user: theirs, or the default ("all" for a DM,
    "mentions" for a room)."""
    if state is not None and state.notify:
        return state.notify
    return RoomState.Notify.ALL if room.kind == Room.Kind.DM else RoomState.Notify.MENTIONS


def room_state_payload(room: Room, state: RoomState | None, counts: tuple[int, int]) -> dict[str, Any]:
    """One user's view of one room (docs/protocol.md §11): the room object, their read marker,
    the (capped) unread and mention counts `counts`, and their notify/muted settings. No state
    row yet reads as nothing read, the default notify, not muted."""
    return {
        "room": room_payload(room, v2=True),  # room-state objects exist for version 2 only
        "last_read_seq": state.last_read_seq if state is not None else 0,
        "unread": counts[0],
        "mentions": counts[1],
        "notify": room_notify(room, state),
        "muted": state.muted if state is not None else False,
    }


def read_frame(room: Room, state: RoomState | None, counts: tuple[int, int]) -> dict[str, Any]:
    """The `read` frame (docs/protocol.md §11): where the user's read marker in the room is."""
    return {"type": "read", "room": room.slug, "seq": state.last_read_seq if state is not None else 0,
            "unread": counts[0], "mentions": counts[1]}


def timestamp(value: Any) -> str:
    """UTC, ISO 8601, milliseconds, 'Z' — the one timestamp format of the protocol.

    Formatted field by field: strftime took 5.6 µs a call against 3.8 (timeit), and every
    stored message is formatted for its ack and for its broadcast."""
    v = value
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}."
            f"{v.microsecond // 1000:03d}Z")


# A reply's quote of its target: this many characters of the target's text (docs/protocol.md §10).
REPLY_EXCERPT_CHARS = 100

# What a page's reader put on its messages (parley.selectors.reactions_mine): message id → emoji.
ReaderReactions = dict[int, set[str]]
_NONE: frozenset[str] = frozenset()


def message_payload(message: Message, *, room_slug: str,
                    reader_reactions: ReaderReactions | None = None, attachments: bool = True) -> dict[str, Any]:
    """The wire's message object (docs/protocol.md §2, §10). Version 2's fields are added only
    when they differ from their defaults, so a plain new message — every broadcast of the
    fan-out's hot path — is the seven keys it always was.

    `reader_reactions` is given for pages (joined, history, GET …/messages): then `reactions`
    appear, with `me` for that reader. Log events carry none (their `reaction` entries follow).
    The author must be loaded (select_related) or passed in; a reply's quote is attached by
    the read that loaded the message (parley.selectors), as `reply_quote`. `attachments=False`
    leaves a message's files out: a version 1 socket's frames stay exactly version 1's.
    """
    payload = {
        "room": room_slug,
        "seq": message.seq,
        "id": message.pk,
        "client_id": message.client_id,
        "author": user_payload(message.author),
        "text": message.text,
        "ts": timestamp(message.created_at),
    }
    if message.target_seq is not None:
        payload["reply_to"] = getattr(message, "reply_quote", None) or quote_missing(message.target_seq)
    if message.deleted_at is not None:
        payload["deleted"] = True
        return payload
    if message.mentions:
        payload["mentions"] = message.mentions
    if message.mention_room:
        payload["mention_room"] = True
    if message.edited_at is not None:
        payload["edited_at"] = timestamp(message.edited_at)
    if attachments and message.attachments:
        payload["attachments"] = [attachment_payload(a, room_slug=room_slug) for a in message.attachments]
    if reader_reactions is not None and message.reactions:
        mine = reader_reactions.get(message.pk, _NONE)
        payload["reactions"] = [{"emoji": e, "count": n, "me": e in mine} for e, n in message.reactions]
    return payload


def attachment_payload(record: dict[str, Any], *, room_slug: str) -> dict[str, Any]:
    """One file of a message (docs/protocol.md §14): Message.attachments' record and its
    download URL (parley.upload_views, authorized as the room)."""
    try:
        url = reverse("parley:api-room-upload", kwargs={"slug": room_slug, "upload_id": record["id"]})
    except NoReverseMatch:  # a host that routes parley.urls under another namespace (as views.is_api)
        url = f"/api/rooms/{room_slug}/uploads/{record['id']}"
    return {**record, "url": url}


def reply_quote(target: Message) -> dict[str, Any]:
    """How a reply quotes its target, as the target is now."""
    deleted = target.deleted_at is not None
    return {"seq": target.seq, "author": user_payload(target.author),
            "excerpt": "" if deleted else target.text[:REPLY_EXCERPT_CHARS], "deleted": deleted}


def quote_missing(seq: int) -> dict[str, Any]:
    """The quote of a target the read did not find (its room's log was cut by an operator)."""
    return {"seq": seq, "author": None, "excerpt": "", "deleted": True}


def entry_frame(entry: Message, *, room_slug: str, attachments: bool = True) -> dict[str, Any]:
    """The event frame of one log entry (docs/protocol.md §10), as live delivery sends it and a
    version 2 resume lists it (`attachments=False`: as a version 1 socket gets a message)."""
    kind = entry.kind
    if kind == Message.Kind.MESSAGE:
        return {"type": "message", "room": room_slug,
                "message": message_payload(entry, room_slug=room_slug, attachments=attachments)}
    head = {"room": room_slug, "seq": entry.seq, "target": entry.target_seq}
    if kind == Message.Kind.EDIT:
        frame = {"type": "edit", **head, "text": entry.text, "edited_at": timestamp(entry.created_at),
                 "by": user_payload(entry.author)}
        if entry.mentions:
            frame["mentions"] = entry.mentions
        if entry.mention_room:
            frame["mention_room"] = True
        return frame
    if kind == Message.Kind.DELETE:
        return {"type": "delete", **head, "by": user_payload(entry.author)}
    return {"type": "reaction", **head, "emoji": entry.emoji, "user": user_payload(entry.author),
            "op": "add" if kind == Message.Kind.REACT else "remove", "count": entry.count}


def entries_bytes(entries: list[Message], *, room_slug: str) -> int:
    """The encoded size of the JSON array of these entries' event frames (a resume's `events`)."""
    return 2 + sum(len(orjson.dumps(entry_frame(e, room_slug=room_slug))) + 1 for e in entries) - (1 if entries else 0)


def _plain(message: Message) -> bool:
    """A message whose object is §2's seven keys (message_payload_bytes can count it)."""
    return (message.target_seq is None and message.deleted_at is None and not message.mentions
            and not message.mention_room and message.edited_at is None and not message.reactions
            and not message.attachments)


# What one message adds to a frame, exactly as orjson encodes message_payload: the fixed part
# (keys, punctuation, empty values) measured once, plus each value's own encoded length.
# JSON escaping is why the text's UTF-8 length is not enough: U+0001 is six bytes (\u0001).
_MESSAGE_FIXED_BYTES = len(orjson.dumps(
    {"room": "", "seq": 0, "id": 0, "client_id": "", "author": {"id": 0, "username": ""}, "text": "",
     "ts": ""}))
_TIMESTAMP_CHARS = len("2026-11-25T10:00:00.123Z")


def message_payload_bytes(message: Message, *, room_slug: str) -> int:
    """len(orjson.dumps(message_payload(message, room_slug=room_slug))), without building it.

    tests/test_payloads.py checks the two agree. Cheap: three small encodings and no dicts. A
    message with version 2's fields (a reply, an edit …) is encoded instead, with `me` false for
    each reaction (the larger form).
    """
    if not _plain(message):
        return len(orjson.dumps(message_payload(message, room_slug=room_slug, reader_reactions={})))
    client_id = message.client_id
    return (_MESSAGE_FIXED_BYTES + len(orjson.dumps(room_slug)) - 2
            + len(str(message.seq)) - 1 + len(str(message.pk)) - 1
            + (2 if client_id is None else len(orjson.dumps(client_id)) - 2)
            + len(str(message.author.pk)) - 1 + len(orjson.dumps(message.author.get_username())) - 2
            + len(orjson.dumps(message.text)) - 2 + _TIMESTAMP_CHARS)


def messages_bytes(messages: list[Message], *, room_slug: str) -> int:
    """The encoded size of the JSON array of these messages' payloads, as a reply carries it."""
    return 2 + sum(message_payload_bytes(m, room_slug=room_slug) + 1 for m in messages) - (1 if messages else 0)


def fit_page(messages: list[Message], has_more: bool, *, room_slug: str,
             budget_bytes: int) -> tuple[list[Message], bool]:
    """Cut an ascending page from its oldest end until its encoded messages array fits
    `budget_bytes` (PARLEY_REPLY_MAX_BYTES); a page cut short has has_more. The newest message
    is kept even alone over budget (only a budget below one message's size does that), so
    paging back with `before` always moves on."""
    used, kept = 2, 0
    for message in reversed(messages):
        used += message_payload_bytes(message, room_slug=room_slug) + (1 if kept else 0)
        if used > budget_bytes:
            break
        kept += 1
    if kept == len(messages):
        return messages, has_more
    return messages[len(messages) - max(kept, 1):], True
