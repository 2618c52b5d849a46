"""SQLite's hand-written statements (parley.storage says which, and why each one stays).

The ingest batch's write is the seq reservation (one UPDATE for every room of the batch) and a
multi-row INSERT, in an IMMEDIATE transaction whose write lock keeps the seqs this
transaction's. No statement of the batch returns a row per step: Python's sqlite3 hands the GIL
back on every step, and beside a busy event loop each row then waits for it (parley.storage.rows),
so the values the batch reads back come as one JSON row. Lists of ids go as one JSON array
parameter each (json_each): one statement text whatever the number of ids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from django.db import OperationalError, connection, transaction

from parley.models import Message, Room
from parley.storage.errors import StatementTimedOut
from parley.storage.reads import (
    ROOM_ROW,
    access_facts_from,
    credentials_lost_sql,
    room_flags_sql,
    search_filters,
    search_filters_only,
    search_ranked_page,
)

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


def access_facts(room_ids: list[int], users: list[int], tokens: list[int]) -> tuple[dict[int, int], set[tuple[str, int]]]:
    """The rooms' flags by id (private, archived, DM: parley.storage.reads) and the lost
    credentials, in one statement whose rows come back
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
    return select_exprs([str(ROOM_ROW), qn("id"), room_flags_sql()],
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
    it this transaction's.

    Plain SQL: the ORM's form (an F() + Case/When UPDATE and a values_list) cost 1-2 ms more
    of the database thread's CPU per batch, even of one message (`python -m bench.sqlite_batch`,
    docs/benchmarks.md).
    """
    if not counts:
        return {}
    ids = sorted(counts)
    table, marks = qn(Room._meta.db_table), ", ".join(["%s"] * len(ids))
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET last_seq = last_seq + CASE id {cases} END WHERE id IN ({marks})",
                       [v for room_id in ids for v in (room_id, counts[room_id])] + ids)
    rows = fetch(select_exprs(["id", "last_seq"], f"FROM {table} WHERE id IN ({marks})"), ids)
    return {int(room_id): int(last) for room_id, last in rows}


def messages_store(messages: list[Message]) -> None:
    """Number the messages (the next seqs of each room, in list order) and INSERT them. Each one
    stored gets its seq and id; one whose room was deleted since the access check is not
    stored and keeps no id."""
    per_room: dict[int, list[Message]] = {}
    for message in messages:
        per_room.setdefault(message.room_id, []).append(message)
    lasts = seqs_reserve({room_id: len(ms) for room_id, ms in per_room.items()})
    for room_id, ms in per_room.items():
        if room_id in lasts:
            for seq, message in enumerate(ms, start=lasts[room_id] - len(ms) + 1):
                message.seq = seq
    kept = [m for m in messages if m.room_id in lasts]
    if kept:
        _messages_insert(kept)


def _messages_insert(messages: list[Message]) -> None:
    """INSERT new messages (their seqs set) and set their ids: bulk_create's work as plain SQL.

    bulk_create cost 0.7-0.9 ms more CPU per batch of 12 and 2.2 ms per batch of 50 (its
    compiler runs a prepare_value per field per message; `python -m bench.sqlite_batch`,
    docs/benchmarks.md), and it takes the ids from RETURNING, one row per step. Here one
    multi-row INSERT per parameter limit, the batch's shared created_at adapted once, and the
    ids from one JSON row read by (room, seq): the seqs are this transaction's own.
    """
    meta = Message._meta
    fields = [meta.get_field(name) for name in ("room", "seq", "author", "text", "client_id", "created_at",
                                                "target_seq", "mentions", "mention_room")]
    created, mentioned = fields[5], fields[7]
    adapted: dict[Any, Any] = {}  # a batch shares one created_at: adapt it once
    head = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) VALUES "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    per_statement = max(1, (connection.features.max_query_params or 10_000) // len(fields))
    with connection.cursor() as cursor:
        for start in range(0, len(messages), per_statement):
            chunk = messages[start:start + per_statement]
            params: list[Any] = []
            for m in chunk:
                if m.created_at not in adapted:
                    adapted[m.created_at] = created.get_db_prep_save(m.created_at, connection)
                params += [m.room_id, m.seq, m.author_id, m.text, m.client_id, adapted[m.created_at], m.target_seq,
                           None if m.mentions is None else mentioned.get_db_prep_save(m.mentions, connection),
                           m.mention_room]
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


@contextmanager
def time_limit(ms: int) -> Iterator[None]:
    """Every statement inside runs for at most `ms` milliseconds from the block's start: SQLite
    interrupts one still running then (a progress handler, checked every PROGRESS_STEPS virtual
    machine instructions), and StatementTimedOut is raised."""
    connection.ensure_connection()
    raw = connection.connection
    deadline = time.monotonic() + max(1, int(ms)) / 1000

    def past_deadline() -> int:
        return 1 if time.monotonic() > deadline else 0

    raw.set_progress_handler(past_deadline, PROGRESS_STEPS)
    try:
        yield
    except OperationalError as exc:
        if "interrupted" in str(exc):
            raise StatementTimedOut(f"a statement ran past {ms} ms") from exc
        raise
    finally:
        raw.set_progress_handler(None, 0)


PROGRESS_STEPS = 10_000  # about 0.1-1 ms of SQLite's work between two looks at the clock


# --- search (parley.search; migration 0005_search: the FTS5 table parley_message_fts) ---
FTS_TABLE = "parley_message_fts"


def search_matches(*, query: Any, rooms: Any, authors: Any, limit: int,
                   before: tuple[float, int] | None) -> list[tuple[int, float]]:
    """As parley.storage.postgres.search_matches, with FTS5: the score is -bm25 (higher is
    better), ties newest first."""
    where, params = search_filters(query, rooms, authors)
    if not query.terms:
        return search_filters_only(where=where, params=params, limit=limit, before=before)
    m, fts = qn("m"), qn(FTS_TABLE)
    inner = (f"SELECT {m}.id AS id, -bm25({fts}) AS score FROM {fts} "
             f"INNER JOIN {qn(Message._meta.db_table)} {m} ON {m}.id = {fts}.rowid "
             f"WHERE {fts} MATCH %s AND {where}")
    return search_ranked_page(inner=inner, params=[query.fts5(), *params], limit=limit, before=before)


def search_snippets(*, query: Any, ids: list[int], markers: Any, words: int, whole_chars: int) -> dict[int, str]:
    """FTS5's highlight() of a text of at most `whole_chars` characters, snippet() of a longer
    one (about `words` tokens, markers.gap where the excerpt cuts the text); hits between
    markers.start and .stop."""
    fts = qn(FTS_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {fts}.rowid, CASE WHEN length({qn('m')}.text) <= %s "
                       f"THEN highlight({fts}, 0, %s, %s) ELSE snippet({fts}, 0, %s, %s, %s, %s) END "
                       f"FROM {fts} INNER JOIN {qn(Message._meta.db_table)} {qn('m')} ON {qn('m')}.id = {fts}.rowid "
                       f"WHERE {fts} MATCH %s AND {fts}.rowid IN (SELECT value FROM json_each(%s))",
                       [whole_chars, markers.start, markers.stop, markers.start, markers.stop, markers.gap,
                        min(64, words), query.fts5(), _ids_param(ids)])
        return {int(pk): marked for pk, marked in cursor.fetchall()}
