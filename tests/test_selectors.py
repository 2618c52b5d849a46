"""parley.selectors: the reads (visibility, paging, ranges, tokens)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from parley import selectors, services

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"


@pytest.fixture
def world():
    ada = services.user_create(username="ada", password=PASSWORD)
    bob = services.user_create(username="bob", password=PASSWORD)
    root = get_user_model().objects.create_superuser("root", "r@example.com", PASSWORD)
    lobby = services.room_create(slug="lobby", title="Lobby")
    secret = services.room_create(slug="secret", title="Secret", owner=ada, is_private=True)
    return ada, bob, root, lobby, secret


def test_visibility(world):
    ada, bob, root, lobby, secret = world
    assert [r.slug for r in selectors.room_list_visible(user=ada)] == ["lobby", "secret"]
    assert [r.slug for r in selectors.room_list_visible(user=bob)] == ["lobby"]
    assert [r.slug for r in selectors.room_list_visible(user=root)] == ["lobby", "secret"]
    assert selectors.room_get_visible(user=bob, slug="secret") is None
    assert selectors.room_get_visible(user=ada, slug="secret") == secret
    assert selectors.room_get_visible(user=bob, slug="lobby") == lobby
    assert selectors.room_get_visible(user=bob, slug="nope") is None
    assert selectors.room_user_can_access(user=bob, room_id=lobby.pk)
    assert not selectors.room_user_can_access(user=bob, room_id=secret.pk)
    assert not selectors.room_user_can_access(user=bob, room_id=secret.pk + 1000)
    services.membership_add(room=secret, user=bob)
    assert selectors.room_user_can_access(user=bob, room_id=secret.pk)
    assert [r.slug for r in selectors.room_list_visible(user=bob)] == ["lobby", "secret"]
    services.membership_remove(room=secret, user=bob)
    assert not selectors.room_user_can_access(user=bob, room_id=secret.pk)


def test_rooms_get_visible_is_room_get_visible_for_each_pair(world, django_assert_num_queries):
    """The batch form of room_get_visible (every join goes through it, parley.consumer_db):
    the same answer for each (user, slug) as asking alone, members, staff and anonymous
    users included, and no membership query while no private room is involved."""
    from django.contrib.auth.models import AnonymousUser

    ada, bob, root, lobby, secret = world
    carol = services.user_create(username="carol", password=PASSWORD)
    services.membership_add(room=secret, user=carol)
    anon = AnonymousUser()
    wanted = [(u, slug) for u in (ada, bob, root, carol, anon) for slug in ("secret", "lobby", "nope", "bad slug!")]
    expected = {(id(u), slug): (secret if slug == "secret" and u in (ada, root, carol) else lobby if slug == "lobby" else None)
                for u, slug in wanted}
    assert selectors.rooms_get_visible(wanted=wanted) == [expected[(id(u), slug)] for u, slug in wanted]
    assert [selectors.room_get_visible(user=u, slug=slug) for u, slug in wanted] == [expected[(id(u), s)] for u, s in wanted]
    with django_assert_num_queries(1):
        assert selectors.rooms_get_visible(wanted=[(bob, "lobby"), (ada, "lobby"), (anon, "lobby")]) == [lobby] * 3
    with django_assert_num_queries(2):
        assert selectors.rooms_get_visible(wanted=[(bob, "secret"), (carol, "secret")]) == [None, secret]
    with django_assert_num_queries(0):
        assert selectors.rooms_get_visible(wanted=[(bob, "bad slug!")]) == [None]


def test_message_page_and_range(world):
    ada, _, _, lobby, secret = world
    for i in range(1, 26):
        services.message_create(room_id=lobby.pk, author=ada, text=f"m{i}", client_id=None)
    services.message_create(room_id=secret.pk, author=ada, text="elsewhere", client_id=None)

    page, more = selectors.message_page(room_id=lobby.pk, before=None, limit=10)
    assert [m.seq for m in page] == list(range(16, 26)) and more
    page, more = selectors.message_page(room_id=lobby.pk, before=16, limit=10)
    assert [m.seq for m in page] == list(range(6, 16)) and more
    page, more = selectors.message_page(room_id=lobby.pk, before=6, limit=10)
    assert [m.seq for m in page] == [1, 2, 3, 4, 5] and not more
    page, more = selectors.message_page(room_id=lobby.pk, before=11, limit=10)
    assert [m.seq for m in page] == list(range(1, 11)) and not more  # exactly a page: no more
    page, more = selectors.message_page(room_id=lobby.pk, before=None, limit=100)
    assert len(page) == 25 and not more
    assert page[0].author.username == "ada"  # author loaded

    assert [m.seq for m in selectors.message_range(room_id=lobby.pk, after_seq=20, limit=100)] == [21, 22, 23, 24, 25]
    assert [m.seq for m in selectors.message_range(room_id=lobby.pk, after_seq=0, limit=3)] == [1, 2, 3]
    assert [m.seq for m in selectors.message_range(room_id=lobby.pk, after_seq=5, limit=100, before=9)] == [6, 7, 8]
    assert selectors.message_range(room_id=lobby.pk, after_seq=25, limit=10) == []

    ranges = [(lobby.pk, 20, 25), (secret.pk, 0, 1), (lobby.pk, 3, 6), (lobby.pk, 22, 23), (lobby.pk, 25, 25),
              (lobby.pk, 20, 25)]
    found = selectors.messages_in_ranges(ranges=ranges)
    assert [[m.seq for m in read] for read in found] == [[21, 22, 23, 24, 25], [1], [4, 5, 6], [23], [], [21, 22, 23, 24, 25]]
    assert found[1][0].text == "elsewhere" and found[0][0].author.username == "ada"
    assert found[3][0] is found[0][2]  # a row inside two ranges is built once
    assert selectors.messages_in_ranges(ranges=[]) == []


def test_message_get_by_client_id(world):
    ada, bob, _, lobby, _ = world
    message, _ = services.message_create(room_id=lobby.pk, author=ada, text="x", client_id="c1")
    assert selectors.message_get_by_client_id(room_id=lobby.pk, author_id=ada.pk, client_id="c1") == message
    assert selectors.message_get_by_client_id(room_id=lobby.pk, author_id=bob.pk, client_id="c1") is None
    assert selectors.message_get_by_client_id(room_id=lobby.pk, author_id=ada.pk, client_id="c2") is None


def test_token_get_active(world):
    ada, bob, *_ = world
    token, raw = services.token_create(user=ada)
    assert selectors.token_get_active(raw=raw) == token
    assert selectors.token_get_active(raw=raw + "x") is None
    assert selectors.token_get_active(raw="") is None
    ada.is_active = False
    ada.save()
    assert selectors.token_get_active(raw=raw) is None
    _, raw_bob = services.token_create(user=bob)
    services.token_revoke(token=selectors.token_get_active(raw=raw_bob))
    assert selectors.token_get_active(raw=raw_bob) is None


def test_tokens_get_active_answers_many_secrets_in_one_query(world, django_assert_num_queries):
    """The batch form a reconnect storm's handshakes share: one result per secret, in order,
    duplicates and unknown or revoked secrets included."""
    ada, bob, *_ = world
    token_a, raw_a = services.token_create(user=ada)
    token_b, raw_b = services.token_create(user=bob)
    revoked, raw_r = services.token_create(user=bob)
    services.token_revoke(token=revoked)
    with django_assert_num_queries(1):
        found = selectors.tokens_get_active(raws=[raw_b, raw_a + "x", raw_a, raw_r, raw_b])
    assert found == [token_b, None, token_a, None, token_b]
    assert found[0].user == bob and found[2].user == ada


def test_token_hash_is_sha256_hex():
    digest = selectors.token_hash("prl_x")
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == selectors.token_hash("prl_x") != selectors.token_hash("prl_y")


def test_message_send_checks_finds_exact_client_id_keys_only(world):
    """Keys over several rooms and authors: a stored (room, author, client_id) is found; a
    combination of one key's room with another's author or client_id is not."""
    ada, bob, _root, lobby, secret = world
    m1, _ = services.message_create(room_id=lobby.pk, author=ada, text="a", client_id="c1")
    m2, _ = services.message_create(room_id=secret.pk, author=bob, text="b", client_id="c2")
    services.message_create(room_id=lobby.pk, author=bob, text="c", client_id="c2")  # a cross-combination
    _, found, _ = selectors.message_send_checks(pairs=[], keys=[
        (lobby.pk, ada.pk, "c1"), (secret.pk, bob.pk, "c2"), (secret.pk, ada.pk, "c1"), (lobby.pk, ada.pk, "new"),
    ])
    assert found == {(lobby.pk, ada.pk, "c1"): m1, (secret.pk, bob.pk, "c2"): m2}
    assert found[(lobby.pk, ada.pk, "c1")].author.username == "ada"  # full rows, author loaded
    assert selectors.message_send_checks(pairs=[], keys=[]) == (set(), {}, set())


def test_message_send_checks_access_is_room_user_can_access_for_each_pair(world, django_assert_num_queries):
    """The batch's access check is the rule written twice (room_visible_q as a query,
    _accessible in Python): the same answer for every user and room as the query form, and the
    first queries of both checks counted as the queries they are, pipelined or not."""
    ada, bob, root, lobby, secret = world
    carol = services.user_create(username="carol", password=PASSWORD)
    services.membership_add(room=secret, user=carol)
    pairs = [(u, room_id) for u in (ada, bob, root, carol) for room_id in (lobby.pk, secret.pk, secret.pk + 1000)]
    allowed, existing, lost = selectors.message_send_checks(pairs=pairs, keys=[(lobby.pk, ada.pk, "none")])
    assert lost == set()
    assert existing == {}
    assert allowed == {(u.pk, room_id) for u, room_id in pairs
                       if selectors.room_user_can_access(user=u, room_id=room_id)}
    assert (bob.pk, secret.pk) not in allowed and (carol.pk, secret.pk) in allowed
    with django_assert_num_queries(2):  # rooms + idempotency; no membership query for public rooms
        allowed, _, _ = selectors.message_send_checks(pairs=[(bob, lobby.pk)], keys=[(lobby.pk, bob.pk, "c")])
    assert allowed == {(bob.pk, lobby.pk)}


def _fields(instance):
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_plain_sql_reads_build_what_the_orm_builds(world):
    """token_get_active, room_get_visible and the message reads skip the ORM's compiler
    (parley.storage.reads); the instances they build must equal the ORM's field for field: types,
    converted values (datetimes aware, booleans), and the related user loaded."""
    from parley.models import ApiToken, Message, Room

    ada, _, _, lobby, secret = world
    token, raw = services.token_create(user=ada)
    services.token_touch(token=token)  # a non-null datetime besides created_at
    services.message_create(room_id=lobby.pk, author=ada, text="héllo ✓", client_id="c1")
    services.message_create(room_id=lobby.pk, author=ada, text="two", client_id=None)
    # What a JSON array must carry back unchanged on SQLite (parley.storage.rows.select): quotes,
    # backslashes, control characters, astral and line-separator characters.
    services.message_create(room_id=lobby.pk, author=ada, text='q"b\\n\n\t\x01 😀 \u2028 end', client_id=None)

    fast = selectors.token_get_active(raw=raw)
    orm = ApiToken.objects.select_related("user").get(pk=token.pk)
    assert _fields(fast) == _fields(orm) and _fields(fast.user) == _fields(orm.user)
    assert type(fast.created_at) is type(orm.created_at) and fast.created_at.tzinfo is not None
    assert fast._state.adding is False and fast._state.db == orm._state.db

    for room in (lobby, secret):
        assert _fields(selectors.room_get_visible(user=ada, slug=room.slug)) == _fields(Room.objects.get(pk=room.pk))

    orm_messages = list(Message.objects.filter(room=lobby).select_related("author").order_by("seq"))
    for read in (selectors.message_range(room_id=lobby.pk, after_seq=0, limit=10),
                 selectors.message_page(room_id=lobby.pk, before=None, limit=10)[0]):
        assert [_fields(m) for m in read] == [_fields(m) for m in orm_messages]
        assert [_fields(m.author) for m in read] == [_fields(m.author) for m in orm_messages]
    assert selectors.room_get_visible(user=ada, slug="secret").is_private is True
    assert orm_messages[-1].text == 'q"b\\n\n\t\x01 😀 \u2028 end'


def test_sqlite_reads_come_back_as_one_json_row_and_others_as_rows():
    """parley.storage.rows.select: on SQLite one row holding a JSON array (one GIL hand-back per
    query instead of one per row); elsewhere the plain SELECT."""
    from django.db import connection

    from parley.models import Room
    from parley.storage.rows import cols, select

    query = select([cols(Room, "r")], "FROM parley_room r")
    assert query.json_rows is (connection.vendor == "sqlite")
    assert query.sql.startswith("SELECT json_group_array(" if connection.vendor == "sqlite" else "SELECT ")
