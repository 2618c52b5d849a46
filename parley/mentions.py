"""Mentions: which users a message's `@username`s name, and whether its `@room` counts
(docs/protocol.md §10, the message object's `mentions` and `mention_room`).

Parsed on the server, when a message is stored or edited, so every client highlights the same
people and the "attention" features can notify them. A name is a mention only if it is an active
user who is in the room: a member of it (its owner included), or, in a public room, someone who
has posted in it or has it in their room list; and who may see it (a private room's members only, not admins by privilege).
Mentioning anyone else stores nothing and tells the author nothing (the text stays text): a
mention reveals only people the author can see in the room anyway, never whether an account
exists, which accounts are staff, or who is in a private room.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.contrib.auth import get_user_model

from parley import limits
from parley.conf import parley_settings
from parley.models import Membership, Message, Room, RoomState
from parley.selectors import sees_all

# Django's default username characters (letters, digits, @ . + - _): `@ada` and, for a host that
# signs in by e-mail, `@ada@example.com`. Not after a word character or another @ (an e-mail
# address in the text is not a mention).
MENTION_RE = re.compile(r"(?<![\w@])@([\w.+-]+(?:@[\w-]+(?:\.[\w-]+)+)?)")
ROOM_WORD = "room"
# More candidates than this in one text are not looked up (the extra are plain text anyway).
MAX_CANDIDATES = 50


def candidates(text: str) -> list[str]:
    """The names after each `@`, in order of first appearance, each once; a name's trailing
    punctuation (`@ada.` at the end of a sentence) is not part of it."""
    if "@" not in text:
        return []
    names: dict[str, None] = {}
    for match in MENTION_RE.finditer(text):
        name = match.group(1).rstrip(".-+")
        if name:
            names[name] = None
            if len(names) >= MAX_CANDIDATES:
                break
    return list(names)


def _in_the_room(pairs: set[tuple[int, int]], is_private: dict[int, bool]) -> set[tuple[int, int]]:
    """The (user id, room id) pairs whose user is in the room: a member, or (public rooms) one
    who has it in their room list (a listed RoomState: they opened it, docs/protocol.md §11) or
    an author of one of its messages. Three queries at most, on the (room, user) and (room,
    author, client_id) indexes."""
    users = {u for u, _ in pairs}
    rooms = {r for _, r in pairs}
    found = set(Membership.objects.filter(room_id__in=rooms, user_id__in=users).values_list("user_id", "room_id"))
    public = {r for r in rooms if not is_private.get(r, True)}
    rest = {(u, r) for u, r in pairs if r in public and (u, r) not in found}
    if rest:
        found |= set(RoomState.objects.filter(room_id__in={r for _, r in rest}, user_id__in={u for u, _ in rest},
                                              listed=True).values_list("user_id", "room_id"))
        rest -= found
    if rest:
        found |= set(Message.objects.filter(room_id__in={r for _, r in rest}, author_id__in={u for u, _ in rest},
                                            kind=Message.Kind.MESSAGE).order_by().values_list("author_id", "room_id").distinct())
    return pairs & found


def resolve(messages: Sequence[Message], *, is_private: dict[int, bool]) -> None:
    """Set `mentions` and `mention_room` on each unsaved message (or edit entry) from its text:
    one query for every named user of the batch, one for the memberships of private rooms.

    `is_private` is each room's privacy by id. @room counts only for the room's owner or an admin, within their
    PARLEY_ROOM_MENTIONS_PER_HOUR.
    """
    wanted = {id(m): candidates(m.text) for m in messages}
    names = {name for found in wanted.values() for name in found if name != ROOM_WORD}
    User = get_user_model()
    users: dict[str, Any] = {}
    if names:
        field = User.USERNAME_FIELD
        users = {getattr(u, field): u for u in User._default_manager.filter(**{f"{field}__in": names}, is_active=True)}
    pairs = {(user.pk, m.room_id) for m in messages for name in wanted[id(m)]
             if (user := users.get(name)) is not None}
    allowed = _in_the_room(pairs, is_private) if pairs else set()
    owners: dict[int, int | None] = {}
    if any(ROOM_WORD in found for found in wanted.values()):
        owners = dict(Room.objects.filter(pk__in={m.room_id for m in messages}).values_list("pk", "owner_id"))
    cap = int(parley_settings.MAX_MENTIONS_PER_MESSAGE)
    for m in messages:
        found = wanted[id(m)]
        listed: list[dict[str, Any]] = []
        for name in found:
            user = users.get(name)
            if user is not None and (user.pk, m.room_id) in allowed and len(listed) < cap:
                listed.append({"id": user.pk, "username": user.get_username()})
        m.mentions = listed or None
        m.mention_room = (ROOM_WORD in found and (sees_all(m.author) or owners.get(m.room_id) == m.author_id)
                          and limits.ROOM_MENTION_BUCKETS.take(m.author_id) == 0.0)
