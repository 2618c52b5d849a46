"""How Parley's rows are read and written, one module per database: parley.storage.postgres and
parley.storage.sqlite. parley.services and parley.selectors say *what* (the rules: who may
post where, idempotency, numbering); `db()` is the module that says *how* on the default
connection. Both modules have the same functions:

    write_transaction()                      the transaction around an ingest batch's write
    access_facts(room_ids, users, tokens)    (flags by room id: private, archived, DM; lost credentials)
    credentials_lost(users, tokens)          the lost ("user", id) / ("token", id)
    client_id_hits(keys)                     ids of stored messages by (room, author, client_id)
    seqs_reserve(counts)                     {room id: new last_seq}, missing rooms absent
    messages_store(messages)                 number and INSERT an ingest batch's messages
    tokens_by_hash, rooms_by_slug, messages, messages_in_ranges   the connect path's reads
                                             (parley.storage.reads: the same SQL on both)
    search_matches, search_snippets          the search's statements (parley.search)
    time_limit(ms)                           statements inside run at most ms, else StatementTimedOut

Hand-written SQL is kept where docs/benchmarks.md measured a gain, and only there: the connect
path's reads (a reconnect storm of 5,000 clients, 37.7 s → 19.5 s), SQLite reads returning one
JSON row (12.2 → 10.9 s), PostgreSQL's batch write as one statement in autocommit and its
idempotency lookup as a join (1,995 → 3,646 msg/s), SQLite's batch write (the ORM's
bulk_create and UPDATE cost the database thread twice the CPU per batch). Every statement runs on Django's
own cursor, one after another; the rest is the ORM. docs/benchmarks.md, "Issue 13: ORM vs
hand-written SQL", has the measurements.
"""

from __future__ import annotations

from types import ModuleType

from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from parley.storage import postgres, sqlite

_BY_VENDOR: dict[str, ModuleType] = {"postgresql": postgres, "sqlite": sqlite}


def db() -> ModuleType:
    """The storage module of the default connection's database."""
    try:
        return _BY_VENDOR[connection.vendor]
    except KeyError:
        raise ImproperlyConfigured(f"Parley supports PostgreSQL and SQLite, not {connection.vendor!r}") from None
