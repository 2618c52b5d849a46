"""Plain SELECTs for the reads every connecting client makes, without the ORM's query compiler.

A reconnect storm runs the same three reads for every client — the bearer token with its user,
the room with its visibility check, the messages since the client's last seq — and the
profile had Django building the same SQL again for each (`add_q`, `as_sql`, `setup_joins`
… about half of the database thread, docs/benchmarks.md). chat.selectors writes those three
as SQL over the columns this module lists from the models' `_meta`, and turns rows back into
model instances the way the ORM does: each column through the converters the ORM would apply
(backend, then field), then `Model.from_db`. Everything else stays on the ORM.

On SQLite these reads return their rows as one JSON array in one row (`select`): Python's
sqlite3 lets go of the GIL for every row it steps, and on the database thread, beside an event
loop that never lets go of it, each row then waited for the GIL to come back. `python -m
bench.sqlite_gil` shows it: 400 rows in 0.7 ms beside an idle thread, 690 ms beside a busy one;
as one JSON row 0.6 and 14 ms (its output in docs/benchmarks.md).

On PostgreSQL the ingest batch's statements go through `fetch_together` and `execute_bound`:
psycopg cursors with server-side binding, several reads in one pipeline. Django's cursor binds
on the client, which for a batch means a new statement text for every batch size.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

# Field types whose SQLite values a JSON array carries unchanged (integers, text, NULL):
# booleans and datetimes are stored as integers and text, and converted after, as usual.
JSON_SAFE_TYPES = frozenset({
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField", "SmallIntegerField",
    "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField", "BooleanField",
    "CharField", "TextField", "SlugField", "EmailField", "DateTimeField", "DateField", "ForeignKey",
})


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


class Columns:
    """One model's concrete columns under a table alias: for the SELECT list, and to build
    instances from the matching slice of a row."""

    def __init__(self, model: type[Model], alias: str) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.attnames = [f.attname for f in fields]
        self.exprs = [f"{qn(alias)}.{qn(f.column)}" for f in fields]
        self.sql = ", ".join(self.exprs)
        self.width = len(fields)
        self.json_safe = all(f.get_internal_type() in JSON_SAFE_TYPES for f in fields)
        self._converters: list[tuple[int, Any, tuple[Callable[..., Any], ...]]] = []
        for i, field in enumerate(fields):
            col = field.get_col(alias)
            converters = tuple(connection.ops.get_db_converters(col)) + tuple(col.get_db_converters(connection))
            if converters:
                self._converters.append((i, col, converters))

    def build(self, row: Sequence[Any], start: int = 0) -> Any:
        conn = connections[DEFAULT_DB_ALIAS]
        values = list(row[start:start + self.width])
        for i, col, converters in self._converters:
            value = values[i]
            for convert in converters:
                value = convert(value, col, conn)
            values[i] = value
        return self.model.from_db(DEFAULT_DB_ALIAS, self.attnames, values)

    def build_with(self, row: Sequence[Any], field: str, related: Columns) -> Any:
        """build(row), with the object of foreign key `field` built from the columns that follow
        this model's in the row and cached on it (what select_related does)."""
        obj = self.build(row)
        self.model._meta.get_field(field).set_cached_value(obj, related.build(row, self.width))
        return obj


@functools.cache
def columns(model: type[Model], alias: str, vendor: str) -> Columns:
    """Columns built once per model, alias and database vendor (a process has one database)."""
    return Columns(model, alias)


def cols(model: type[Model], alias: str) -> Columns:
    return columns(model, alias, connection.vendor)


@dataclass(frozen=True, slots=True)
class Select:
    sql: str
    json_rows: bool  # the rows come back as one JSON array in one row (SQLite)


def select(parts: Sequence[Columns], rest: str) -> Select:
    """SELECT the columns of `parts` (in order) followed by `rest` (FROM …, WHERE …, ORDER BY …).

    Callers build each query once per database vendor (functools.cache with the vendor in the
    key): quoting names goes through Django's thread-local connection proxy each time, and
    was a third of a token lookup's cost.

    On SQLite, when JSON carries every column unchanged, the same rows as one JSON array in
    one row (the module's docstring says why); `fetch` turns it back into rows. The inner
    query keeps its ORDER BY and LIMIT, and callers that need an order sort again anyway.
    """
    return select_exprs([e for part in parts for e in part.exprs], rest,
                        json_ok=all(part.json_safe for part in parts))


def select_exprs(exprs: Sequence[str], rest: str, *, json_ok: bool = True) -> Select:
    """select() for plain SQL expressions; json_ok says JSON carries their values unchanged
    (integers, text, NULL)."""
    if connection.vendor != "sqlite" or not json_ok:
        return Select(f"SELECT {', '.join(exprs)} {rest}", False)
    inner = ", ".join(f"{e} AS {qn(f'c{i}')}" for i, e in enumerate(exprs))
    outer = ", ".join(qn(f"c{i}") for i in range(len(exprs)))
    return Select(f"SELECT json_group_array(json_array({outer})) FROM (SELECT {inner} {rest})", True)


def fetch(query: Select, params: Sequence[Any]) -> list[Sequence[Any]]:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(query.sql, params)
        return _rows(query, cursor)


def fetch_together(queries: Sequence[tuple[Select, Sequence[Any]]]) -> list[list[Sequence[Any]]]:
    """fetch() for each (query, params), the rows of each in order.

    On PostgreSQL they leave in one psycopg pipeline (one round trip for all of them instead
    of one each) with server-side binding (see `execute_bound`). The ingest batch reads this
    way (chat.services): its PostgreSQL profile was mostly round trips, and each one, on the
    database thread, also waits to get the GIL back from the event loop. Elsewhere (SQLite, in
    process) they run one after another through Django's cursor.
    """
    if connections[DEFAULT_DB_ALIAS].vendor != "postgresql":
        return [fetch(query, params) for query, params in queries]
    with _bound_cursors(len(queries)) as (raw, cursors):
        start = time.monotonic()
        with raw.pipeline() if len(queries) > 1 else contextlib.nullcontext():
            for cursor, (query, params) in zip(cursors, queries, strict=True):
                cursor.execute(query.sql, params)
        _log([query.sql for query, _ in queries], start)
        return [cursor.fetchall() for cursor in cursors]


def execute_bound(sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
    """PostgreSQL: run one statement with server-side binding and return its rows.

    Django's psycopg cursor binds on the client: every statement is sent as text with its
    values spelled in, so a batch of a different size is a different statement, which psycopg
    splits and quotes value by value and PostgreSQL parses and plans anew (~1 ms of the
    database thread and as much of PostgreSQL's for a batch of 50, docs/benchmarks.md).
    Statements written for this one take arrays (`= ANY(%s)`, `unnest(%s::bigint[], …)`)
    instead of a placeholder per value: one text whatever the batch size, which psycopg
    prepares after a few runs (its prepare_threshold) and PostgreSQL then plans once.
    """
    with _bound_cursors(1) as (_, (cursor,)):
        start = time.monotonic()
        cursor.execute(sql, params)
        _log([sql], start)
        return cursor.fetchall()


@contextlib.contextmanager
def _bound_cursors(count: int) -> Iterator[tuple[Any, list[Any]]]:
    """`count` server-side-binding psycopg cursors on Django's connection, after the checks
    Django's own cursor makes (thread, health check, connect), with Django's error wrapping
    (IntegrityError is django.db's, errors_occurred is set)."""
    conn = connections[DEFAULT_DB_ALIAS]
    with conn.cursor() as django_cursor:
        raw = django_cursor.cursor.connection
        cursors = [psycopg.Cursor(raw) for _ in range(count)]
        try:
            with conn.wrap_database_errors:
                yield raw, cursors
        finally:
            for cursor in cursors:
                cursor.close()


def _log(sqls: list[str], start: float) -> None:
    """What Django's debug cursor would log (connection.queries, assertNumQueries); queries
    that shared a round trip share its time."""
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.queries_logged:
        took = f"{time.monotonic() - start:.3f}"
        conn.queries_log.extend({"sql": sql, "time": took} for sql in sqls)


def _rows(query: Select, cursor: Any) -> list[Sequence[Any]]:
    if not query.json_rows:
        return cursor.fetchall()
    return orjson.loads(cursor.fetchone()[0])
