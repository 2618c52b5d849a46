"""SQLite's statements (parley.storage says which are hand-written, and why).

The ingest batch's write is the ORM's: an UPDATE of the rooms' last_seq, and bulk_create, in
an IMMEDIATE transaction whose write lock keeps the seqs this transaction's. Lists of ids go as
one JSON array parameter each (json_each): one statement text whatever the number of ids.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Case, F, Value, When

from parley.models import Message, Room
from parley.storage.reads import ROOM_ROW, access_facts_from, credentials_lost_sql

# The connect path's reads: the same SQL on every database (parley.storage.reads).
from parley.storage.reads import messages as messages
from parley.storage.reads import messages_in_ranges as messages_in_ranges
from parley.storage.reads import rooms_by_slug as rooms_by_slug
from parley.storage.reads import tokens_by_hash as tokens_by_hash
from parley.storage.rows import Select, fetch, qn, select_exprs


def write_transaction() -> Any:
    """The transaction around an ingest batch (a savepoint inside the caller's): its statements
    rely on the write lock the first one takes until commit."""
    return transaction.atomic()


def access_facts(room_ids: list[int], users: list[int], tokens: list[int]) -> tuple[dict[int, bool], set[tuple[str, int]]]:
    """The rooms' privacy by id and the lost credentials, in one statement whose rows come back
    as one JSON row (parley.storage.rows): what every ingest batch checks before it writes."""
    return access_facts_from(fetch(_access_facts_sql(len(room_ids)), [*room_ids, _ids_param(users), _ids_param(tokens)]))


def credentials_lost(users: list[int], tokens: list[int]) -> set[tuple[str, int]]:
    return access_facts_from(fetch(_credentials_lost_sql(), [_ids_param(users), _ids_param(tokens)]))[1]


def _ids_param(ids: list[int]) -> str:
    return orjson.dumps(ids).decode()


def _ids() -> tuple[str, str]:
    v = qn("v")
    return f"json_each(%s) AS {v}", f"{v}.{qn('value')}"


@functools.cache
def _credentials_lost_sql() -> Select:
    return Select(credentials_lost_sql(*_ids(), "0"), False)


@functools.lru_cache(maxsize=512)
def _access_facts_sql(rooms: int) -> Select:
    return select_exprs([str(ROOM_ROW), qn("id"), qn("is_private")],
                        f"FROM {qn(Room._meta.db_table)} WHERE {qn('id')} IN ({', '.join(['%s'] * rooms)}) "
                        f"UNION ALL {credentials_lost_sql(*_ids(), '0')}")


def client_id_hits(keys: list[tuple[int, int, str]]) -> list[int]:
    """The ids of the stored messages whose (room id, author id, client_id) is among `keys`:
    a join with exactly the keys, which the (room, author, client_id) unique index answers with
    one probe each (SQLite plans `(room, author, client_id) IN (VALUES …)` as a scan of the
    whole index)."""
    return [pk for (pk,) in fetch(_client_id_sql(len(keys)), [v for key in keys for v in key])]


@functools.cache
def _client_id_sql(n: int) -> Select:
    k, m = qn("k"), qn("m")
    names = ("room_id", "author_id", "client_id")
    columns = ", ".join(qn(c) for c in names)
    on = " AND ".join(f"{m}.{qn(c)} = {k}.{qn(c)}" for c in names)
    # SQLite names a VALUES list's columns only in a WITH.
    return Select(f"WITH {k} ({columns}) AS (VALUES {', '.join(['(%s, %s, %s)'] * n)}) "
                  f"SELECT {m}.{qn('id')} FROM {k} INNER JOIN {qn(Message._meta.db_table)} {m} ON {on}", False)


def seqs_reserve(counts: dict[int, int]) -> dict[int, int]:
    """Advance each room's last_seq by its count; the new values by room id (a missing room is
    absent). One UPDATE for all the rooms; the write lock it takes keeps the values read after
    it this transaction's."""
    if not counts:
        return {}
    ids = sorted(counts)
    Room.objects.filter(pk__in=ids).update(
        last_seq=F("last_seq") + Case(*(When(pk=room_id, then=Value(counts[room_id])) for room_id in ids)),
    )
    return dict(Room.objects.filter(pk__in=ids).values_list("pk", "last_seq"))


def messages_store(messages: list[Message]) -> None:
    """Number the messages (the next seqs of each room, in list order) and INSERT them
    (bulk_create, which sets their ids from RETURNING). One whose room was deleted since the
    access check is not stored and keeps no id."""
    per_room: dict[int, list[Message]] = {}
    for message in messages:
        per_room.setdefault(message.room_id, []).append(message)
    lasts = seqs_reserve({room_id: len(ms) for room_id, ms in per_room.items()})
    for room_id, ms in per_room.items():
        if room_id in lasts:
            for seq, message in enumerate(ms, start=lasts[room_id] - len(ms) + 1):
                message.seq = seq
    Message.objects.bulk_create([m for m in messages if m.room_id in lasts])
