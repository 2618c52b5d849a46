"""The room list with each room's unread and mention counts, in one statement (docs/protocol.md
§11): the rooms, the user's RoomState rows, and two capped counts per room as correlated
subqueries. Each count is a scan of the room's message entries after the read marker on the
partial index of message entries (Message.Meta, message_room_page_idx), stopped after
PARLEY_UNREAD_COUNT_MAX rows: a room with a million unread messages costs what one with a
thousand does.

The same SQL on both databases but for "does this message mention the user": PostgreSQL's
jsonb containment, SQLite's json_each.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import connection

from parley.models import Membership, Message, Room, RoomState
from parley.storage.rows import qn


def _col(alias: str, model: Any, field: str) -> str:
    return f"{qn(alias)}.{qn(model._meta.get_field(field).column)}"


def _mentions_me(vendor: str) -> str:
    """SQL true when message m mentions the user (one parameter: PostgreSQL's a JSON text
    `[{"id": n}]`, SQLite's the id)."""
    mentions = _col("m", Message, "mentions")
    if vendor == "postgresql":
        return f"{mentions} @> %s::jsonb"
    return f"EXISTS (SELECT 1 FROM json_each({mentions}) WHERE json_extract(value, '$.id') = %s)"


def _mention_param(vendor: str, user_id: int) -> Any:
    return f'[{{"id": {int(user_id)}}}]' if vendor == "postgresql" else user_id


@functools.cache
def _sql(vendor: str, one_room: bool) -> str:
    r, s, m = qn("r"), qn("s"), qn("m")
    unread_where = (
        f"{_col('m', Message, 'room')} = {_col('r', Room, 'id')} AND {_col('m', Message, 'kind')} = 'message' "
        f"AND {_col('m', Message, 'seq')} > COALESCE({_col('s', RoomState, 'last_read_seq')}, 0) "
        f"AND {_col('m', Message, 'deleted_at')} IS NULL AND {_col('m', Message, 'author')} <> %s"
    )
    table = qn(Message._meta.db_table)

    def capped(where: str) -> str:
        return f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} {m} WHERE {where} LIMIT %s) {qn('c')})"

    mention = f"({_col('m', Message, 'mention_room')} OR {_mentions_me(vendor)})"
    select = (
        f"SELECT {r}.*, {_col('s', RoomState, 'id')} AS state_id, "
        f"{_col('s', RoomState, 'last_read_seq')} AS state_last_read_seq, "
        f"{_col('s', RoomState, 'notify')} AS state_notify, {_col('s', RoomState, 'muted')} AS state_muted, "
        f"{_col('s', RoomState, 'listed')} AS state_listed, "
        f"{capped(unread_where)} AS unread_count, {capped(unread_where + ' AND ' + mention)} AS mention_count "
        f"FROM {qn(Room._meta.db_table)} {r} LEFT JOIN {qn(RoomState._meta.db_table)} {s} "
        f"ON {_col('s', RoomState, 'room')} = {_col('r', Room, 'id')} AND {_col('s', RoomState, 'user')} = %s "
    )
    if one_room:
        return select + f"WHERE {_col('r', Room, 'id')} = %s"
    member = (f"EXISTS (SELECT 1 FROM {qn(Membership._meta.db_table)} {qn('ms')} "
              f"WHERE {_col('ms', Membership, 'room')} = {_col('r', Room, 'id')} AND {_col('ms', Membership, 'user')} = %s)")
    return select + (f"WHERE ({_col('r', Room, 'is_private')} = %s AND {_col('s', RoomState, 'listed')} = %s) "
                      f"OR {member} ORDER BY {_col('r', Room, 'slug')} LIMIT %s")


def room_states(*, user_id: int, cap: int, limit: int | None = None, room_id: int | None = None) -> list[Room]:
    """The user's listed rooms by slug (at most `limit`), or the one room `room_id`; each Room
    carries `state_*` (the RoomState's fields, None without a row), `unread_count` and
    `mention_count` (each at most `cap`)."""
    vendor = connection.vendor
    params: list[Any] = [user_id, cap, user_id, _mention_param(vendor, user_id), cap, user_id]
    if room_id is not None:
        params.append(room_id)
    else:
        params += [False, True, user_id, limit]
    return list(Room.objects.raw(_sql(vendor, room_id is not None), params))
