"""Plain SELECTs for the reads every connecting client makes, without the ORM's query compiler.

A reconnect storm runs the same three reads for every client — the bearer token with its user,
the room with its visibility check, the messages since the client's last seq — and the
profile had Django building the same SQL again for each (`add_q`, `as_sql`, `setup_joins`
… about half of the database thread, docs/benchmarks.md). parley.storage.reads writes those three
as SQL over the columns this module lists from the models' `_meta`, and turns rows back into
model instances the way the ORM does: each column through the converters the ORM would apply
(backend, then field), then `Model.from_db`. The ingest batch's hand-written statements (parley.storage.postgres,
parley.storage.sqlite) use the same tools; everything else stays on the ORM.

On SQLite these reads return their rows as one JSON array in one row (`select`): Python's
sqlite3 lets go of the GIL for every row it steps, and on the database thread, beside an event
loop that never lets go of it, each row then waited for the GIL to come back. `python -m
bench.sqlite_gil` shows it: 400 rows in 0.7 ms beside an idle thread, 690 ms beside a busy one;
as one JSON row 0.6 and 14 ms (its output in docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

# Field types whose SQLite values a JSON array carries unchanged (integers, text, NULL):
# booleans and datetimes are stored as integers and text, and converted after, as usual.
JSON_SAFE_TYPES = frozenset({
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField", "SmallIntegerField",
    "PositiveIntegerField", "PositiveBigIntegerField", "PositiveSmallIntegerField", "BooleanField",
    "CharField", "TextField", "SlugField", "EmailField", "DateTimeField", "DateField", "ForeignKey",
    # Stored as JSON text, which json_array() carries as a string: the field parses it after.
    "JSONField",
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
    return columns(model, alias, connection.vendor)  # type: ignore[arg-type]  # (model classes hash by identity)


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


def _rows(query: Select, cursor: Any) -> list[Sequence[Any]]:
    if not query.json_rows:
        return cursor.fetchall()
    return orjson.loads(cursor.fetchone()[0])
