"""PostgreSQL's hand-written statements (parley.storage says which, and why each one stays).

The ingest batch's write is one statement: the seq reservation and the INSERT as a
data-modifying WITH, its rows as arrays (one statement text whatever the batch's size), in
autocommit. Lists of ids go as one array parameter each.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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
    """The transaction around an ingest batch: none in autocommit, where the batch's one write
    is a single statement (the reads before it are plain reads, which in READ COMMITTED see the
    same committed rows inside a transaction as outside one); a savepoint inside the caller's."""
    return transaction.atomic() if connection.in_atomic_block else nullcontext()


def access_facts(room_ids: list[int], users: list[int], tokens: list[int]) -> tuple[dict[int, int], set[tuple[str, int]]]:
    """The rooms' flags by id (private, archived, DM: parley.storage.reads) and the lost
    credentials, in one statement: what every ingest
    batch checks before it writes."""
    return access_facts_from(fetch(_access_facts_sql(), [room_ids, users, tokens]))


def credentials_lost(users: list[int], tokens: list[int]) -> set[tuple[str, int]]:
    return access_facts_from(fetch(_credentials_lost_sql(), [users, tokens]))[1]


def _ids() -> tuple[str, str]:
    v, x = qn("v"), qn("x")
    return f"unnest(%s::bigint[]) AS {v} ({x})", f"{v}.{x}"


@functools.cache
def _credentials_lost_sql() -> Select:
    return Select(credentials_lost_sql(*_ids(), "false"), False)


@functools.cache
def _access_facts_sql() -> Select:
    return select_exprs([str(ROOM_ROW), qn("id"), room_flags_sql()],
                        f"FROM {qn(Room._meta.db_table)} WHERE {qn('id')} = ANY(%s::bigint[]) "
                        f"UNION ALL {credentials_lost_sql(*_ids(), '0')}")


def client_id_hits(keys: list[tuple[int, int, str]]) -> list[int]:
    """The ids of the stored messages whose (room id, author id, client_id) is among `keys`.

    The keys go as three arrays, joined with the table: the (room, author, client_id) unique
    index answers with one probe each, whatever the table's statistics (docs/benchmarks.md,
    `python -m bench.pg_batch`: the room-by-room `author IN (…) AND client_id IN (…)` form got
    a plan that read every stored row of the batch's authors while autovacuum lagged).
    """
    params = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
    return [pk for (pk,) in fetch(_client_id_sql(), params)]


@functools.cache
def _client_id_sql() -> Select:
    k, m = qn("k"), qn("m")
    names = ("room_id", "author_id", "client_id")
    columns = ", ".join(qn(n) for n in names)
    on = " AND ".join(f"{m}.{qn(n)} = {k}.{qn(n)}" for n in names)
    return Select(f"SELECT {m}.{qn('id')} FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS {k} ({columns}) "
                  f"INNER JOIN {qn(Message._meta.db_table)} {m} ON {on}", False)


def seqs_reserve(counts: dict[int, int]) -> dict[int, int]:
    """Advance each room's last_seq by its count; the new values by room id (a missing room is
    absent). The row locks last until commit."""
    with connection.cursor() as cursor:
        cursor.execute(_seqs_update_sql(), _seqs_update_params(counts))
        return {int(room_id): int(last) for room_id, last in cursor.fetchall()}


@functools.cache
def _seqs_update_sql() -> str:
    """UPDATE … RETURNING id, last_seq (the new value), with the rooms and their counts as
    arrays (_seqs_update_params).

    The rooms' row locks are taken in id order first, by the subquery's FOR UPDATE: two
    processes' batches over the same rooms then queue instead of deadlocking (an UPDATE alone
    locks rows in whatever order its plan reads them). The lock and the update are one
    statement; messages_store puts the INSERT in it too.
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


def messages_store(messages: list[Message]) -> None:
    """Number the messages (the next seqs of each room, in list order) and INSERT them, in one
    statement that commits by itself in autocommit (the reservation's row locks last for that
    statement only). Each row carries how far below its room's new last_seq it is numbered
    (`back`). Each one stored gets its seq and id; one whose room was deleted since the access
    check keeps no id.
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
            [m.target_seq for m in messages],
            [None if m.mentions is None else orjson.dumps(m.mentions).decode() for m in messages],
            [m.mention_room for m in messages],
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
    columns = ("room_id", "back", "author_id", "text", "client_id", "created_at", "target_seq", "mentions",
               "mention_room")
    types = ("bigint", "bigint", "bigint", "text", "text", "timestamp with time zone", "bigint", "text", "boolean")
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    stored = ("room_id", "seq", "author_id", "text", "client_id", "created_at", "target_seq", "mentions",
              "mention_room")
    return (f"WITH {seqs} AS ({_seqs_update_sql()}) "
            f"INSERT INTO {table} ({', '.join(qn(c) for c in stored)}) "
            f"SELECT {v}.{qn('room_id')}, {seqs}.{qn('last_seq')} - {v}.{qn('back')}, {v}.{qn('author_id')}, "
            f"{v}.{qn('text')}, {v}.{qn('client_id')}, {v}.{qn('created_at')}, {v}.{qn('target_seq')}, "
            f"{v}.{qn('mentions')}::jsonb, {v}.{qn('mention_room')} "
            f"FROM unnest({arrays}) AS {v} ({', '.join(qn(c) for c in columns)}) "
            f"INNER JOIN {seqs} ON {seqs}.{qn('id')} = {v}.{qn('room_id')} "
            f"RETURNING {qn(Message._meta.pk.column)}, {qn('room_id')}, {qn('seq')}")


QUERY_CANCELED = "57014"  # SQLSTATE of a statement statement_timeout cancelled


@contextmanager
def time_limit(ms: int) -> Iterator[None]:
    """Every statement inside runs for at most `ms` milliseconds: PostgreSQL cancels one that
    takes longer (statement_timeout, for this transaction only), and StatementTimedOut is
    raised. The block is one transaction (a savepoint inside a host's ATOMIC_REQUESTS one: the
    setting is put back after it, so the rest of the request runs without the limit)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout'), set_config('statement_timeout', %s, true)",
                           [str(max(1, int(ms)))])
            previous = cursor.fetchone()[0]
        try:
            yield
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == QUERY_CANCELED:
                raise StatementTimedOut(f"a statement ran past {ms} ms") from exc
            raise
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


# --- search (parley.search; migration 0005_search: the search_vector column and its GIN index) ---
# The text search configuration of the generated column: a query must parse its words the same way.
SEARCH_CONFIG = "english"


def search_matches(*, query: Any, rooms: Any, authors: Any, limit: int,
                   before: tuple[float, int] | None) -> list[tuple[int, float]]:
    """(message id, score) of the live messages matching `query` in the rooms of the queryset
    `rooms` (by `authors`, a queryset of user pks, if given), best first: ts_rank over the
    stored tsvector (normalised by length, 1), ties newest first; after the cursor `before`.
    Without words, every message of the filters, newest first (score 0)."""
    where, params = search_filters(query, rooms, authors)
    if not query.terms:
        return search_filters_only(where=where, params=params, limit=limit, before=before)
    m = qn("m")
    inner = (f"SELECT {m}.id, ts_rank({m}.search_vector, {qn('q')}.query, 1) AS score "
             f"FROM {qn(Message._meta.db_table)} {m}, websearch_to_tsquery('{SEARCH_CONFIG}', %s) AS {qn('q')} (query) "
             f"WHERE {m}.search_vector @@ {qn('q')}.query AND {where}")
    return search_ranked_page(inner=inner, params=[query.websearch(), *params], limit=limit, before=before,
                              score_type="real")


def search_snippets(*, query: Any, ids: list[int], markers: Any, words: int, whole_chars: int) -> dict[int, str]:
    """ts_headline of each message: hits between markers.start and .stop; a text of at most
    `whole_chars` characters whole, a longer one as up to two fragments of about `words` words
    joined by markers.gap (fragments override HighlightAll: the whole text takes options of its own)."""
    options = (f"StartSel={markers.start}, StopSel={markers.stop}, MaxWords={words}, MinWords={max(1, words // 3)}, "
               f"ShortWord=2, MaxFragments=2, FragmentDelimiter={markers.gap}")
    headline = f"ts_headline('{SEARCH_CONFIG}', text, {qn('q')}.query, %s)"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, CASE WHEN char_length(text) <= %s THEN {headline} ELSE {headline} END "
                       f"FROM {qn(Message._meta.db_table)}, websearch_to_tsquery('{SEARCH_CONFIG}', %s) AS {qn('q')} (query) "
                       f"WHERE id = ANY(%s::bigint[])",
                       [whole_chars, f"StartSel={markers.start}, StopSel={markers.stop}, HighlightAll=true", options, query.websearch(), ids])
        return {int(pk): marked for pk, marked in cursor.fetchall()}
