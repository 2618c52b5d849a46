"""Reads. Every function is `<entity>_<action>(*, keyword args)` and touches no state."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Q

from parley.conf import parley_settings
from parley.models import SLUG_RE, ApiToken, Membership, Message, Reaction, Room, RoomState
from parley.payloads import ReaderReactions, quote_missing, reply_quote, room_notify
from parley.storage import db, unread
from parley.storage.reads import ARCHIVED_FLAG, DM_FLAG, PRIVATE_FLAG

# ("user", id) or ("token", ApiToken id): what a socket's right to stay open rests on (parley.realtime.hub).
Credential = tuple[str, int]


def room_visible_q(*, user: Any) -> Q:
    """Rooms a user may see: every public room, and private rooms they are a member of.

    Staff see every room but direct conversations (DMs) they are not in: they manage the members
    of private rooms; a DM is its members' only (docs/protocol.md §12).
    """
    member_rooms = Membership.objects.filter(user_id=user.pk).values("room_id")
    if _sees_all(user):
        # Except direct conversations: private by construction, to their members only.
        return ~Q(kind=Room.Kind.DM) | Q(pk__in=member_rooms)
    return Q(is_private=False) | Q(pk__in=member_rooms)


def room_get_visible(*, user: Any, slug: str) -> Room | None:
    """The room `slug` if this user may see it (private rooms are invisible to non-members)."""
    return rooms_get_visible(wanted=[(user, slug)])[0]


def rooms_get_visible_checked(
    *, wanted: list[tuple[Any, str]], credentials: Iterable[Credential],
) -> tuple[list[Room | None], set[Credential]]:
    """rooms_get_visible, and which of `credentials` no longer hold (credentials_lost)."""
    return _rooms_visible(wanted, credentials)


def rooms_get_visible(*, wanted: list[tuple[Any, str]]) -> list[Room | None]:
    """room_get_visible for each (user, slug) of `wanted`, in one query for the rooms (plain SQL:
    every join runs it, parley.storage.rows says why) and, only when some of them are private rooms
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
    by_slug = {r.slug: r for r in db().rooms_by_slug(slugs)} if slugs else {}
    lost = credentials_lost(credentials=(c for c in credentials if c[1] is not None))
    found = [(user, by_slug.get(slug)) for user, slug in wanted]
    allowed = _accessible(pairs=[(user, r.pk) for user, r in found if r is not None],
                          flags={r.pk: _flags(r) for r in by_slug.values()})
    return [r if r is not None and (user.pk, r.pk) in allowed else None for user, r in found], lost


def room_list_visible(*, user: Any, after: str | None = None, limit: int | None = None) -> list[Room]:
    """The rooms the user may see by slug: those after the slug `after`, at most `limit`."""
    rooms = Room.objects.filter(room_visible_q(user=user)).order_by("slug")
    if after is not None:
        rooms = rooms.filter(slug__gt=after)
    return list(rooms if limit is None else rooms[:limit])


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
    return db().credentials_lost(users, tokens)


def _credential_ids(credentials: Iterable[Credential]) -> tuple[list[int], list[int]]:
    users: set[int] = set()
    tokens: set[int] = set()
    for kind, ident in credentials:
        (users if kind == "user" else tokens).add(ident)
    return sorted(users), sorted(tokens)


def message_send_checks(
    *, pairs: list[tuple[Any, int]], keys: list[tuple[int, int, str]], tokens: Iterable[int | None] = (),
    archived: set[int] | None = None,
) -> tuple[set[tuple[int, int]], dict[tuple[int, int, str], Message], set[Credential]]:
    """What an ingest batch checks before it writes (parley.services), whatever the batch's size:

    - the (user id, room id) pairs of `pairs` whose user may use the room (the batch form of
      room_user_can_access: the rule of room_visible_q, applied in Python by _accessible);
    - the stored messages by (room id, author id, client_id), for the keys of `keys` that are
      retries of a stored send;
    - the credentials that no longer hold (credentials_lost): the users of `pairs` that are
      inactive or deleted, the API tokens of `tokens` (the senders' sockets') revoked or
      deleted. Their sends must not be stored, and their sockets close (4401).

    The rooms' privacy and the lost credentials are one statement (the storage module's
    access_facts): checking the credentials on every batch costs no query of its own. The
    idempotency lookup is a second, only when some sends have a client_id; a third runs only
    for private rooms of users who do not see all (their memberships), a fourth only when some
    keys are retries (their full rows).

    `archived`, if given, receives the ids of the pairs' rooms that are archived (read-only:
    their sends are refused with room_archived), from the same statement.
    """
    room_ids = list({room_id for _, room_id in pairs})
    users = sorted({user.pk for user, _ in pairs if user.pk is not None})
    token_ids = sorted({t for t in tokens if t is not None})
    flags: dict[int, int] = {}
    lost: set[Credential] = set()
    if room_ids or users or token_ids:
        flags, lost = db().access_facts(room_ids, users, token_ids)
    if archived is not None:
        archived.update(room_id for room_id, f in flags.items() if f & ARCHIVED_FLAG)
    allowed = _accessible(pairs=pairs, flags=flags) if room_ids else set()
    wanted = list(set(keys))
    existing = _client_id_hits(db().client_id_hits(wanted)) if wanted else {}
    return allowed, existing, lost


def _flags(room: Room) -> int:
    """A loaded room's flags, as the access-facts statement computes them (parley.storage.reads)."""
    return ((PRIVATE_FLAG if room.is_private else 0) | (ARCHIVED_FLAG if room.archived_at is not None else 0)
            | (DM_FLAG if room.kind == Room.Kind.DM else 0))


def _accessible(*, pairs: list[tuple[Any, int]], flags: dict[int, int]) -> set[tuple[int, int]]:
    """room_visible_q's rule in Python, for rooms whose flags are known: public rooms to all,
    private ones to staff and members, DMs to members only (one query for the memberships, if
    any is needed)."""
    private = {room_id for room_id, f in flags.items() if f & PRIVATE_FLAG}
    dms = {room_id for room_id, f in flags.items() if f & DM_FLAG}
    plain_users = {user.pk for user, room_id in pairs
                   if room_id in private and (not _sees_all(user) or room_id in dms)}
    members = set(
        Membership.objects.filter(room_id__in=private, user_id__in=plain_users).values_list("user_id", "room_id")
    ) if plain_users else set()
    allowed = set()
    for user, room_id in pairs:
        if room_id not in flags:
            continue
        if (room_id not in private or (_sees_all(user) and room_id not in dms)
                or (user.pk, room_id) in members):
            allowed.add((user.pk, room_id))
    return allowed


def _sees_all(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))


def sees_all(user: Any) -> bool:
    """Staff and superusers see (and moderate) every room."""
    return _sees_all(user)


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
    """The newest `limit` messages (`message` entries, each in its current state) with
    seq < before (all if None), ascending, and whether older exist."""
    newest_first = _messages(room_id=room_id, after_seq=None, before=before, limit=limit + 1, newest_first=True,
                             messages_only=True)
    has_more = len(newest_first) > limit
    return _with_quotes(newest_first[:limit][::-1]), has_more


def message_range(*, room_id: int, after_seq: int, limit: int, before: int | None = None) -> list[Message]:
    """Log entries (every kind) with after_seq < seq (< before), ascending, at most `limit`."""
    return _with_quotes(_messages(room_id=room_id, after_seq=after_seq, before=before, limit=limit,
                                  newest_first=False))


def messages_in_ranges(*, ranges: list[tuple[int, int, int]]) -> list[list[Message]]:
    """For each (room id, after_seq, up_to) the room's log entries with after_seq < seq <= up_to,
    ascending, authors loaded: one query for all of them (the resuming joins of a batch,
    parley.consumer_db), each row built once however many ranges include it."""
    if not ranges:
        return []
    by_room = db().messages_in_ranges(list(dict.fromkeys(ranges)))
    _with_quotes([m for entries in by_room.values() for m in entries])
    return [[m for m in by_room.get(room_id, ()) if after < m.seq <= up_to] for room_id, after, up_to in ranges]


def _messages(*, room_id: int, after_seq: int | None, before: int | None, limit: int,
              newest_first: bool, messages_only: bool = False) -> list[Message]:
    """Log entries of a room by seq, each with its author loaded (select_related, as plain SQL:
    every join and resume reads one of these; parley.storage.rows says why)."""
    return db().messages(room_id=room_id, after_seq=after_seq, before=before, limit=limit, newest_first=newest_first,
                         messages_only=messages_only)


def _with_quotes(entries: list[Message]) -> list[Message]:
    """Attach to each reply among `entries` the quote of its target as it is now (`reply_quote`,
    parley.payloads): one query for all the targets, none when no entry is a reply."""
    wanted: dict[int, set[int]] = {}
    for m in entries:
        if m.target_seq is not None and m.kind == Message.Kind.MESSAGE:
            wanted.setdefault(m.room_id, set()).add(m.target_seq)
    if not wanted:
        return entries
    where = Q()
    for room_id, seqs in wanted.items():
        where |= Q(room_id=room_id, seq__in=sorted(seqs))
    targets = {(t.room_id, t.seq): t for t in
               Message.objects.filter(where, kind=Message.Kind.MESSAGE).select_related("author")}
    for m in entries:
        if m.target_seq is not None and m.kind == Message.Kind.MESSAGE:
            target = targets.get((m.room_id, m.target_seq))
            m.reply_quote = reply_quote(target) if target is not None else quote_missing(m.target_seq)
    return entries


def with_quotes(messages: list[Message]) -> list[Message]:
    """The messages, each reply's quote attached (as pages have them): one query for all."""
    return _with_quotes(messages)


def with_quote(message: Message) -> Message:
    """The message, its reply quote attached (as pages have it)."""
    return _with_quotes([message])[0]


def reactions_mine(*, user_id: int, messages: Iterable[Message]) -> ReaderReactions:
    """What this reader put on these messages (a page's `me`), by message id: one query, none
    when no message of the page has reactions."""
    ids = [m.pk for m in messages if m.reactions]
    mine: ReaderReactions = {}
    if ids:
        for message_id, emoji in Reaction.objects.filter(message_id__in=ids, user_id=user_id).values_list(
                "message_id", "emoji"):
            mine.setdefault(message_id, set()).add(emoji)
    return mine


def reactions_of(*, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], set[str]]:
    """For (user id, message id) pairs, the emoji each user put on each message (pairs with none
    absent): one query for a batch of joins' readers (parley.consumer_db)."""
    users = {u for u, _ in pairs}
    messages = {m for _, m in pairs}
    found: dict[tuple[int, int], set[str]] = {}
    for user_id, message_id, emoji in Reaction.objects.filter(user_id__in=users, message_id__in=messages).values_list(
            "user_id", "message_id", "emoji"):
        if (user_id, message_id) in pairs:
            found.setdefault((user_id, message_id), set()).add(emoji)
    return found


def message_get(*, room_id: int, seq: int) -> Message | None:
    """The `message` entry with this seq in the room (any other kind, or none: None), its author
    loaded and its quote attached."""
    found = Message.objects.filter(room_id=room_id, seq=seq, kind=Message.Kind.MESSAGE).select_related("author").first()
    return _with_quotes([found])[0] if found is not None else None


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
    return {(m.room_id, m.author_id, m.client_id): m
            for m in Message.objects.filter(pk__in=hits).select_related("author")}


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_get_active(*, raw: str) -> ApiToken | None:
    """The live token for this secret (not revoked, active user), with its user loaded, or None."""
    return tokens_get_active(raws=[raw])[0]


def tokens_get_active(*, raws: list[str]) -> list[ApiToken | None]:
    """token_get_active for each secret of `raws`, in one query: a reconnect storm's handshakes
    reach the database thread together and are answered together (parley.realtime.dbthread.Batched).

    Plain SQL (parley.storage.rows): every bearer-token handshake runs it.
    """
    hashes = [token_hash(raw) for raw in raws]
    found = db().tokens_by_hash(list(dict.fromkeys(hashes)))
    return [found.get(h) for h in hashes]


# --- Attention (docs/protocol.md §11) ---------------------------------------------------------

# (room, the user's RoomState or None, (unread, mentions) capped at PARLEY_UNREAD_COUNT_MAX)
RoomStateRow = tuple[Room, RoomState | None, tuple[int, int]]


def room_state_list(*, user: Any) -> list[RoomStateRow]:
    """The user's room list: every private room and DM they are a member of, and every public
    room whose RoomState they have with `listed`; by slug, at most PARLEY_MAX_ROOMS_LISTED. One
    statement for the whole list, counts included (parley.storage.unread)."""
    rooms = unread.room_states(user_id=user.pk, cap=int(parley_settings.UNREAD_COUNT_MAX),
                               limit=int(parley_settings.MAX_ROOMS_LISTED))
    rooms_with_dm_members(rooms=rooms)  # a DM's room object lists its members (one query)
    return [_state_row(user, room) for room in rooms]


def room_state_get(*, user: Any, room: Room) -> RoomStateRow:
    """The user's state of one room and its counts (one statement); the caller checked access."""
    found = unread.room_states(user_id=user.pk, cap=int(parley_settings.UNREAD_COUNT_MAX), room_id=room.pk)
    row = found[0] if found else room
    rooms_with_dm_members(rooms=[row])
    return _state_row(user, row)


def _state_row(user: Any, room: Room) -> RoomStateRow:
    state = None
    if getattr(room, "state_id", None) is not None:
        state = RoomState(pk=room.state_id, user_id=user.pk, room_id=room.pk, last_read_seq=room.state_last_read_seq,
                          notify=room.state_notify, muted=bool(room.state_muted), listed=bool(room.state_listed))
    return room, state, (int(getattr(room, "unread_count", 0) or 0), int(getattr(room, "mention_count", 0) or 0))


def notification_recipients(*, message: Message, room: Room) -> list[tuple[Any, str]]:
    """Who is told of a new message through parley.signals.notification, and why: (user,
    reason) for each active user other than its author who is in the room and whose setting
    allows it, not muted. Reasons, strongest first: "mention" (named in it), "room_mention"
    (@room, to the room's members, or a public room's listed users) and "dm" (every other member
    of a DM). "nothing" allows none, "mentions" the first two, "all" every one."""
    reasons: dict[int, str] = {}
    members: set[int] | None = None
    if room.is_private or room.kind == Room.Kind.DM:
        members = set(Membership.objects.filter(room_id=room.pk).values_list("user_id", flat=True))
    if room.kind == Room.Kind.DM and members is not None:
        reasons.update(dict.fromkeys(members, "dm"))
    if message.mention_room:
        everyone = members if members is not None else set(
            RoomState.objects.filter(room_id=room.pk, listed=True).values_list("user_id", flat=True))
        reasons.update(dict.fromkeys(everyone, "room_mention"))
    for mentioned in message.mentions or ():
        reasons[mentioned["id"]] = "mention"
    reasons.pop(message.author_id, None)
    if members is not None:  # a private room's mentions name members; one removed since is out
        reasons = {u: r for u, r in reasons.items() if u in members}
    if not reasons:
        return []
    states = {s.user_id: s for s in RoomState.objects.filter(room_id=room.pk, user_id__in=reasons)}
    users = get_user_model()._default_manager.filter(pk__in=reasons, is_active=True).order_by("pk")
    found = []
    for u in users:
        state, reason = states.get(u.pk), reasons[u.pk]
        if state is not None and state.muted:
            continue
        notify = room_notify(room, state)
        if notify == RoomState.Notify.ALL or (notify == RoomState.Notify.MENTIONS and reason != "dm"):
            found.append((u, reason))
    return found


# --- rooms, members and direct conversations (docs/protocol.md §12) --------------------------

def room_user_can_moderate(*, room: Room, user: Any) -> bool:
    """Owners, moderators and staff may delete anyone's message in a room (docs/protocol.md §12).
    A DM has no moderator: staff are not in it unless they are a member, and a member may
    delete only their own messages there."""
    if _sees_all(user) and room.kind != Room.Kind.DM:
        return True
    return Membership.objects.filter(room=room, user_id=user.pk,
                                     role__in=[Membership.Role.OWNER, Membership.Role.MODERATOR]).exists()


def membership_get(*, room: Room, user: Any) -> Membership | None:
    return Membership.objects.filter(room=room, user_id=user.pk).first()


def room_audience_ids(*, room: Room) -> list[int]:
    """Who hears of a change to the room object (room_updated): a private room's or DM's
    members; a public room's users who have it in their list (a RoomState row, listed)."""
    if room.is_private:
        return list(Membership.objects.filter(room=room).values_list("user_id", flat=True))
    return list(RoomState.objects.filter(room=room, listed=True).values_list("user_id", flat=True))


def rooms_with_dm_members(*, rooms: list[Room]) -> list[Room]:
    """Attach to each DM among `rooms` its members (`dm_members`, users ordered by username), which
    its room object lists: one query for all of them, none without a DM."""
    dms = {r.pk: r for r in rooms if r.kind == Room.Kind.DM}
    if dms:
        by_name = f"user__{get_user_model().USERNAME_FIELD}"
        for r in dms.values():
            r.dm_members = []
        for m in Membership.objects.filter(room_id__in=dms).select_related("user").order_by(by_name):
            dms[m.room_id].dm_members.append(m.user)
    return rooms


def dm_find(*, slug: str) -> Room | None:
    return Room.objects.filter(slug=slug, kind=Room.Kind.DM).first()


def users_search(*, prefix: str, limit: int) -> list[Any]:
    """Active users whose username (USERNAME_FIELD), first or last name starts with `prefix`
    (case-insensitive), by username, at most `limit`: what a people picker offers
    (docs/protocol.md §12 says what it reveals)."""
    User = get_user_model()
    field = User.USERNAME_FIELD
    names = {f.name for f in User._meta.get_fields()}
    where = Q(**{f"{field}__istartswith": prefix})
    for extra in ("first_name", "last_name"):
        if extra in names:
            where |= Q(**{f"{extra}__istartswith": prefix})
    active = {"is_active": True} if "is_active" in names else {}
    return list(User._default_manager.filter(where, **active).order_by(field)[:limit])
