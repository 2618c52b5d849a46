"""Writes. Every function is `<entity>_<action>(*, keyword args)`; consumers and views stay thin."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DatabaseError, DataError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from parley import events, mentions, protocol, rooms, uploads
from parley.conf import parley_settings
from parley.models import ApiToken, Membership, Message, Room, RoomState
from parley.payloads import read_frame, reply_quote, room_state_payload
from parley.revocation import CredentialsRevoked
from parley.selectors import (
    RoomStateRow,
    credentials_lost,
    message_get_by_client_id,
    message_send_checks,
    room_state_get,
    room_user_can_access,
    token_hash,
)
from parley.storage import db

TOKEN_LAST_USED_RESOLUTION_SECS = 60  # don't write last_used_at on every request
DM_SLUG_PREFIX = rooms.DM_SLUG_PREFIX


class RoomSlugTaken(ValidationError):
    """The slug is another room's, or reserved (parley_settings.RESERVED_SLUGS). Says nothing of
    which: the caller decides what its user may learn (parley/views.py rooms)."""

    def __init__(self, slug: str) -> None:
        super().__init__({"slug": [f"the slug {slug!r} is not available"]}, code="unavailable")
        self.slug = slug


class RoomsOwnedLimit(Exception):
    """The owner already owns PARLEY_MAX_ROOMS_OWNED_PER_USER rooms."""


# Slugs the HTTP API's own paths use where a room's slug would be (GET /api/rooms/state, ahead of
# /api/rooms/<slug>): a room with one could not be reached there.
ROUTE_SLUGS = frozenset({"state"})


def room_create(*, slug: str, title: str, owner: Any = None, is_private: bool = False) -> Room:
    """A new room, and its owner's membership. With an owner, at most MAX_ROOMS_OWNED_PER_USER
    rooms each (RoomsOwnedLimit): the count and the insert run under a lock on the owner's row,
    so concurrent requests cannot both take the last place."""
    room = Room(slug=slug, title=title, owner=owner, is_private=is_private)
    room.full_clean(validate_unique=False)
    # dm-…: the direct conversations' namespace (parley.rooms.dm_open); nobody names one.
    if slug in parley_settings.RESERVED_SLUGS or slug in ROUTE_SLUGS or slug.startswith(DM_SLUG_PREFIX):
        raise RoomSlugTaken(slug)
    try:
        with transaction.atomic():
            if owner is not None:
                list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
                if Room.objects.filter(owner=owner).count() >= parley_settings.MAX_ROOMS_OWNED_PER_USER:
                    raise RoomsOwnedLimit()
            room.save()
            if owner is not None:
                Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
                # In its creator's room list at once, on every socket of theirs (§11, §12).
                rooms.room_state_listed(room=room, user=owner)
                rooms.notify_added(room=room, users=[owner])
    except IntegrityError as exc:
        if Room.objects.filter(slug=slug).exists():
            raise RoomSlugTaken(slug) from exc
        raise
    return room


def room_ensure(*, slug: str, title: str) -> Room:
    """Create a public room if it is missing (used for the lobby); never changes an existing one."""
    room, _ = Room.objects.get_or_create(slug=slug, defaults={"title": title})
    return room


def membership_add(*, room: Room, user: Any) -> Membership:
    """Make the user a member (idempotent). A new member of a private room gets their RoomState
    (listed, nothing read) and `room_added` on their sockets (parley.rooms)."""
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(room=room, user=user)
        if created and room.is_private:
            rooms.member_added(room=room, user=user)
    return membership


def membership_remove(*, room: Room, user: Any) -> bool:
    """Take a member out of a room (never its owner). Their open sockets leave the room at once.

    Every command also re-checks access, so this is belt and braces: without the broadcast, a
    removed member would keep *receiving* the room's messages until their next command.
    """
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(room=room, user=user).exclude(role=Membership.Role.OWNER).delete()
        if deleted and room.is_private:
            events.send_event_on_commit(events.MemberRemoved(room_id=room.pk, user_id=user.pk))
            rooms.member_removed(room=room, user=user)  # room_removed, after the `left` above
    return bool(deleted)


def message_create(*, room_id: int, author: Any, text: str, client_id: str | None,
                   reply_to: int | None = None, attachments: tuple[int, ...] = ()) -> tuple[Message, bool]:
    """Store one message and give it the room's next sequence number.

    Returns (message, duplicate). A second call with the same (room, author, client_id) returns the
    first message and duplicate=True instead of storing another, also when both calls race.
    The text must already be validated and trimmed (parley.protocol does it for sockets).
    `reply_to` is the seq of a message of the room (MessageRefused if it is none, or deleted);
    the text's mentions are resolved (parley.mentions). `attachments` are upload ids of the
    author's in this room (parley.uploads.uploads_claim; MessageRefused if one is not).
    """
    if client_id:
        existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
        if existing is not None:
            return existing, True
    draft = Message(room_id=room_id, author=author, text=text, client_id=client_id)
    try:
        with transaction.atomic():
            # The seq first: it takes the room's lock, so the reply's target is read as no
            # delete or edit can change it before this commits (they take the lock first too).
            seq = room_reserve_seqs(room_id=room_id, count=1)
            _prepare_new([draft], [reply_to])
            if attachments:
                _attachments_claim([draft], [attachments])
            if isinstance(refused := getattr(draft, "refused", None), MessageRefused):
                raise refused
            message = Message.objects.create(
                room_id=room_id, seq=seq, author=author, text=text, client_id=client_id,
                created_at=timezone.now(), target_seq=draft.target_seq, mentions=draft.mentions,
                mention_room=draft.mention_room, attachments=draft.attachments,
            )
            if draft.attachments:
                uploads.uploads_attach(links=[(message.pk, draft.attachments)])
            if draft.target_seq is not None:
                message.reply_quote = draft.reply_quote
    except IntegrityError:
        # A concurrent retry of the same client_id won the race; its row is committed now.
        if client_id:
            existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
            if existing is not None:
                return existing, True
        raise
    return message, False


def _prepare_new(messages: list[Message], replies: list[int | None]) -> None:
    """Before new messages are stored: check each reply target (a message of the same room, not
    deleted; else `refused` is set on the message, a MessageRefused) and attach its quote, and
    resolve the mentions of those whose text has an `@`. Queries only for what needs one."""
    wanted = [(m, r) for m, r in zip(messages, replies, strict=True) if r is not None]
    if wanted:
        where = Q()
        for m, seq in wanted:
            where |= Q(room_id=m.room_id, seq=seq)
        targets = {(t.room_id, t.seq): t for t in
                   Message.objects.filter(where, kind=Message.Kind.MESSAGE).select_related("author")}
        for m, seq in wanted:
            target = targets.get((m.room_id, seq))
            if target is None:
                m.refused = MessageRefused(protocol.MESSAGE_NOT_FOUND, f"no message {seq} in this room",
                                           field="reply_to")
            elif target.deleted_at is not None:
                m.refused = MessageRefused(protocol.MESSAGE_DELETED, f"message {seq} was deleted",
                                           field="reply_to")
            else:
                m.target_seq = seq
                m.reply_quote = reply_quote(target)
    named = [m for m in messages if "@" in m.text and getattr(m, "refused", None) is None]
    if named:
        privacy = dict(Room.objects.filter(pk__in={m.room_id for m in named}).values_list("pk", "is_private"))
        mentions.resolve(named, is_private=privacy)


def _attachments_claim(messages: list[Message], wanted: list[tuple[int, ...]]) -> None:
    """Before new messages are stored, in their transaction: lock and check the uploads each
    names (parley.uploads.uploads_claim) and set its `attachments` records, or `refused`."""
    claims = uploads.uploads_claim(wanted=[(m.author, m.room_id, ids) for m, ids in zip(messages, wanted, strict=True)])
    for message, claim in zip(messages, claims, strict=True):
        if isinstance(claim, tuple):
            if getattr(message, "refused", None) is None:
                message.refused = MessageRefused(claim[0], claim[1], field="attachments")
        elif claim is not None:
            message.attachments = claim


class MessageRefused(ValueError):
    """A message that cannot be posted; nothing was stored. `code` is the protocol's error code
    for the same refusal of a WebSocket `send` (docs/protocol.md §5): `room_not_found` for a
    room that does not exist or that the author may not see (a private room they are not a
    member of), `forbidden` for an author who may not post at all (inactive), `text_empty`,
    `text_too_long`, `bad_field` for the text or client_id."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class RoomNotFound(MessageRefused):
    def __init__(self, slug: str) -> None:
        super().__init__(protocol.ROOM_NOT_FOUND, f"no room {slug!r} that the author may see")


class RoomArchived(MessageRefused):
    """The room is archived: read-only (docs/protocol.md §12)."""

    def __init__(self) -> None:
        super().__init__(protocol.ROOM_ARCHIVED, "the room is archived: it is read-only")


class PostForbidden(MessageRefused):
    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)


def message_post(*, room: Room | str, text: Any, author: Any, client_id: Any = None,
                 reply_to: Any = None, attachments: Any = None, source: str) -> tuple[Message, bool]:
    """Post a message as `author` from outside a socket (parley.post_message, the HTTP API):
    the WebSocket `send`'s validation (parley.protocol) and access rule, stored with the room's
    next seq; returns (message, duplicate) as message_create. A new message is announced to
    parley.events (MessagePosted: live delivery, the `message_posted` signal) when the caller's
    transaction commits; a replay of a client_id announces nothing. `attachments`: upload ids
    (docs/protocol.md §14), as a version 2 send's. Raises MessageRefused.
    """
    slug = room.slug if isinstance(room, Room) else room
    if not isinstance(slug, str):
        raise MessageRefused(protocol.BAD_FIELD, "room must be a slug or a Room", field="room")
    try:
        command = protocol.parse_command({"type": "send", "room": slug, "text": text, "client_id": client_id,
                                          "reply_to": reply_to, "attachments": attachments})
    except protocol.ProtocolError as exc:
        if exc.code == protocol.ROOM_NOT_FOUND:
            raise RoomNotFound(slug) from None
        raise MessageRefused(exc.code, exc.message, field=exc.field) from None
    assert isinstance(command, protocol.Send)
    if author is None or not getattr(author, "is_active", False) or author.pk is None:
        raise PostForbidden("the author must be an active, saved user")
    target = room if isinstance(room, Room) else Room.objects.filter(slug=slug).first()
    if target is None:
        raise RoomNotFound(slug)
    if not room_user_can_access(user=author, room_id=target.pk):
        raise RoomNotFound(slug)
    if target.archived_at is not None and not (command.client_id and message_get_by_client_id(
            room_id=target.pk, author_id=author.pk, client_id=command.client_id)):
        raise RoomArchived()
    try:
        message, duplicate = message_create(room_id=target.pk, author=author, text=command.text,
                                            client_id=command.client_id, reply_to=command.reply_to,
                                            attachments=command.attachments)
    except Room.DoesNotExist:  # deleted since the lookup
        raise RoomNotFound(slug) from None
    if not duplicate:
        events.send_event_on_commit(events.MessagePosted(message=message, room_id=target.pk,
                                                         room_slug=target.slug, source=source))
    return message, duplicate


def message_create_batch(*, items: list[tuple[Any, int, str, str | None]],
                         tokens: list[int | None] | None = None,
                         replies: list[int | None] | None = None,
                         attachments: list[tuple[int, ...]] | None = None) -> list[Any]:
    """Store several (author, room_id, text, client_id) sends together (parley.ingest).

    `replies` holds, item by item, the seq the send replies to (None: not a reply); a send whose
    target is not a message of its room, or is deleted, gets a MessageRefused and is not stored.
    `attachments` holds, item by item, the upload ids the send carries (docs/protocol.md §14);
    one whose uploads are not the author's own unattached ones in the room gets a MessageRefused.
    None (the plain sends' batch) costs nothing.

    `tokens` holds, item by item, the id of the API token the send's socket was opened with
    (None: a session). Each item gets what message_create returns, or None if its author may no
    longer use the room, or the exception it raised: CredentialsRevoked (not stored) if its
    author is inactive or deleted or its token revoked since the socket opened. If the batch's
    write cannot commit, the error propagates and nothing is stored.

    The batch is written with a fixed number of queries (access check, idempotency lookup, seq
    reservation, INSERT), not a few per message: on the one database thread every consumer
    shares, per-message queries and savepoints capped ingest at a few hundred messages a second
    (docs/benchmarks.md). On PostgreSQL the seq reservation and the INSERT are one statement,
    which commits by itself (parley.storage.postgres). If the batch hits a constraint
    (a retry of one of its client_ids committed by another process since the lookup) nothing
    of it is stored, and it is stored item by item instead, where each item's savepoint sorts
    the duplicate from the others.
    """
    token_ids: list[int | None] = tokens if tokens is not None else [None] * len(items)
    reply_seqs: list[int | None] = replies if replies is not None else [None] * len(items)
    files: list[tuple[int, ...]] | None = attachments if attachments is not None and any(attachments) else None
    # A batch with replies is one transaction everywhere (not PostgreSQL's autocommit
    # statement), whose rooms are locked before the reply targets are read: a delete or an
    # edit of a target (parley.conversation, which locks the room first too) then lands either
    # wholly before the check or wholly after this batch's commit.
    # A batch with files is one transaction too: the uploads' row locks (uploads_claim) and the
    # link to the stored messages commit with the messages.
    replying = replies is not None and any(r is not None for r in replies)
    try:
        with transaction.atomic() if replying or files else db().write_transaction():
            if replying:
                _rooms_lock({room_id for _, room_id, _, _ in items})
            # Files only when there are some: a plain batch makes the calls it always made.
            return _messages_create_together(items, token_ids, reply_seqs, *([files] if files else []))
    except (IntegrityError, DataError):
        pass
    return _messages_create_each(items, token_ids, reply_seqs, *([files] if files else []))


def _rooms_lock(room_ids: set[int]) -> None:
    """Take the rooms' row locks until commit, in id order (as the seq reservation does: no
    deadlock between batches). SQLite's IMMEDIATE transaction holds the database's lock already."""
    list(Room.objects.select_for_update().filter(pk__in=room_ids).order_by("pk").values_list("pk", flat=True))


def _revoked(author: Any, token_id: int | None, lost: set[tuple[str, int]]) -> CredentialsRevoked | None:
    """The refusal of a send whose author or token is among the lost credentials, else None."""
    mine = {c for c in (("user", author.pk), ("token", token_id)) if c in lost}
    return CredentialsRevoked(mine) if mine else None


def _messages_create_together(items: list[tuple[Any, int, str, str | None]], tokens: list[int | None],
                              replies: list[int | None], files: list[tuple[int, ...]] | None = None) -> list[Any]:
    archived: set[int] = set()
    allowed, existing, lost = message_send_checks(
        pairs=[(author, room_id) for author, room_id, _, _ in items],
        keys=[(room_id, author.pk, client_id) for author, room_id, _, client_id in items if client_id],
        tokens=tokens, archived=archived,
    )
    results: list[Any] = [None] * len(items)
    new: list[tuple[int, Message]] = []  # (index in items, unsaved message)
    first_in_batch: dict[tuple[int, int, str], Message] = {}
    later_copies: list[tuple[int, tuple[int, int, str]]] = []
    now = timezone.now()
    for i, (author, room_id, text, client_id) in enumerate(items):
        if lost and (refused := _revoked(author, tokens[i], lost)) is not None:
            results[i] = refused  # not even a duplicate's ack: the socket closes (4401)
            continue
        if (author.pk, room_id) not in allowed:
            continue
        key = (room_id, author.pk, client_id) if client_id else None
        if room_id in archived and not (key is not None and key in existing):
            results[i] = RoomArchived()  # a retry of a send stored before the archive still gets its ack
            continue
        if key is not None and key in existing:
            results[i] = (existing[key], True)
        elif key is not None and key in first_in_batch:
            later_copies.append((i, key))  # the same send twice in one batch: one message
        else:
            message = Message(room_id=room_id, author=author, text=text, client_id=client_id, created_at=now)
            new.append((i, message))
            if key is not None:
                first_in_batch[key] = message
    if new and (any(replies[i] is not None for i, _ in new) or any("@" in m.text for _, m in new)):
        _prepare_new([m for _, m in new], [replies[i] for i, _ in new])
        for i, message in new:
            if (refused := getattr(message, "refused", None)) is not None:
                results[i] = refused
        new = [(i, m) for i, m in new if getattr(m, "refused", None) is None]
    if files is not None and (carrying := [(i, m) for i, m in new if files[i]]):
        _attachments_claim([m for _, m in carrying], [files[i] for i, _ in carrying])
        for i, message in carrying:
            if (refused := getattr(message, "refused", None)) is not None:
                results[i] = refused
        new = [(i, m) for i, m in new if getattr(m, "refused", None) is None]
    _messages_store([message for _, message in new])
    if files is not None:
        _attachments_store([m for _, m in new if m.pk is not None and m.attachments])
    for i, message in new:
        if message.pk is not None:  # else its room was deleted since the access check
            results[i] = (message, False)
    for i, key in later_copies:
        first = first_in_batch[key]
        if (refused := getattr(first, "refused", None)) is not None:
            results[i] = refused
        elif first.pk is not None:
            results[i] = (first, True)
    return results


def _attachments_store(messages: list[Message]) -> None:
    """After an ingest batch's INSERT (which names only the plain columns): the files of the
    messages that carry some, on their rows and their uploads', in the batch's transaction."""
    for message in messages:
        Message.objects.filter(pk=message.pk).update(attachments=message.attachments)
    uploads.uploads_attach(links=[(m.pk, m.attachments) for m in messages])


def _messages_store(messages: list[Message]) -> None:
    """Number the messages (the next seqs of each room, in list order) and INSERT them. Each one
    stored gets its seq and id; one whose room was deleted since the access check keeps no id."""
    if messages:
        db().messages_store(messages)


def _messages_create_each(items: list[tuple[Any, int, str, str | None]], tokens: list[int | None],
                          replies: list[int | None], files: list[tuple[int, ...]] | None = None) -> list[Any]:
    """The careful path: one savepoint per item, so one item's error leaves the others stored."""
    results: list[Any] = []
    with transaction.atomic():
        lost = credentials_lost(credentials=[("user", author.pk) for author, *_ in items]
                                + [("token", t) for t in tokens if t is not None])
        for i, ((author, room_id, text, client_id), token_id, reply_to) in enumerate(
                zip(items, tokens, replies, strict=True)):
            if lost and (refused := _revoked(author, token_id, lost)) is not None:
                results.append(refused)
                continue
            try:
                with transaction.atomic():
                    if not room_user_can_access(user=author, room_id=room_id):
                        results.append(None)
                        continue
                    if Room.objects.filter(pk=room_id, archived_at__isnull=False).exists() and not (
                            client_id and message_get_by_client_id(room_id=room_id, author_id=author.pk,
                                                                   client_id=client_id)):
                        results.append(RoomArchived())
                        continue
                    extra = {"attachments": files[i]} if files and files[i] else {}
                    results.append(message_create(room_id=room_id, author=author, text=text, client_id=client_id,
                                                  reply_to=reply_to, **extra))
            except MessageRefused as refused:
                results.append(refused)
            except DatabaseError as exc:
                results.append(exc)
    return results


def room_reserve_seqs(*, room_id: int, count: int) -> int:
    """Advance the room's last_seq by `count` and return the new value."""
    return rooms_reserve_seqs(counts={room_id: count})[room_id]


def rooms_reserve_seqs(*, counts: dict[int, int]) -> dict[int, int]:
    """Advance each room's last_seq by its count; the new values by room id.

    One UPDATE for every room of a batch (it was one per room, and ingest paid for each round
    trip). It takes the rooms' row locks (PostgreSQL) or the database write lock (SQLite) until
    commit, so concurrent writers get disjoint, consecutive ranges. Raises Room.DoesNotExist
    if a room is missing.
    """
    lasts = _seqs_reserve(counts)
    missing = set(counts) - set(lasts)
    if missing:
        raise Room.DoesNotExist(f"no room {sorted(missing)}")
    return lasts


def _seqs_reserve(counts: dict[int, int]) -> dict[int, int]:
    """rooms_reserve_seqs for the rooms that exist (a missing one is absent from the answer)."""
    return db().seqs_reserve(counts)


def user_create(*, username: str, password: str | None = None) -> Any:
    """A user of the project's user model whose USERNAME_FIELD (username, or a host's email) is
    `username`; without a password it signs in by API token only."""
    User = get_user_model()
    user = User(**{User.USERNAME_FIELD: username})
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    return user


def token_create(*, user: Any, name: str = "") -> tuple[ApiToken, str]:
    """Make a token; returns (row, secret). The secret is shown once and stored only hashed."""
    raw = "prl_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, key_hash=token_hash(raw), prefix=raw[:10])
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    """Revoke a token: it stops authenticating, and sockets opened with it close with 4401."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        events.send_event_on_commit(events.CredentialRevoked(credential=("token", token.pk)))


def token_touch(*, token: ApiToken) -> None:
    tokens_touch(tokens=[token])


def tokens_touch(*, tokens: list[ApiToken]) -> None:
    """Record that these tokens were used, in one UPDATE, for those whose last_used_at is older
    than TOKEN_LAST_USED_RESOLUTION_SECS (a reconnect storm writes nothing for tokens in use)."""
    now = timezone.now()
    stale = now - timedelta(seconds=TOKEN_LAST_USED_RESOLUTION_SECS)
    pks = {t.pk for t in tokens if t.last_used_at is None or t.last_used_at < stale}
    if pks:
        ApiToken.objects.filter(pk__in=pks).update(last_used_at=now)


# --- Attention (docs/protocol.md §11) ---------------------------------------------------------


def room_states_open(*, opened: list[tuple[int, int, int]]) -> None:
    """(user id, room id, the room's last_seq) for public rooms just joined: each user's
    RoomState for the room, listed and read up to that seq; a user who has one already keeps
    their marker and settings, and the room is listed again (they left it, and came back). One
    INSERT … ON CONFLICT DO UPDATE for all of them (parley.commands.join sends a batch of joins
    here off the join's own path)."""
    rows = {(u, r): RoomState(user_id=u, room_id=r, last_read_seq=seq, listed=True) for u, r, seq in opened}
    if not rows:
        return
    user_ids, room_ids = {u for u, _ in rows}, {r for _, r in rows}
    listed = set(RoomState.objects.filter(user_id__in=user_ids, room_id__in=room_ids, listed=True)
                 .values_list("user_id", "room_id"))
    with transaction.atomic():
        RoomState.objects.bulk_create(list(rows.values()), update_conflicts=True, unique_fields=["user", "room"],
                                      update_fields=["listed"])
        # The room entered the user's list (a first visit, or back after leaving it): every one
        # of their sockets hears room_added, as for a room they were added to (§11, §12), so
        # their counts follow it from now on.
        new = [key for key in rows if key not in listed]
        if new:
            users = get_user_model()._default_manager.in_bulk({u for u, _ in new})
            room_objs = Room.objects.in_bulk({r for _, r in new})
            for u, r in new:
                if u in users and r in room_objs:
                    rooms.notify_added(room=room_objs[r], users=[users[u]])


def room_state_mark_read(*, user: Any, room: Room, seq: int, skip_socket: str | None = None) -> RoomStateRow:
    """Move the user's read marker in the room forward to `seq` (never back; a seq above the
    room's last_seq is clamped to it). The caller checked access. The user's other sockets get a
    `read` frame when it moved (but `skip_socket`, whose command this answers)."""
    seq = min(seq, room.last_seq)
    with transaction.atomic():
        state, created = RoomState.objects.get_or_create(user_id=user.pk, room_id=room.pk,
                                                         defaults={"last_read_seq": seq})
        moved = created and seq > 0
        if not created and state.last_read_seq < seq:
            # Conditional: of two marks racing, the higher wins, whatever their order.
            moved = RoomState.objects.filter(pk=state.pk, last_read_seq__lt=seq).update(last_read_seq=seq) > 0
        row = room_state_get(user=user, room=room)
        if moved:
            events.send_event_on_commit(events.UserNotified(user_ids=(user.pk,), frame=read_frame(*row),
                                                            skip_socket=skip_socket))
    return row


def room_state_update(*, user: Any, room: Room, notify: str | None = None, muted: bool | None = None,
                      skip_socket: str | None = None) -> RoomStateRow:
    """Change the user's notify ("" = the default, "all", "mentions", "nothing") and/or muted
    settings of the room; the user's sockets get a `room_state` frame. The caller checked access."""
    changes: dict[str, Any] = {}
    if notify is not None:
        changes["notify"] = notify
    if muted is not None:
        changes["muted"] = muted
    with transaction.atomic():
        state, created = RoomState.objects.get_or_create(user_id=user.pk, room_id=room.pk,
                                                         defaults={"last_read_seq": 0, **changes})
        if not created and changes:
            RoomState.objects.filter(pk=state.pk).update(**changes, updated_at=timezone.now())
        row = room_state_get(user=user, room=room)
        events.send_event_on_commit(events.UserNotified(
            user_ids=(user.pk,), frame={"type": "room_state", "state": room_state_payload(*row)},
            skip_socket=skip_socket))
    return row
