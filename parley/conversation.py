"""Writes to a room's conversation after a message is posted: edit, delete, reactions.

Each change is an entry of the room's log (docs/protocol.md §10) with the room's next seq, in the
same transaction as the change to the message itself, so the log and the messages' state never
disagree: a client that applies the entries in seq order ends with the database's state. Every
function checks the actor's access to the room and their right to the change, and raises
parley.services.MessageRefused (with the protocol's code) for a refusal; a request that changes
nothing stores no entry and says so (`Change.entry` is None), which makes every retry safe.

The new entry is announced on commit (events.EntryAdded): parley.fanout delivers it, except
from a socket, whose command broadcasts it after its reply (as `send` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from parley import events, mentions, protocol, uploads
from parley.conf import parley_settings
from parley.models import Message, Reaction, Room
from parley.revocation import CredentialsRevoked
from parley.selectors import room_user_can_moderate, room_user_can_use, sees_all, with_quote
from parley.services import MessageRefused, RoomArchived, room_reserve_seqs
from parley.storage import db


@dataclass(frozen=True, slots=True)
class Change:
    """What a change did: its log entry (None: nothing changed, nothing stored) and the message
    as it is now (author loaded)."""

    entry: Message | None
    message: Message

    def count(self, emoji: str) -> int:
        """How many users have `emoji` on the message now."""
        return next((n for e, n in self.message.reactions or [] if e == emoji), 0)


class _Unchanged(Exception):
    """Raised inside the transaction to roll back the seq it reserved: nothing to store."""

    def __init__(self, message: Message) -> None:
        self.message = message


def message_edit(*, room: Room, actor: Any, seq: int, text: Any, token_id: int | None = None,
                 source: str = "python", moderator: bool = False) -> Change:
    """Replace the text of the actor's own message `seq`. The text is validated and trimmed as a
    socket's `edit` is (MessageRefused: `text_empty`, `text_too_long`, `bad_field`). Its
    mentions are parsed again; the `edit` entry keeps this version. `moderator`: an admin
    editing someone else's message (the Django admin does)."""
    text = _checked(protocol.message_text, text)

    def change(target: Message, entry: Message) -> None:
        if target.author_id != actor.pk and not (moderator and sees_all(actor)):
            raise MessageRefused(protocol.FORBIDDEN, "only its author may edit a message")
        if target.text == text:
            raise _Unchanged(target)
        entry.text = text
        mentions.resolve([entry], is_private={room.pk: room.is_private})
        target.text, target.mentions, target.mention_room = text, entry.mentions, entry.mention_room
        target.edited_at = entry.created_at
        target.save(update_fields=["text", "mentions", "mention_room", "edited_at"])

    return _change(room, actor, seq, Message.Kind.EDIT, change, token_id=token_id, source=source)


def message_delete(*, room: Room, actor: Any, seq: int, token_id: int | None = None,
                   source: str = "python") -> Change:
    """Delete message `seq`: by its author, the room's owner or an admin. Its text and the text of
    every edit of it are erased from the database (not hidden), its reactions and files removed; the
    message stays as a tombstone, so the log keeps its seq."""
    def change(target: Message, entry: Message) -> None:
        if target.author_id != actor.pk and not room_user_can_moderate(room=room, user=actor):
            raise MessageRefused(protocol.FORBIDDEN,
                                 "only its author, the room's owner or moderators, or an admin may delete a message")
        if target.deleted_at is not None:
            raise _Unchanged(target)
        target.text, target.mentions, target.mention_room, target.reactions = "", None, False, None
        target.deleted_at, had_files, target.attachments = entry.created_at, bool(target.attachments), None
        target.save(update_fields=["text", "mentions", "mention_room", "reactions", "deleted_at", "attachments"])
        if had_files:  # its uploads' rows now, their files once this commits (parley.receivers)
            uploads.message_files_delete(message=target)
        Message.objects.filter(room_id=room.pk, kind=Message.Kind.EDIT, target_seq=seq).update(
            text="", mentions=None, mention_room=False)
        Reaction.objects.filter(message=target).delete()

    return _change(room, actor, seq, Message.Kind.DELETE, change, token_id=token_id, source=source,
                   tombstones_too=True)


def reaction_set(*, room: Room, actor: Any, seq: int, emoji: Any, add: bool, token_id: int | None = None,
                 source: str = "python") -> Change:
    """Add (or, with add=False, remove) the actor's `emoji` on message `seq` (one emoji,
    validated by parley.protocol). Adding one already there, or removing one that is not,
    changes nothing. The entry carries the emoji's count after it. `emoji` must be one emoji
    (MessageRefused `bad_field` otherwise), as a socket's `react` checks."""
    emoji = _checked(protocol.reaction_emoji, emoji)

    def change(target: Message, entry: Message) -> None:
        summary = [list(pair) for pair in target.reactions or []]
        counts = {e: n for e, n in summary}
        mine = Reaction.objects.filter(message=target, user=actor)
        if add:
            had = set(mine.values_list("emoji", flat=True))  # one query for "already?" and "how many?"
            if emoji in had:
                raise _Unchanged(target)
            if emoji not in counts and len(counts) >= parley_settings.MAX_REACTIONS_PER_MESSAGE:
                raise MessageRefused(protocol.TOO_MANY_REACTIONS,
                                     f"a message holds at most {parley_settings.MAX_REACTIONS_PER_MESSAGE} different emoji")
            if len(had) >= parley_settings.MAX_REACTIONS_PER_USER:
                raise MessageRefused(protocol.TOO_MANY_REACTIONS,
                                     f"you may put at most {parley_settings.MAX_REACTIONS_PER_USER} emoji on a message")
            Reaction.objects.create(message=target, user=actor, emoji=emoji)
            if emoji in counts:
                summary = [[e, n + 1 if e == emoji else n] for e, n in summary]
            else:
                summary.append([emoji, 1])
        else:
            if not mine.filter(emoji=emoji).delete()[0]:
                raise _Unchanged(target)
            summary = [[e, n - 1 if e == emoji else n] for e, n in summary]
        entry.emoji = emoji
        entry.count = next((n for e, n in summary if e == emoji), 0)
        target.reactions = [pair for pair in summary if pair[1] > 0] or None
        target.save(update_fields=["reactions"])

    kind = Message.Kind.REACT if add else Message.Kind.UNREACT
    return _change(room, actor, seq, kind, change, token_id=token_id, source=source)


def valid_text(text: Any) -> str:
    """A message's new text as a socket's `edit` checks it: trimmed, 1 to PARLEY_MAX_TEXT_CHARS
    characters, no NUL; else MessageRefused (`text_empty`, `text_too_long`, `bad_field`)."""
    return _checked(protocol.message_text, text)


def _checked(check: Callable[[Any], str], value: Any) -> str:
    """`check(value)` (parley.protocol's field check), its ProtocolError as MessageRefused with
    the same code: server code, the HTTP API and the admin get the socket's validation."""
    try:
        return check(value)
    except protocol.ProtocolError as exc:
        raise MessageRefused(exc.code, exc.message, field=exc.field) from None


def _change(room: Room, actor: Any, seq: int, kind: str, change: Any, *, token_id: int | None, source: str,
            tombstones_too: bool = False) -> Change:
    """The frame of every change: access, the seq, the target, the entry, the announcement."""
    allowed, lost = room_user_can_use(user=actor, room_id=room.pk, token_id=token_id)
    if lost:
        raise CredentialsRevoked(lost)
    if not allowed:
        raise MessageRefused(protocol.ROOM_NOT_FOUND, f"no room {room.slug!r} that you may see")
    # Archived: read-only, but a delete still erases a text (its author's or a moderator's
    # right to take something down outlives the room's use).
    if room.archived_at is not None and kind != Message.Kind.DELETE:
        raise RoomArchived()
    try:
        with transaction.atomic():
            # The room's lock first (the seq), then the message: changes to one room queue here,
            # so each entry's view of the message is the one its seq says.
            entry_seq = room_reserve_seqs(room_id=room.pk, count=1)
            # Plain SQL (parley.storage.reads), not the ORM's .first(): compiling that query was
            # the largest part of a change's time on the database thread (cProfile).
            found = db().messages(room_id=room.pk, after_seq=seq - 1, before=seq + 1, limit=1, newest_first=False)
            target = found[0] if found and found[0].kind == Message.Kind.MESSAGE else None
            if target is None:
                raise MessageRefused(protocol.MESSAGE_NOT_FOUND, f"no message {seq} in this room")
            if target.deleted_at is not None and not tombstones_too:
                raise MessageRefused(protocol.MESSAGE_DELETED, f"message {seq} was deleted")
            entry = Message(room_id=room.pk, seq=entry_seq, kind=kind, author=actor, text="", target_seq=seq,
                            created_at=timezone.now())
            change(target, entry)
            entry.save(force_insert=True)
            events.send_event_on_commit(events.EntryAdded(entry=entry, message=target, room_id=room.pk,
                                                          room_slug=room.slug, source=source))
    except _Unchanged as unchanged:
        return Change(entry=None, message=with_quote(unchanged.message))
    except Room.DoesNotExist:
        raise MessageRefused(protocol.ROOM_NOT_FOUND, f"no room {room.slug!r} that you may see") from None
    return Change(entry=entry, message=with_quote(target))
