"""Plain SELECTs for the reads every connecting client makes, without the ORM's query compiler.

A reconnect storm runs the same three reads for every client — the bearer token with its user,
the room with its visibility check, the messages since the client's last seq — and the
profile had Django building the same SQL again for each (`add_q`, `as_sql`, `setup_joins`
… about half of the database thread, docs/benchmarks.md). chat.selectors writes those three
as SQL over the columns this module lists from the models' `_meta`, and turns rows back into
model instances the way the ORM does: each column through the converters the ORM would apply
(backend, then field), then `Model.from_db`. Everything else stays on the ORM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


class Columns:
    """One model's concrete columns under a table alias: for the SELECT list, and to build
    instances from the matching slice of a row."""

    def __init__(self, model: type[Model], alias: str) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.attnames = [f.attname for f in fields]
        self.sql = ", ".join(f"{qn(alias)}.{qn(f.column)}" for f in fields)
        self.width = len(fields)
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


def fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def cached_sql(build: Callable[[], str]) -> Callable[[], str]:
    """A SQL string built once per database vendor: quoting names goes through Django's
    thread-local connection proxy each time, and was a third of a token lookup's cost."""
    built: dict[str, str] = {}

    @functools.wraps(build)
    def sql() -> str:
        vendor = connection.vendor
        if vendor not in built:
            built[vendor] = build()
        return built[vendor]

    return sql
