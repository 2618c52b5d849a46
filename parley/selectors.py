"""Reads. Every function is `<entity>_<action>(*, keyword args)` and touches no state."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q

from parley.models import SLUG_RE, ApiToken, Membership, Message, Room
from parley.rowsql import Select, cols, fetch, fetch_together, qn, select, select_exprs

# ("user", id) or ("token", ApiToken id): what a socket's right to stay open rests on (parley.realtime.hub).
Credential = tuple[str, int]


def room_visible_q(*, user: Any) -> Q:
    """Rooms a user may see: every public room, and private rooms they are a member of.

    Staff see every room: they can read all of it in the Django admin anyway, and they manage
    the members of private rooms.
    """
    if _sees_all(user):
        return Q()
    member_rooms = Membership.objects.filter(user_id=user.pk).values("room_id")
    return Q(is_private=False) | Q(pk__in=member_rooms)


def room_get_visible(*, user: Any, slug: str) -> Room | None:
    """The room `slug` if this user may see it (private rooms are invisible to non-members)."""
    return rooms_get_visible(wanted=[(user, slug)])[0]


def rooms_get_visible_checked(
    *, wanted: list[tuple[Any, str]], credentials: Iterable[Credential],
) -> tuple[list[Room | None], set[Credential]]:
    """rooms_get_visible, and which of `credentials` no longer hold (credentials_lost): the
    rooms' query and the credentials' leave in one round trip (rowsql.fetch_together)."""
    return _rooms_visible(wanted, credentials)


def rooms_get_visible(*, wanted: list[tuple[Any, str]]) -> list[Room | None]:
    """room_get_visible for each (user, slug) of `wanted`, in one query for the rooms (plain SQL:
    every join runs it, parley.rowsql says why) and, only when some of them are private rooms
    of users who do not see all, one for those users' memberships. The joins of a reconnect
    storm reach the database thread together and are answered together (parley.consumer_db).

    The visibility rule is message_send_checks's (_accessible), the Python form of room_visible_q;
    tests/test_selectors.py's test_visibility checks the two against the same rooms.
    """
    return _rooms_visible(wanted, ())[0]


def _rooms_visible(wanted: list[tuple[Any, str]],
                   credentials: Iterable[Credential]) -> tuple[list[Room | None], set[Credential]]:
    slugs = list(dict.fromkeys(slug for _, slug in wanted if SLUG_RE.match(slug)))
    # (A slug that cannot exist is never sent: PostgreSQL refuses some such strings, NUL, outright.)
    users, tokens = _credential_ids(c for c in credentials if c[1] is not None)
    queries: list[tuple[Select, list[Any]]] = []
    if slugs:
        queries.append((_rooms_by_slug_sql(connection.vendor, len(slugs)), slugs))
    if users or tokens:
        queries.append(_credentials_lost_query(users, tokens))
    rows = fetch_together(queries)
    by_slug: dict[str, Room] = {}
    if slugs:
        room = cols(Room, "r")
        for row in rows[0]:
            r = room.build(row)
            by_slug[r.slug] = r
    lost = _lost(rows[-1]) if users or tokens else set()
    found = [(user, by_slug.get(slug)) for user, slug in wanted]
    allowed = _accessible(pairs=[(user, r.pk) for user, r in found if r is not None],
                          is_private={r.pk: r.is_private for r in by_slug.values()})
    return [r if r is not None and (user.pk, r.pk) in allowed else None for user, r in found], lost


@functools.cache
def _rooms_by_slug_sql(vendor: str, n: int) -> Select:
    return select([cols(Room, "r")], f"FROM {qn(Room._meta.db_table)} {qn('r')} "
                                      f"WHERE {_c('r', Room, 'slug')} IN ({', '.join(['%s'] * n)})")


def room_list_visible(*, user: Any) -> list[Room]:
    return list(Room.objects.filter(room_visible_q(user=user)).order_by("slug"))


def room_user_can_access(*, user: Any, room_id: int) -> bool:
    """Checked on every command, not only at join: membership can be revoked mid-session."""
    return Room.objects.filter(room_visible_q(user=user), pk=room_id).exists()


def room_user_can_use(*, user: Any, room_id: int, token_id: int | None) -> tuple[bool, set[Credential]]:
    """What a socket's command (history, typing) checks: (whether the user may use the room,
    the socket's credentials that no longer hold). One query, as room_user_can_access is; a
    second only for a private room of a user who does not see all (the membership)."""
    allowed, _, lost = message_send_checks(pairs=[(user, room_id)], keys=[], tokens=[token_id])
    return (user.pk, room_id) in allowed, lost


def credentials_lost(*, credentials: Iterable[Credential]) -> set[Credential]:
    """Which of these credentials — ("user", id), ("token", id) — no longer hold: the user is
    inactive or deleted, the API token revoked or deleted. One query however many there are
    (parley.revocation asks for every socket of the process at once), and its rows are only the
    lost ones: usually none."""
    users, tokens = _credential_ids(credentials)
    if not users and not tokens:
        return set()
    query, params = _credentials_lost_query(users, tokens)
    return _lost(fetch(query, params))


def _credential_ids(credentials: Iterable[Credential]) -> tuple[list[int], list[int]]:
    users: set[int] = set()
    tokens: set[int] = set()
    for kind, ident in credentials:
        (users if kind == "user" else tokens).add(ident)
    return sorted(users), sorted(tokens)


def _lost(rows: Iterable[Sequence[Any]]) -> set[Credential]:
    return {(_CREDENTIAL_KINDS[kind], int(ident)) for kind, ident, *_ in rows if kind in _CREDENTIAL_KINDS}


# The rows of the access-facts query (_access_facts_sql): 0 a room's privacy, 1 a lost user,
# 2 a lost token.
_ROOM_ROW, _USER_ROW, _TOKEN_ROW = 0, 1, 2
_CREDENTIAL_KINDS = {_USER_ROW: "user", _TOKEN_ROW: "token"}


def _credentials_lost_query(users: list[int], tokens: list[int]) -> tuple[Select, list[Any]]:
    return _access_facts_sql(connection.vendor, None), _id_list_params(users) + _id_list_params(tokens)


def _id_list_params(ids: list[int]) -> list[Any]:
    """One parameter for a whole list of ids: an array on PostgreSQL, a JSON array on SQLite
    (json_each): one statement text whatever the number of ids."""
    return [ids] if connection.vendor == "postgresql" else [orjson.dumps(ids).decode()]


@functools.lru_cache(maxsize=512)
def _access_facts_sql(vendor: str, rooms: int | None) -> Select:
    """The rows (kind, id, flag): each room's privacy (kind 0; without rooms=None), then each
    user of the list that is inactive or gone (kind 1) and each API token that is revoked or
    gone (kind 2). The credential lists are one parameter each (_id_list_params) and probe
    the primary keys: a missing row is a lost credential too."""
    User = get_user_model()
    v, x = qn("v"), qn("x")
    if vendor == "postgresql":
        ids, value, false = f"unnest(%s::bigint[]) AS {v} ({x})", f"{v}.{x}", "false"
    else:
        ids, value, false = f"json_each(%s) AS {v}", f"{v}.{qn('value')}", "0"

    def lost(kind: int, model: Any, alias: str, gone: str) -> str:
        a, pk = qn(alias), _c(alias, model, model._meta.pk.name)  # a host's user pk may not be "id"
        return (f"SELECT {kind}, {value}, {false} FROM {ids} LEFT JOIN {qn(model._meta.db_table)} {a} ON {pk} = {value} "
                f"WHERE {pk} IS NULL OR {gone}")

    users = lost(_USER_ROW, User, "u", f"NOT {_c('u', User, 'is_active')}")
    tokens = lost(_TOKEN_ROW, ApiToken, "t", f"{_c('t', ApiToken, 'revoked_at')} IS NOT NULL")
    credentials = f"{users} UNION ALL {tokens}"
    if rooms is None:
        return Select(credentials, False)
    where = "= ANY(%s::bigint[])" if vendor == "postgresql" else f"IN ({', '.join(['%s'] * rooms)})"
    return select_exprs([str(_ROOM_ROW), qn("id"), qn("is_private")],
                        f"FROM {qn(Room._meta.db_table)} WHERE {qn('id')} {where} UNION ALL {credentials}")


def message_send_checks(
    *, pairs: list[tuple[Any, int]], keys: list[tuple[int, int, str]], tokens: Iterable[int | None] = (),
) -> tuple[set[tuple[int, int]], dict[tuple[int, int, str], Message], set[Credential]]:
    """What an ingest batch checks before it writes (parley.services), whatever the batch's size:

    - the (user id, room id) pairs of `pairs` whose user may use the room (the batch form of
      room_user_can_access: the rule of room_visible_q, applied in Python by _accessible);
    - the stored messages by (room id, author id, client_id), for the keys of `keys` that are
      retries of a stored send;
    - the credentials that no longer hold (credentials_lost): the users of `pairs` that are
      inactive or deleted, the API tokens of `tokens` (the senders' sockets') revoked or
      deleted. Their sends must not be stored, and their sockets close (4401).

    The rooms' privacy and the lost credentials are one statement (_access_facts_sql), which
    leaves with the idempotency lookup in one round trip (rowsql.fetch_together): checking the
    credentials on every batch costs no query of its own. A third runs only for private rooms
    of users who do not see all (their memberships), a fourth only when some keys are retries
    (their full rows).
    """
    room_ids = list({room_id for _, room_id in pairs})
    users = sorted({user.pk for user, _ in pairs if user.pk is not None})
    token_ids = sorted({t for t in tokens if t is not None})
    queries: list[tuple[Select, list[Any]]] = []
    if room_ids or users or token_ids:
        queries.append(_access_facts_query(room_ids, users, token_ids))
    wanted = set(keys)
    if wanted:
        queries.append(_client_id_query(wanted))
    rows = fetch_together(queries)
    facts = rows[0] if queries and (room_ids or users or token_ids) else []
    lost = _lost(facts)
    is_private = {room_id: bool(p) for kind, room_id, p in facts if kind == _ROOM_ROW}
    allowed = _accessible(pairs=pairs, is_private=is_private) if room_ids else set()
    existing = _client_id_hits([pk for (pk,) in rows[-1]]) if wanted else {}
    return allowed, existing, lost


def _access_facts_query(room_ids: list[int], users: list[int], tokens: list[int]) -> tuple[Select, list[Any]]:
    """The rooms' privacy and the lost credentials (_access_facts_sql), in every ingest batch:
    on PostgreSQL with the ids as arrays (one statement text for every batch size), on SQLite
    as one JSON row (parley.rowsql)."""
    if connection.vendor == "postgresql":
        return _access_facts_sql(connection.vendor, 0), [room_ids, users, tokens]
    return (_access_facts_sql(connection.vendor, len(room_ids)),
            [*room_ids, *_id_list_params(users), *_id_list_params(tokens)])


def _client_id_query(wanted: set[tuple[int, int, str]]) -> tuple[Select, list[Any]]:
    """The idempotency lookup's light query and its params: the ids of the stored messages
    whose keys are among `wanted` (the retries; usually none).

    It asks for exactly the keys, as a join with them, which the (room, author, client_id)
    unique index answers with one probe each (SQLite plans `(room, author, client_id) IN
    (VALUES …)` as a scan of the whole index). History: it first asked for every room × author
    × client_id of the batch (~1 M probes for a full batch of 256 sends, 9 ms on SQLite), then,
    room by room, for that room's authors and client_ids. On PostgreSQL that form's plan
    depends on the table's statistics: while the table grows faster than autovacuum analyzes
    it (a benchmark's, a busy server's) it ANDs the room and author indexes and reads every
    stored row of the batch's authors in their rooms, 7.3 ms for 50 keys against 80,000
    messages and growing with the history; 0.74 ms after an ANALYZE. The join: 0.25 ms, either
    way (`python -m bench.pg_batch`, docs/benchmarks.md).
    """
    keys = list(wanted)
    if connection.vendor == "postgresql":  # the keys as three arrays: one text for every batch size
        params: list[Any] = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
        return _client_id_sql(connection.vendor, 0), params
    return _client_id_sql(connection.vendor, len(keys)), [v for key in keys for v in key]


@functools.cache
def _client_id_sql(vendor: str, n: int) -> Select:
    k, m = qn("k"), qn("m")
    names = ("room_id", "author_id", "client_id")
    columns = ", ".join(qn(c) for c in names)
    on = " AND ".join(f"{m}.{qn(c)} = {k}.{qn(c)}" for c in names)

    def joined(keys: str) -> str:
        return f"SELECT {m}.{qn('id')} FROM {keys} INNER JOIN {qn(Message._meta.db_table)} {m} ON {on}"

    if vendor == "postgresql":
        return Select(joined(f"unnest(%s::bigint[], %s::bigint[], %s::text[]) AS {k} ({columns})"), False)
    # SQLite names a VALUES list's columns only in a WITH.
    return Select(f"WITH {k} ({columns}) AS (VALUES {', '.join(['(%s, %s, %s)'] * n)}) {joined(k)}", False)


def _accessible(*, pairs: list[tuple[Any, int]], is_private: dict[int, bool]) -> set[tuple[int, int]]:
    """room_visible_q's rule in Python, for rooms whose privacy is known: public rooms to all,
    private ones to staff and members (one query for the memberships, if any is needed)."""
    private = {room_id for room_id, p in is_private.items() if p}
    plain_users = {user.pk for user, room_id in pairs if room_id in private and not _sees_all(user)}
    members = set(
        Membership.objects.filter(room_id__in=private, user_id__in=plain_users).values_list("user_id", "room_id")
    ) if plain_users else set()
    allowed = set()
    for user, room_id in pairs:
        if room_id not in is_private:
            continue
        if not is_private[room_id] or _sees_all(user) or (user.pk, room_id) in members:
            allowed.add((user.pk, room_id))
    return allowed


def _sees_all(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))


def room_user_can_manage(*, room: Room, user: Any) -> bool:
    """Owners and staff manage a room's members."""
    if _sees_all(user):
        return True
    return Membership.objects.filter(room=room, user_id=user.pk, role=Membership.Role.OWNER).exists()


def membership_list(*, room: Room) -> list[Membership]:
    by_name = f"user__{get_user_model().USERNAME_FIELD}"
    return list(Membership.objects.filter(room=room).select_related("user").order_by(by_name))


def user_get_by_username(*, username: str) -> Any:
    """The user whose USERNAME_FIELD is `username` (the project's own user model: a host may log
    in by email), or None. What the API and the payloads call "username" is get_username()."""
    if "\x00" in username:  # no database stores it; PostgreSQL refuses the query outright
        return None
    User = get_user_model()
    return User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()


def token_list(*, user: Any) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user_id=user.pk).order_by("-created_at"))


def message_page(*, room_id: int, before: int | None, limit: int) -> tuple[list[Message], bool]:
    """The newest `limit` messages with seq < before (all if None), ascending, and whether older exist."""
    newest_first = _messages(room_id=room_id, after_seq=None, before=before, limit=limit + 1, newest_first=True)
    has_more = len(newest_first) > limit
    return newest_first[:limit][::-1], has_more


def message_range(*, room_id: int, after_seq: int, limit: int, before: int | None = None) -> list[Message]:
    """Messages with after_seq < seq (< before), ascending, at most `limit`."""
    return _messages(room_id=room_id, after_seq=after_seq, before=before, limit=limit, newest_first=False)


def messages_in_ranges(*, ranges: list[tuple[int, int, int]]) -> list[list[Message]]:
    """For each (room id, after_seq, up_to) the room's messages with after_seq < seq <= up_to,
    ascending, authors loaded: one query for all of them (the resuming joins of a batch,
    parley.consumer_db), each row built once however many ranges include it."""
    if not ranges:
        return []
    unique = list(dict.fromkeys(ranges))
    message, author = cols(Message, "m"), cols(get_user_model(), "u")
    by_room: dict[int, list[Message]] = {}
    for row in fetch(_ranges_sql(connection.vendor, len(unique)), [v for r in unique for v in r]):
        m = message.build_with(row, "author", author)
        by_room.setdefault(m.room_id, []).append(m)  # type: ignore[attr-defined]
    for messages in by_room.values():
        messages.sort(key=_by_seq)
    return [[m for m in by_room.get(room_id, ()) if after < m.seq <= up_to] for room_id, after, up_to in ranges]


@functools.cache
def _ranges_sql(vendor: str, n: int) -> Select:
    room, seq = _c("m", Message, "room"), _c("m", Message, "seq")
    return _messages_select(" OR ".join([f"({room} = %s AND {seq} > %s AND {seq} <= %s)"] * n))


def _messages(*, room_id: int, after_seq: int | None, before: int | None, limit: int,
              newest_first: bool) -> list[Message]:
    """Messages of a room by seq, each with its author loaded (select_related, as plain SQL:
    every join and resume reads one of these; parley.rowsql says why)."""
    params: list[Any] = [room_id]
    if after_seq is not None:
        params.append(after_seq)
    if before is not None:
        params.append(before)
    params.append(limit)
    query = _messages_sql(connection.vendor, after_seq is not None, before is not None, newest_first)
    message, author = cols(Message, "m"), cols(get_user_model(), "u")
    messages = [message.build_with(row, "author", author) for row in fetch(query, params)]
    messages.sort(key=_by_seq, reverse=newest_first)  # (a JSON aggregate has no order of its own)
    return messages


def _by_seq(message: Message) -> int:
    return message.seq


@functools.cache
def _messages_sql(vendor: str, after: bool, before: bool, newest_first: bool) -> Select:
    seq = _c("m", Message, "seq")
    return _messages_select(
        f"{_c('m', Message, 'room')} = %s"
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
        f"INNER JOIN {qn(User._meta.db_table)} {qn('u')} ON {_c('u', User, User._meta.pk.name)} = {_c('m', Message, 'author')} "
        f"WHERE {where}",
    )


def _c(alias: str, model: Any, field: str) -> str:
    """alias.column of a model's field, quoted."""
    return f"{qn(alias)}.{qn(model._meta.get_field(field).column)}"


def message_get_by_client_id(*, room_id: int, author_id: int, client_id: str) -> Message | None:
    return (
        Message.objects.filter(room_id=room_id, author_id=author_id, client_id=client_id)
        .select_related("author")
        .first()
    )


def _client_id_hits(hits: list[int]) -> dict[tuple[int, int, str], Message]:
    """The light query's hits as full rows, by key (a second query, only when some are retries)."""
    if not hits:
        return {}
    return {(m.room_id, m.author_id, m.client_id): m  # type: ignore[misc]
            for m in Message.objects.filter(pk__in=hits).select_related("author")}


def _col(name: str) -> str:
    return connection.ops.quote_name(name)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_get_active(*, raw: str) -> ApiToken | None:
    """The live token for this secret (not revoked, active user), with its user loaded, or None."""
    return tokens_get_active(raws=[raw])[0]


def tokens_get_active(*, raws: list[str]) -> list[ApiToken | None]:
    """token_get_active for each secret of `raws`, in one query: a reconnect storm's handshakes
    reach the database thread together and are answered together (parley.realtime.dbthread.Batched).

    Plain SQL (parley.rowsql): every bearer-token handshake runs it.
    """
    hashes = [token_hash(raw) for raw in raws]
    unique = list(dict.fromkeys(hashes))
    token, user = cols(ApiToken, "t"), cols(get_user_model(), "u")
    found = {}
    for row in fetch(_token_sql(connection.vendor, len(unique)), [*unique, True]):
        t = token.build_with(row, "user", user)
        found[t.key_hash] = t
    return [found.get(h) for h in hashes]


@functools.cache
def _token_sql(vendor: str, n: int) -> Select:
    """Built once per vendor and number of secrets (at most parley.ws_auth's batch size)."""
    User = get_user_model()
    return select(
        [cols(ApiToken, "t"), cols(User, "u")],
        f"FROM {qn(ApiToken._meta.db_table)} {qn('t')} "
        f"INNER JOIN {qn(User._meta.db_table)} {qn('u')} ON {_c('u', User, User._meta.pk.name)} = {_c('t', ApiToken, 'user')} "
        f"WHERE {_c('t', ApiToken, 'key_hash')} IN ({', '.join(['%s'] * n)}) "
        f"AND {_c('t', ApiToken, 'revoked_at')} IS NULL AND {_c('u', User, 'is_active')} = %s",
    )

