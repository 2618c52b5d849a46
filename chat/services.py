"""Writes. Every function is `<entity>_<action>(*, keyword args)`; consumers and views stay thin."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.utils import timezone

from chat import fanout
from chat.models import ApiToken, Membership, Message, Room
from chat.rowsql import fetch, qn, select_exprs
from chat.selectors import (
    message_get_by_client_id,
    messages_by_client_id,
    room_user_can_access,
    rooms_accessible,
    token_hash,
)

TOKEN_LAST_USED_RESOLUTION_SECS = 60  # don't write last_used_at on every request


def room_create(*, slug: str, title: str, owner: Any = None, is_private: bool = False) -> Room:
    room = Room(slug=slug, title=title, owner=owner, is_private=is_private)
    room.full_clean()
    with transaction.atomic():
        room.save()
        if owner is not None:
            Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
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
        transaction.on_commit(
            lambda: async_to_sync(fanout.broadcast_removed)(room_id=room.pk, user_id=user.pk)
        )
    return bool(deleted)


def message_create(*, room_id: int, author: Any, text: str, client_id: str | None) -> tuple[Message, bool]:
    """Store one message and give it the room's next sequence number.

    Returns (message, duplicate). A second call with the same (room, author, client_id) returns the
    first message and duplicate=True instead of storing another, also when both calls race.
    The text must already be validated and trimmed (chat.protocol does it for sockets).
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


def message_create_batch(*, items: list[tuple[Any, int, str, str | None]]) -> list[Any]:
    """Store several (author, room_id, text, client_id) sends in one transaction (chat.ingest).

    Each item gets what message_create returns, or None if its author may no longer use the room,
    or the exception it raised. If the transaction itself cannot commit, the error propagates and
    nothing is stored.

    The batch is written with a fixed number of queries per batch and per room (access check,
    idempotency lookup, one sequence reservation per room, one bulk INSERT): it used to be ~7
    queries and a savepoint per message, and that — on the one database thread every consumer
    shares — capped ingest at a few hundred messages a second (docs/benchmarks.md). If the batch
    hits a constraint (a retry of one of its client_ids committed by another process since the
    lookup) it is rolled back whole and stored item by item instead, where each item's savepoint
    sorts the duplicate from the others.
    """
    try:
        with transaction.atomic():
            return _messages_create_together(items)
    except (IntegrityError, DataError):
        pass
    return _messages_create_each(items)


def _messages_create_together(items: list[tuple[Any, int, str, str | None]]) -> list[Any]:
    allowed = rooms_accessible(pairs=[(author, room_id) for author, room_id, _, _ in items])
    existing = messages_by_client_id(
        keys=[(room_id, author.pk, client_id) for author, room_id, _, client_id in items if client_id]
    )
    results: list[Any] = [None] * len(items)
    new: list[tuple[int, Message]] = []  # (index in items, unsaved message)
    first_in_batch: dict[tuple[int, int, str], Message] = {}
    later_copies: list[tuple[int, tuple[int, int, str]]] = []
    now = timezone.now()
    for i, (author, room_id, text, client_id) in enumerate(items):
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
    per_room: dict[int, list[Message]] = {}
    for _, message in new:
        per_room.setdefault(message.room_id, []).append(message)
    if per_room:
        lasts = rooms_reserve_seqs(counts={room_id: len(messages) for room_id, messages in per_room.items()})
        for room_id, messages in per_room.items():
            for seq, message in enumerate(messages, start=lasts[room_id] - len(messages) + 1):
                message.seq = seq
    _messages_insert([message for _, message in new])
    for i, message in new:
        results[i] = (message, False)
    for i, key in later_copies:
        results[i] = (first_in_batch[key], True)
    return results


def _messages_insert(messages: list[Message]) -> None:
    """INSERT new messages (their seqs set) and set their ids: bulk_create's work as plain SQL.

    bulk_create's compiler (a prepare_value per field per object) was ~15% of the database
    thread in the SQLite ingest profile. PostgreSQL returns the ids from the INSERT. SQLite
    would return them one row per step, and Python's sqlite3 lets go of the GIL for every step
    (chat.rowsql says what that costs beside a busy event loop), so there the ids come back
    from one JSON row read by (room, seq) — the seqs are this transaction's own.
    """
    if not messages:
        return
    meta = Message._meta
    fields = [meta.get_field(name) for name in ("room", "seq", "author", "text", "client_id", "created_at")]
    created = fields[-1]
    adapted: dict[Any, Any] = {}  # a batch shares one created_at: adapt it once
    sqlite = connection.vendor == "sqlite"
    returning = not sqlite and connection.features.can_return_rows_from_bulk_insert
    if not sqlite and not returning:
        Message.objects.bulk_create(messages)
        return
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
            sql = head + ", ".join([row] * len(chunk))
            if returning:
                cursor.execute(sql + f" RETURNING {qn(meta.pk.column)}", params)
                for m, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                    m.pk = pk
            else:
                cursor.execute(sql, params)
    if sqlite:
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
    for m in messages:
        m._state.adding = False
        m._state.db = connection.alias


def _messages_create_each(items: list[tuple[Any, int, str, str | None]]) -> list[Any]:
    """The careful path: one savepoint per item, so one item's error leaves the others stored."""
    results: list[Any] = []
    with transaction.atomic():
        for author, room_id, text, client_id in items:
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
    commit, so concurrent writers get disjoint, consecutive ranges. On PostgreSQL, a batch of
    several rooms first locks them in id order: two processes' batches over the same rooms then
    queue instead of deadlocking (an UPDATE locks rows in whatever order its plan reads them).
    """
    table = connection.ops.quote_name(Room._meta.db_table)
    ids = sorted(counts)
    placeholders = ", ".join(["%s"] * len(ids))
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    params = [v for room_id in ids for v in (room_id, counts[room_id])] + ids
    if len(ids) > 1 and connection.vendor == "postgresql":
        # The ordered lock and the update in one statement (they were two round trips, and the
        # PostgreSQL ingest profile is mostly round trips): the subquery's FOR UPDATE takes the
        # row locks in id order before the UPDATE touches a row it has not locked yet.
        sql = (f"UPDATE {table} SET last_seq = {table}.last_seq + CASE {table}.id {cases} END "
               f"FROM (SELECT id FROM {table} WHERE id IN ({placeholders}) ORDER BY id FOR UPDATE) AS locked "
               f"WHERE {table}.id = locked.id RETURNING {table}.id, {table}.last_seq")
    else:
        sql = (f"UPDATE {table} SET last_seq = last_seq + CASE id {cases} END "
               f"WHERE id IN ({placeholders})")
        if connection.vendor != "sqlite":
            sql += " RETURNING id, last_seq"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = None if connection.vendor == "sqlite" else cursor.fetchall()
    if rows is None:
        # The new values as one JSON row instead of one row per room (one GIL hand-back per
        # step; chat.rowsql). The write lock the UPDATE took keeps them this transaction's.
        rows = fetch(select_exprs(["id", "last_seq"], f"FROM {table} WHERE id IN ({placeholders})"), ids)
    lasts = {int(room_id): int(last) for room_id, last in rows}
    missing = set(ids) - set(lasts)
    if missing:
        raise Room.DoesNotExist(f"no room {sorted(missing)}")
    return lasts


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
        token_id = token.pk
        transaction.on_commit(
            lambda: async_to_sync(fanout.close_credential_sockets)(credential=("token", token_id))
        )


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
