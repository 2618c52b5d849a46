"""The reads every connecting client makes, as SQL over the models' `_meta` (parley.storage.rows
says why): an API token with its user, rooms by slug, a room's messages by seq. The same SQL on
every database; only SQLite's rows come back as one JSON row (rows.select). Both vendor modules
export these functions as their own.

Each statement is built once per database vendor and number of parameters (functools.cache):
quoting names goes through Django's thread-local connection proxy each time.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection

from parley.models import ApiToken, Message, Room
from parley.storage.rows import Select, cols, fetch, qn, select


def c(alias: str, model: Any, field: str) -> str:
    """alias.column of a model's field, quoted."""
    return f"{qn(alias)}.{qn(model._meta.get_field(field).column)}"


def tokens_by_hash(hashes: list[str]) -> dict[str, ApiToken]:
    """The live tokens (not revoked, active user) whose key_hash is among `hashes`, their users
    loaded, by key_hash."""
    token, user = cols(ApiToken, "t"), cols(get_user_model(), "u")
    found = {}
    for row in fetch(_token_sql(connection.vendor, len(hashes)), [*hashes, True]):
        t = token.build_with(row, "user", user)
        found[t.key_hash] = t
    return found


@functools.cache
def _token_sql(vendor: str, n: int) -> Select:
    """Built once per vendor and number of secrets (at most parley.ws_auth's batch size)."""
    User = get_user_model()
    return select(
        [cols(ApiToken, "t"), cols(User, "u")],
        f"FROM {qn(ApiToken._meta.db_table)} {qn('t')} "
        f"INNER JOIN {qn(User._meta.db_table)} {qn('u')} ON {c('u', User, User._meta.pk.name)} = {c('t', ApiToken, 'user')} "
        f"WHERE {c('t', ApiToken, 'key_hash')} IN ({', '.join(['%s'] * n)}) "
        f"AND {c('t', ApiToken, 'revoked_at')} IS NULL AND {c('u', User, 'is_active')} = %s",
    )


def rooms_by_slug(slugs: list[str]) -> list[Room]:
    """The rooms whose slug is among `slugs` (in no particular order)."""
    room = cols(Room, "r")
    return [room.build(row) for row in fetch(_rooms_by_slug_sql(connection.vendor, len(slugs)), slugs)]


@functools.cache
def _rooms_by_slug_sql(vendor: str, n: int) -> Select:
    return select([cols(Room, "r")], f"FROM {qn(Room._meta.db_table)} {qn('r')} "
                                      f"WHERE {c('r', Room, 'slug')} IN ({', '.join(['%s'] * n)})")


def messages(*, room_id: int, after_seq: int | None, before: int | None, limit: int,
             newest_first: bool, messages_only: bool = False) -> list[Message]:
    """A room's log entries with after_seq < seq < before (either bound optional), by seq
    (newest first if asked), at most `limit`, each with its author loaded; with
    `messages_only`, the `message` entries only (a page)."""
    params: list[Any] = [room_id]
    if after_seq is not None:
        params.append(after_seq)
    if before is not None:
        params.append(before)
    params.append(limit)
    query = _messages_sql(connection.vendor, after_seq is not None, before is not None, newest_first, messages_only)
    message, author = cols(Message, "m"), cols(get_user_model(), "u")
    found = [message.build_with(row, "author", author) for row in fetch(query, params)]
    found.sort(key=_by_seq, reverse=newest_first)  # (a JSON aggregate has no order of its own)
    return found


def messages_in_ranges(ranges: list[tuple[int, int, int]]) -> dict[int, list[Message]]:
    """The log entries (every kind) of every (room id, after_seq, up_to) range, after_seq < seq <= up_to, authors
    loaded, by room and ascending by seq: one query, each row built once however many ranges
    include it."""
    message, author = cols(Message, "m"), cols(get_user_model(), "u")
    by_room: dict[int, list[Message]] = {}
    for row in fetch(_ranges_sql(connection.vendor, len(ranges)), [v for r in ranges for v in r]):
        m = message.build_with(row, "author", author)
        by_room.setdefault(m.room_id, []).append(m)
    for found in by_room.values():
        found.sort(key=_by_seq)
    return by_room


def _by_seq(message: Message) -> int:
    return message.seq


@functools.cache
def _ranges_sql(vendor: str, n: int) -> Select:
    room, seq = c("m", Message, "room"), c("m", Message, "seq")
    return _messages_select(" OR ".join([f"({room} = %s AND {seq} > %s AND {seq} <= %s)"] * n))


@functools.cache
def _messages_sql(vendor: str, after: bool, before: bool, newest_first: bool, messages_only: bool) -> Select:
    seq = c("m", Message, "seq")
    return _messages_select(
        f"{c('m', Message, 'room')} = %s"
        # A literal, not a parameter: only then may the planners use the partial index of
        # message entries (Message.Meta, message_room_page_idx).
        + (f" AND {c('m', Message, 'kind')} = 'message'" if messages_only else "")
        + (f" AND {seq} > %s" if after else "")
        + (f" AND {seq} < %s" if before else "")
        + f" ORDER BY {seq} {'DESC' if newest_first else 'ASC'} LIMIT %s"
    )


def _messages_select(where: str) -> Select:
    """Messages (alias m) with their authors (u) WHERE `where` (which may end in ORDER BY/LIMIT)."""
    User = get_user_model()
    return select(
        [cols(Message, "m"), cols(User, "u")],
        f"FROM {qn(Message._meta.db_table)} {qn('m')} "
        f"INNER JOIN {qn(User._meta.db_table)} {qn('u')} ON {c('u', User, User._meta.pk.name)} = {c('m', Message, 'author')} "
        f"WHERE {where}",
    )


# The rows of the access-facts query (each vendor's access_facts): 0 a room's flags (below), 1 a
# lost user, 2 a lost token.
ROOM_ROW, USER_ROW, TOKEN_ROW = 0, 1, 2
# A room row's flags, one integer: private, archived (read-only), a direct conversation.
PRIVATE_FLAG, ARCHIVED_FLAG, DM_FLAG = 1, 2, 4


def room_flags_sql() -> str:
    """The SQL expression of a room row's flags (the same on both databases)."""
    return (f"(CASE WHEN {qn('is_private')} THEN {PRIVATE_FLAG} ELSE 0 END"
            f" + CASE WHEN {qn('archived_at')} IS NULL THEN 0 ELSE {ARCHIVED_FLAG} END"
            f" + CASE WHEN {qn('kind')} = 'dm' THEN {DM_FLAG} ELSE 0 END)")
_CREDENTIAL_KINDS = {USER_ROW: "user", TOKEN_ROW: "token"}


def credentials_lost_sql(ids: str, value: str, false: str) -> str:
    """The rows (kind, id, false) of each user of a list that is inactive or gone (kind 1) and
    each API token that is revoked or gone (kind 2). `ids` is the vendor's table expression of
    one list parameter (users' first, then tokens'), `value` its column, `false` its false.
    The lists probe the primary keys: a missing row is a lost credential too."""
    User = get_user_model()

    def lost(kind: int, model: Any, alias: str, gone: str) -> str:
        a, pk = qn(alias), c(alias, model, model._meta.pk.name)  # a host's user pk may not be "id"
        return (f"SELECT {kind}, {value}, {false} FROM {ids} LEFT JOIN {qn(model._meta.db_table)} {a} ON {pk} = {value} "
                f"WHERE {pk} IS NULL OR {gone}")

    users = lost(USER_ROW, User, "u", f"NOT {c('u', User, 'is_active')}")
    tokens = lost(TOKEN_ROW, ApiToken, "t", f"{c('t', ApiToken, 'revoked_at')} IS NOT NULL")
    return f"{users} UNION ALL {tokens}"


def access_facts_from(rows: list[Any]) -> tuple[dict[int, int], set[tuple[str, int]]]:
    """(each room's flags by id: PRIVATE_FLAG, ARCHIVED_FLAG, DM_FLAG; the lost credentials)
    from the access-facts rows."""
    flags = {int(ident): int(flag) for kind, ident, flag in rows if kind == ROOM_ROW}
    lost = {(_CREDENTIAL_KINDS[kind], int(ident)) for kind, ident, _ in rows if kind in _CREDENTIAL_KINDS}
    return flags, lost


# --- search (parley.search): what both databases' search_matches share -----------------------

def search_filters(query: Any, rooms: Any, authors: Any) -> tuple[str, list[Any]]:
    """The WHERE of a search, on `m`: the rooms (a subquery: room_visible_q's rule stays the
    ORM's), the authors, the dates: the same on both databases."""
    m = qn("m")
    room_sql, room_params = rooms.query.sql_with_params()
    clauses, params = [f"{m}.room_id IN ({room_sql})"], list(room_params)
    if authors is not None:
        author_sql, author_params = authors.query.sql_with_params()
        clauses.append(f"{m}.author_id IN ({author_sql})")
        params += author_params
    created = Message._meta.get_field("created_at")
    if query.after is not None:
        clauses.append(f"{m}.created_at >= %s")
        params.append(created.get_db_prep_value(query.after, connection))
    if query.before is not None:
        clauses.append(f"{m}.created_at < %s")
        params.append(created.get_db_prep_value(query.before, connection))
    return " AND ".join(clauses), params


def search_filters_only(*, where: str, params: list[Any], limit: int,
                        before: tuple[float, int] | None) -> list[tuple[int, float]]:
    """A search without words: every live message of the filters `where`, newest first (score
    0), after the cursor `before`. Needs no index, so it is one statement on both databases."""
    m = qn("m")
    sql = (f"SELECT {m}.id, 0.0 FROM {qn(Message._meta.db_table)} {m} WHERE {m}.kind = 'message' "
           f"AND {m}.deleted_at IS NULL AND {where}")
    if before is not None:
        sql += f" AND {m}.id < %s"
        params = [*params, before[1]]
    with connection.cursor() as cursor:
        cursor.execute(sql + f" ORDER BY {m}.id DESC LIMIT %s", [*params, limit])
        return [(int(pk), float(score)) for pk, score in cursor.fetchall()]


def search_ranked_page(*, inner: str, params: list[Any], limit: int, before: tuple[float, int] | None,
                       score_type: str = "") -> list[tuple[int, float]]:
    """A page of a ranked search: `inner` selects (id, score) of the matches; best first, ties
    newest first, after the cursor `before` (score, id). `score_type` casts the cursor's score
    to the score's own type (PostgreSQL's ts_rank is a real: a float8 never equals it)."""
    cast = f"::{score_type}" if score_type else ""
    sql = f"SELECT id, score FROM ({inner}) AS s"
    if before is not None:
        sql += f" WHERE s.score < %s{cast} OR (s.score = %s{cast} AND s.id < %s)"
        params = [*params, before[0], before[0], before[1]]
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY s.score DESC, s.id DESC LIMIT %s", [*params, limit])
        return [(int(pk), float(score)) for pk, score in cursor.fetchall()]
