"""Writes. Every function is `<entity>_<action>(*, keyword args)`; consumers and views stay thin."""

from __future__ import annotations

import functools
import secrets
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.utils import timezone

from parley import events, limits, protocol
from parley.models import ApiToken, Membership, Message, Room
from parley.revocation import CredentialsRevoked
from parley.rowsql import fetch, qn, select_exprs
from parley.selectors import (
    credentials_lost,
    message_get_by_client_id,
    message_send_checks,
    room_user_can_access,
    token_hash,
)

TOKEN_LAST_USED_RESOLUTION_SECS = 60  # don't write last_used_at on every request


class RoomSlugTaken(ValidationError):
    """The slug is another room's, or reserved (settings.PARLEY_RESERVED_SLUGS). Says nothing of
    which: the caller decides what its user may learn (parley/views.py rooms)."""

    def __init__(self, slug: str) -> None:
        super().__init__({"slug": [f"the slug {slug!r} is not available"]}, code="unavailable")
        self.slug = slug


class RoomsOwnedLimit(Exception):
    """The owner already owns PARLEY_MAX_ROOMS_OWNED_PER_USER rooms."""


def room_create(*, slug: str, title: str, owner: Any = None, is_private: bool = False) -> Room:
    """A new room, and its owner's membership. With an owner, at most MAX_ROOMS_OWNED_PER_USER
    rooms each (RoomsOwnedLimit): the count and the insert run under a lock on the owner's row,
    so concurrent requests cannot both take the last place."""
    room = Room(slug=slug, title=title, owner=owner, is_private=is_private)
    room.full_clean(validate_unique=False)
    if slug in getattr(settings, "PARLEY_RESERVED_SLUGS", ()):
        raise RoomSlugTaken(slug)
    try:
        with transaction.atomic():
            if owner is not None:
                list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
                if Room.objects.filter(owner=owner).count() >= limits.MAX_ROOMS_OWNED_PER_USER.value:
                    raise RoomsOwnedLimit()
            room.save()
            if owner is not None:
                Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
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
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def membership_remove(*, room: Room, user: Any) -> bool:
    """Take a member out of a room (never its owner). Their open sockets leave the room at once.

    Every command also re-checks access, so this is belt and braces: without the broadcast, a
    removed member would keep *receiving* the room's messages until their next command.
    """
    deleted, _ = Membership.objects.filter(room=room, user=user).exclude(role=Membership.Role.OWNER).delete()
    if deleted and room.is_private:
        events.send_event_on_commit(events.MemberRemoved(room_id=room.pk, user_id=user.pk))
    return bool(deleted)


def message_create(*, room_id: int, author: Any, text: str, client_id: str | None) -> tuple[Message, bool]:
    """Store one message and give it the room's next sequence number.

    Returns (message, duplicate). A second call with the same (room, author, client_id) returns the
    first message and duplicate=True instead of storing another, also when both calls race.
    The text must already be validated and trimmed (parley.protocol does it for sockets).
    """
    if client_id:
        existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
        if existing is not None:
            return existing, True
    try:
        with transaction.atomic():
            seq = room_reserve_seqs(room_id=room_id, count=1)
            message = Message.objects.create(
                room_id=room_id, seq=seq, author=author, text=text, client_id=client_id,
                created_at=timezone.now(),
            )
    except IntegrityError:
        # A concurrent retry of the same client_id won the race; its row is committed now.
        if client_id:
            existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
            if existing is not None:
                return existing, True
        raise
    return message, False


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


class PostForbidden(MessageRefused):
    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)


def message_post(*, room: Room | str, text: Any, author: Any, client_id: Any = None,
                 source: str) -> tuple[Message, bool]:
    """Post a message as `author` from outside a socket (parley.post_message, the HTTP API):
    the WebSocket `send`'s validation (parley.protocol) and access rule, stored with the room's
    next seq; returns (message, duplicate) as message_create. A new message is announced to
    parley.events (MessagePosted: live delivery, the `message_posted` signal) when the caller's
    transaction commits; a replay of a client_id announces nothing. Raises MessageRefused.
    """
    slug = room.slug if isinstance(room, Room) else room
    if not isinstance(slug, str):
        raise MessageRefused(protocol.BAD_FIELD, "room must be a slug or a Room", field="room")
    try:
        command = protocol.parse_command({"type": "send", "room": slug, "text": text, "client_id": client_id})
    except protocol.ProtocolError as exc:
        if exc.code == protocol.ROOM_NOT_FOUND:
            raise RoomNotFound(slug) from None
        raise MessageRefused(exc.code, exc.message, field=exc.field) from None
    assert isinstance(command, protocol.Send)
    if author is None or not getattr(author, "is_active", False) or author.pk is None:
        raise PostForbidden("the author must be an active, saved user")
    if not isinstance(room, Room):
        room = Room.objects.filter(slug=slug).first()  # type: ignore[assignment]
        if room is None:
            raise RoomNotFound(slug)
    if not room_user_can_access(user=author, room_id=room.pk):
        raise RoomNotFound(slug)
    try:
        message, duplicate = message_create(room_id=room.pk, author=author, text=command.text,
                                            client_id=command.client_id)
    except Room.DoesNotExist:  # deleted since the lookup
        raise RoomNotFound(slug) from None
    if not duplicate:
        events.send_event_on_commit(events.MessagePosted(message=message, room_id=room.pk,
                                                         room_slug=room.slug, source=source))
    return message, duplicate


def message_create_batch(*, items: list[tuple[Any, int, str, str | None]],
                         tokens: list[int | None] | None = None) -> list[Any]:
    """Store several (author, room_id, text, client_id) sends together (parley.ingest).

    `tokens` holds, item by item, the id of the API token the send's socket was opened with
    (None: a session). Each item gets what message_create returns, or None if its author may no
    longer use the room, or the exception it raised: CredentialsRevoked (not stored) if its
    author is inactive or deleted or its token revoked since the socket opened. If the batch's
    write cannot commit, the error propagates and nothing is stored.

    The batch is written with a fixed number of queries (access check, idempotency lookup, seq
    reservation, INSERT): it used to be ~7 queries and a savepoint per message, and that — on
    the one database thread every consumer shares — capped ingest at a few hundred messages a
    second (docs/benchmarks.md). On PostgreSQL the two reads share one round trip and the seq
    reservation and the INSERT are one statement, which commits by itself: two round trips a
    batch where there were six (BEGIN and COMMIT among them). If the batch hits a constraint
    (a retry of one of its client_ids committed by another process since the lookup) nothing
    of it is stored, and it is stored item by item instead, where each item's savepoint sorts
    the duplicate from the others.
    """
    token_ids = tokens if tokens is not None else [None] * len(items)
    try:
        with _batch_transaction():
            return _messages_create_together(items, token_ids)
    except (IntegrityError, DataError):
        pass
    return _messages_create_each(items, token_ids)


def _revoked(author: Any, token_id: int | None, lost: set[tuple[str, int]]) -> CredentialsRevoked | None:
    """The refusal of a send whose author or token is among the lost credentials, else None."""
    mine = {c for c in (("user", author.pk), ("token", token_id)) if c in lost}
    return CredentialsRevoked(mine) if mine else None


def _batch_transaction() -> Any:
    """The transaction around a batch's queries: none on PostgreSQL in autocommit, where the
    batch's one write is a single statement (the reads before it are plain reads, which in
    READ COMMITTED see the same committed rows inside a transaction as outside one);
    a transaction (or a savepoint inside the caller's) everywhere else. On SQLite the write
    is several statements, and its IMMEDIATE transaction holds the write lock they rely on."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return nullcontext()
    return transaction.atomic()


def _messages_create_together(items: list[tuple[Any, int, str, str | None]], tokens: list[int | None]) -> list[Any]:
    allowed, existing, lost = message_send_checks(
        pairs=[(author, room_id) for author, room_id, _, _ in items],
        keys=[(room_id, author.pk, client_id) for author, room_id, _, client_id in items if client_id],
        tokens=tokens,
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
        if key is not None and key in existing:
            results[i] = (existing[key], True)
        elif key is not None and key in first_in_batch:
            later_copies.append((i, key))  # the same send twice in one batch: one message
        else:
            message = Message(room_id=room_id, author=author, text=text, client_id=client_id, created_at=now)
            new.append((i, message))
            if key is not None:
                first_in_batch[key] = message
    _messages_store([message for _, message in new])
    for i, message in new:
        if message.pk is not None:  # else its room was deleted since the access check
            results[i] = (message, False)
    for i, key in later_copies:
        if first_in_batch[key].pk is not None:
            results[i] = (first_in_batch[key], True)
    return results


def _messages_store(messages: list[Message]) -> None:
    """Number the messages (the next seqs of each room, in list order) and INSERT them. Each one
    stored gets its seq and id; one whose room was deleted since the access check keeps no id."""
    if not messages:
        return
    if connection.vendor == "postgresql":
        _messages_insert_numbered(messages)
        return
    per_room: dict[int, list[Message]] = {}
    for message in messages:
        per_room.setdefault(message.room_id, []).append(message)
    lasts = _seqs_reserve({room_id: len(ms) for room_id, ms in per_room.items()})
    for room_id, ms in per_room.items():
        if room_id in lasts:
            for seq, message in enumerate(ms, start=lasts[room_id] - len(ms) + 1):
                message.seq = seq
    _messages_insert([m for m in messages if m.room_id in lasts])


def _messages_insert_numbered(messages: list[Message]) -> None:
    """PostgreSQL: reserve the seqs and INSERT the messages in one statement (a data-modifying
    WITH), so the batch's write is one round trip and commits by itself (the reservation's
    row locks last for that statement only). The rows go as arrays, one per column: the
    statement's text is built once, whatever the batch's size. Each row carries how far below
    its room's new last_seq it is numbered (`back`). Sets seq and id on the messages stored.
    """
    counts: dict[int, int] = {}
    for m in messages:
        counts[m.room_id] = counts.get(m.room_id, 0) + 1
    left = dict(counts)
    backs: list[int] = []
    for m in messages:
        left[m.room_id] -= 1
        backs.append(left[m.room_id])
    with connection.cursor() as cursor:
        cursor.execute(_insert_numbered_sql(), [
            *_seqs_update_params(counts),
            [m.room_id for m in messages], backs, [m.author_id for m in messages], [m.text for m in messages],
            [m.client_id for m in messages], [m.created_at for m in messages],
        ])
        rows = cursor.fetchall()
    ids: dict[tuple[int, int], int] = {}
    lasts: dict[int, int] = {}  # each room's new last_seq: the seq of its row with back 0
    for pk, room_id, seq in rows:
        ids[(room_id, seq)] = pk
        lasts[room_id] = max(seq, lasts.get(room_id, seq))
    for m, back in zip(messages, backs, strict=True):
        if m.room_id in lasts:  # else its room was deleted since the access check
            m.seq = lasts[m.room_id] - back
            m.pk = ids[(m.room_id, m.seq)]
            m._state.adding = False
            m._state.db = connection.alias


@functools.cache
def _insert_numbered_sql() -> str:
    table = qn(Message._meta.db_table)
    seqs, v = qn("seqs"), qn("v")
    columns = ("room_id", "back", "author_id", "text", "client_id", "created_at")
    types = ("bigint", "bigint", "bigint", "text", "text", "timestamp with time zone")
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    stored = ("room_id", "seq", "author_id", "text", "client_id", "created_at")
    return (f"WITH {seqs} AS ({_seqs_update_sql()}) "
            f"INSERT INTO {table} ({', '.join(qn(c) for c in stored)}) "
            f"SELECT {v}.{qn('room_id')}, {seqs}.{qn('last_seq')} - {v}.{qn('back')}, {v}.{qn('author_id')}, "
            f"{v}.{qn('text')}, {v}.{qn('client_id')}, {v}.{qn('created_at')} "
            f"FROM unnest({arrays}) AS {v} ({', '.join(qn(c) for c in columns)}) "
            f"INNER JOIN {seqs} ON {seqs}.{qn('id')} = {v}.{qn('room_id')} "
            f"RETURNING {qn(Message._meta.pk.column)}, {qn('room_id')}, {qn('seq')}")


def _messages_insert(messages: list[Message]) -> None:
    """INSERT new messages (their seqs set) and set their ids: bulk_create's work as plain SQL.

    bulk_create's compiler (a prepare_value per field per object) was ~15% of the database
    thread in the SQLite ingest profile. SQLite would return the ids one row per step, and
    Python's sqlite3 lets go of the GIL for every step (parley.rowsql says what that costs beside
    a busy event loop), so the ids come back from one JSON row read by (room, seq) — the seqs
    are this transaction's own. PostgreSQL has _messages_insert_numbered; another database
    gets bulk_create.
    """
    if not messages:
        return
    if connection.vendor != "sqlite":
        Message.objects.bulk_create(messages)
        return
    meta = Message._meta
    fields = [meta.get_field(name) for name in ("room", "seq", "author", "text", "client_id", "created_at")]
    created = fields[-1]
    adapted: dict[Any, Any] = {}  # a batch shares one created_at: adapt it once
    head = (f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) VALUES ")
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    per_statement = max(1, (connection.features.max_query_params or 10_000) // len(fields))
    with connection.cursor() as cursor:
        for start in range(0, len(messages), per_statement):
            chunk = messages[start:start + per_statement]
            params: list[Any] = []
            for m in chunk:
                if m.created_at not in adapted:
                    adapted[m.created_at] = created.get_db_prep_save(m.created_at, connection)
                params += [m.room_id, m.seq, m.author_id, m.text, m.client_id, adapted[m.created_at]]
            cursor.execute(head + ", ".join([row] * len(chunk)), params)
    ranges: dict[int, tuple[int, int]] = {}
    for m in messages:
        low, high = ranges.get(m.room_id, (m.seq, m.seq))
        ranges[m.room_id] = (min(low, m.seq), max(high, m.seq))
    room, seq = qn(fields[0].column), qn(fields[1].column)
    where = " OR ".join([f"({room} = %s AND {seq} BETWEEN %s AND %s)"] * len(ranges))
    query = select_exprs([room, seq, qn(meta.pk.column)], f"FROM {qn(meta.db_table)} WHERE {where}")
    ids = {(room_id, seq): pk for room_id, seq, pk in
           fetch(query, [v for room_id, (low, high) in ranges.items() for v in (room_id, low, high)])}
    for m in messages:
        m.pk = ids[(m.room_id, m.seq)]
        m._state.adding = False
        m._state.db = connection.alias


def _messages_create_each(items: list[tuple[Any, int, str, str | None]], tokens: list[int | None]) -> list[Any]:
    """The careful path: one savepoint per item, so one item's error leaves the others stored."""
    results: list[Any] = []
    with transaction.atomic():
        lost = credentials_lost(credentials=[("user", author.pk) for author, *_ in items]
                                + [("token", t) for t in tokens if t is not None])
        for (author, room_id, text, client_id), token_id in zip(items, tokens, strict=True):
            if lost and (refused := _revoked(author, token_id, lost)) is not None:
                results.append(refused)
                continue
            try:
                with transaction.atomic():
                    if not room_user_can_access(user=author, room_id=room_id):
                        results.append(None)
                        continue
                    results.append(message_create(room_id=room_id, author=author, text=text, client_id=client_id))
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
    ids = sorted(counts)
    table = qn(Room._meta.db_table)
    if connection.vendor == "postgresql":
        sql, params = _seqs_update_sql(), _seqs_update_params(counts)
    else:
        cases = " ".join(["WHEN %s THEN %s"] * len(ids))
        sql = f"UPDATE {table} SET last_seq = last_seq + CASE id {cases} END WHERE id IN ({_marks(ids)})"
        params = [v for room_id in ids for v in (room_id, counts[room_id])] + ids
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall() if connection.vendor == "postgresql" else None
    if rows is None:
        # The new values as one JSON row instead of one row per room (one GIL hand-back per
        # step; parley.rowsql). The write lock the UPDATE took keeps them this transaction's.
        rows = fetch(select_exprs(["id", "last_seq"], f"FROM {table} WHERE id IN ({_marks(ids)})"), ids)
    return {int(room_id): int(last) for room_id, last in rows}


@functools.cache
def _seqs_update_sql() -> str:
    """PostgreSQL's seq reservation: UPDATE … RETURNING id, last_seq (the new value), with the
    rooms and their counts as arrays (_seqs_update_params).

    The rooms' row locks are taken in id order first, by the subquery's FOR UPDATE: two
    processes' batches over the same rooms then queue instead of deadlocking (an UPDATE alone
    locks rows in whatever order its plan reads them). The lock and the update are one
    statement (they were two round trips, and the PostgreSQL ingest profile is mostly round
    trips); _messages_insert_numbered puts the INSERT in it too.
    """
    table, counts = qn(Room._meta.db_table), qn("counts")
    return (f"UPDATE {table} SET last_seq = {table}.last_seq + {counts}.{qn('n')} "
            f"FROM unnest(%s::bigint[], %s::bigint[]) AS {counts} ({qn('id')}, {qn('n')}), "
            f"(SELECT id FROM {table} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE) AS locked "
            f"WHERE {table}.id = {counts}.{qn('id')} AND {table}.id = locked.id "
            f"RETURNING {table}.id, {table}.last_seq")


def _seqs_update_params(counts: dict[int, int]) -> list[Any]:
    ids = sorted(counts)
    return [ids, [counts[room_id] for room_id in ids], ids]


def _marks(values: Any) -> str:
    return ", ".join(["%s"] * len(values))


def user_create(*, username: str, password: str | None = None) -> Any:
    User = get_user_model()
    user = User(username=username)
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
