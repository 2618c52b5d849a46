"""parley.services: the writes. Concurrency tests use real threads, each with its own DB connection,
so they exercise the room row lock (PostgreSQL) and IMMEDIATE transactions (SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.utils import timezone

from parley import services
from parley.models import ApiToken, Membership, Message, Room
from parley.selectors import token_get_active, token_hash

PASSWORD = "correct-horse-battery"


def run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run target(i) in `count` threads started together; re-raise the first failure."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


# --- rooms and memberships --------------------------------------------------------------------

@pytest.mark.django_db
def test_room_create_with_owner_makes_owner_membership():
    ada = services.user_create(username="ada", password=PASSWORD)
    room = services.room_create(slug="dev", title="Dev", owner=ada, is_private=True)
    assert room.is_private and room.last_seq == 0 and len(room.epoch) == 32
    m = Membership.objects.get(room=room)
    assert (m.user, m.role) == (ada, Membership.Role.OWNER)


@pytest.mark.django_db
def test_rooms_get_distinct_epochs():
    a = services.room_create(slug="a", title="A")
    b = services.room_create(slug="b", title="B")
    assert a.epoch != b.epoch


@pytest.mark.django_db
@pytest.mark.parametrize(("slug", "title"), [("", "x"), ("Upper", "x"), ("sp ace", "x"), ("s" * 51, "x"),
                                             ("ok", ""), ("ok", "t" * 101)])
def test_room_create_validates(slug, title):
    with pytest.raises(ValidationError):
        services.room_create(slug=slug, title=title)
    assert not Room.objects.exists()


@pytest.mark.django_db
def test_room_create_duplicate_slug():
    services.room_create(slug="x", title="X")
    with pytest.raises(ValidationError):
        services.room_create(slug="x", title="Y")


@pytest.mark.django_db
def test_room_ensure_is_idempotent_and_never_changes_a_room():
    first = services.room_ensure(slug="lobby", title="Lobby")
    Room.objects.filter(pk=first.pk).update(title="Renamed", is_private=True)
    again = services.room_ensure(slug="lobby", title="Lobby")
    assert again.pk == first.pk and again.title == "Renamed" and again.is_private
    assert Room.objects.count() == 1


@pytest.mark.django_db
def test_membership_add_is_idempotent_and_remove_spares_the_owner():
    ada = services.user_create(username="ada", password=PASSWORD)
    bob = services.user_create(username="bob", password=PASSWORD)
    room = services.room_create(slug="p", title="P", owner=ada, is_private=True)
    services.membership_add(room=room, user=bob)
    services.membership_add(room=room, user=bob)
    assert Membership.objects.filter(room=room).count() == 2
    services.membership_remove(room=room, user=ada)  # the owner stays
    services.membership_remove(room=room, user=bob)
    assert list(Membership.objects.filter(room=room).values_list("user__username", flat=True)) == ["ada"]
    services.membership_remove(room=room, user=bob)  # removing twice is harmless


# --- messages ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_message_create_assigns_consecutive_seqs_per_room():
    ada = services.user_create(username="ada", password=PASSWORD)
    r1 = services.room_create(slug="r1", title="R1")
    r2 = services.room_create(slug="r2", title="R2")
    seqs = []
    for room in (r1, r2, r1, r1, r2):
        message, duplicate = services.message_create(room_id=room.pk, author=ada, text="t", client_id=None)
        assert duplicate is False
        seqs.append((room.slug, message.seq))
    assert seqs == [("r1", 1), ("r2", 1), ("r1", 2), ("r1", 3), ("r2", 2)]
    r1.refresh_from_db()
    r2.refresh_from_db()
    assert (r1.last_seq, r2.last_seq) == (3, 2)
    m = Message.objects.get(room=r1, seq=1)
    assert m.created_at is not None and m.client_id is None


@pytest.mark.django_db
def test_message_create_is_idempotent_per_author_and_room():
    ada = services.user_create(username="ada", password=PASSWORD)
    bob = services.user_create(username="bob", password=PASSWORD)
    r1 = services.room_create(slug="r1", title="R1")
    r2 = services.room_create(slug="r2", title="R2")
    m1, d1 = services.message_create(room_id=r1.pk, author=ada, text="one", client_id="c")
    m2, d2 = services.message_create(room_id=r1.pk, author=ada, text="changed", client_id="c")
    assert (d1, d2) == (False, True) and m1.pk == m2.pk and m2.text == "one"
    m3, d3 = services.message_create(room_id=r1.pk, author=bob, text="bob", client_id="c")
    m4, d4 = services.message_create(room_id=r2.pk, author=ada, text="other room", client_id="c")
    assert not d3 and not d4 and len({m1.pk, m3.pk, m4.pk}) == 3
    # no client_id: never de-duplicated
    services.message_create(room_id=r1.pk, author=ada, text="x", client_id=None)
    services.message_create(room_id=r1.pk, author=ada, text="x", client_id=None)
    assert Message.objects.filter(room=r1).count() == 4
    r1.refresh_from_db()
    assert r1.last_seq == 4  # the duplicate did not use up a seq


@pytest.mark.django_db(transaction=True)
def test_concurrent_distinct_sends_get_gapless_seqs():
    users = [services.user_create(username=f"u{i}", password=PASSWORD) for i in range(6)]
    room = services.room_create(slug="busy", title="Busy")
    per_thread = 15

    def send(i: int) -> list[int]:
        return [services.message_create(room_id=room.pk, author=users[i], text=f"{i}/{j}", client_id=f"{i}/{j}")[0].seq
                for j in range(per_thread)]

    results = run_threads(len(users), send)
    n = len(users) * per_thread
    assert sorted(s for r in results for s in r) == list(range(1, n + 1))
    for own in results:
        assert own == sorted(own)
    assert list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True)) == list(range(1, n + 1))
    room.refresh_from_db()
    assert room.last_seq == n


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_with_one_client_id_make_one_row():
    ada = services.user_create(username="ada", password=PASSWORD)
    room = services.room_create(slug="busy", title="Busy")
    for attempt in range(3):
        client_id = f"same-{attempt}"

        def send(i: int, client_id: str = client_id) -> tuple[int, int, bool]:
            message, duplicate = services.message_create(room_id=room.pk, author=ada, text="once", client_id=client_id)
            return message.pk, message.seq, duplicate

        results = run_threads(8, send)
        assert len({(pk, seq) for pk, seq, _ in results}) == 1, results
        assert sum(not dup for _, _, dup in results) == 1, results
        assert Message.objects.filter(room=room, client_id=client_id).count() == 1
    # seqs stay gapless even though the losers' transactions were rolled back
    assert list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True)) == [1, 2, 3]
    room.refresh_from_db()
    assert room.last_seq == 3


@pytest.mark.django_db(transaction=True)
def test_failed_insert_does_not_burn_a_seq(monkeypatch):
    ada = services.user_create(username="ada", password=PASSWORD)
    room = services.room_create(slug="r", title="R")
    original = Message.objects.create

    def boom(**kwargs: Any) -> Any:
        raise RuntimeError("insert failed")

    monkeypatch.setattr(Message.objects, "create", boom)
    with pytest.raises(RuntimeError):
        services.message_create(room_id=room.pk, author=ada, text="x", client_id="c")
    monkeypatch.setattr(Message.objects, "create", original)
    room.refresh_from_db()
    assert room.last_seq == 0
    message, duplicate = services.message_create(room_id=room.pk, author=ada, text="x", client_id="c")
    assert (message.seq, duplicate) == (1, False)


# --- message_create_batch (group commit) ------------------------------------------------------

@pytest.mark.django_db
def test_batch_numbers_each_room_consecutively_in_item_order():
    ada, bob = (services.user_create(username=n, password=PASSWORD) for n in ("ada", "bob"))
    r1, r2 = services.room_create(slug="one", title="One"), services.room_create(slug="two", title="Two")
    services.message_create(room_id=r2.pk, author=ada, text="earlier", client_id=None)
    items = [(ada, r1.pk, "a", "c1"), (bob, r2.pk, "b", None), (bob, r1.pk, "c", "c1"), (ada, r2.pk, "d", "c2")]
    results = services.message_create_batch(items=items)
    assert [(m.room_id, m.seq, m.text, dup) for m, dup in results] == [
        (r1.pk, 1, "a", False), (r2.pk, 2, "b", False), (r1.pk, 2, "c", False), (r2.pk, 3, "d", False),
    ]
    assert all(m.pk is not None and m.author.username in ("ada", "bob") for m, _ in results)
    stored = Message.objects.filter(room=r1).order_by("seq").values_list("seq", "text", "author__username")
    assert list(stored) == [(1, "a", "ada"), (2, "c", "bob")]
    r1.refresh_from_db()
    r2.refresh_from_db()
    assert (r1.last_seq, r2.last_seq) == (2, 3)


@pytest.mark.django_db
def test_batch_messages_are_the_stored_rows(monkeypatch):
    """The batch's INSERT is plain SQL (parley.storage.sqlite, in several statements when the
    database's parameter limit says so; parley.storage.postgres's one statement, the rows as
    arrays): each returned message must be its stored row field for field, id and awkward text
    included, and count as saved."""
    from django.db import connection

    monkeypatch.setattr(connection.features, "max_query_params", 6 * 4)  # four rows a statement
    users = [services.user_create(username=f"u{i}", password=PASSWORD) for i in range(3)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(3)]
    services.message_create(room_id=rooms[1].pk, author=users[0], text="before", client_id=None)
    awkward = ['say "hi"', "it's", "back\\slash", "{a,b}", "NULL", "comma, and ) paren", "tab\tnew\nline", "✓ ünï"]
    items = [(users[i % 3], rooms[i % 3].pk, f"m{i} {awkward[i % len(awkward)]}", f"c{i}" if i % 2 else None)
             for i in range(11)]
    results = services.message_create_batch(items=items)
    for message, duplicate in results:
        stored = Message.objects.get(pk=message.pk)
        assert not duplicate and not message._state.adding
        assert {f.attname: getattr(message, f.attname) for f in Message._meta.concrete_fields} == \
               {f.attname: getattr(stored, f.attname) for f in Message._meta.concrete_fields}
    assert len({m.pk for m, _ in results}) == 11 == Message.objects.count() - 1


@pytest.mark.django_db
def test_batch_returns_the_stored_message_for_a_retry_before_and_within_the_batch():
    ada = services.user_create(username="ada", password=PASSWORD)
    room = services.room_create(slug="r", title="R")
    first, _ = services.message_create(room_id=room.pk, author=ada, text="once", client_id="old")
    results = services.message_create_batch(items=[
        (ada, room.pk, "once", "old"), (ada, room.pk, "new", "n1"), (ada, room.pk, "new", "n1"),
    ])
    (m0, d0), (m1, d1), (m2, d2) = results
    assert (m0.pk, d0) == (first.pk, True)
    assert (m1.seq, d1) == (2, False) and (m2.pk, m2.seq, d2) == (m1.pk, 2, True)
    assert Message.objects.filter(room=room).count() == 2


@pytest.mark.django_db
def test_batch_refuses_rooms_the_author_may_not_use():
    owner, outsider = (services.user_create(username=n, password=PASSWORD) for n in ("owner", "outsider"))
    staff = services.user_create(username="staff", password=PASSWORD)
    staff.is_staff = True
    staff.save()
    secret = services.room_create(slug="secret", title="S", owner=owner, is_private=True)
    results = services.message_create_batch(items=[
        (outsider, secret.pk, "let me in", None), (owner, secret.pk, "hi", None),
        (staff, secret.pk, "moderating", None), (owner, 999_999, "nowhere", None),
    ])
    assert results[0] is None and results[3] is None
    assert [(m.seq, m.text) for m, _ in results[1:3]] == [(1, "hi"), (2, "moderating")]


@pytest.mark.django_db
def test_batch_uses_a_fixed_number_of_queries(django_assert_max_num_queries):
    users = [services.user_create(username=f"u{i}", password=PASSWORD) for i in range(20)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(2)]
    items = [(users[i], rooms[i % 2].pk, f"m{i}", f"c{i}") for i in range(20)]
    # savepoint, rooms, idempotency lookup, seq UPDATE (+ its read on SQLite), INSERT (+ the ids' read
    # on SQLite; one statement with the UPDATE on PostgreSQL), release: not per message
    with django_assert_max_num_queries(9):
        results = services.message_create_batch(items=items)
    assert sorted(m.seq for m, _ in results) == sorted(list(range(1, 11)) * 2)


@pytest.mark.django_db
def test_batch_skips_a_room_deleted_since_the_access_check(monkeypatch):
    """A room deleted between the batch's checks and its write: its sends get None (the room is
    gone, as for a refused author), the other rooms' sends are stored, on either database."""
    ada = services.user_create(username="ada", password=PASSWORD)
    kept, gone = services.room_create(slug="kept", title="K"), services.room_create(slug="gone", title="G")
    checks = services.message_send_checks

    def checked_then_deleted(*, pairs, keys, tokens=(), archived=None):
        answer = checks(pairs=pairs, keys=keys, tokens=tokens, archived=archived)
        Room.objects.filter(pk=gone.pk).delete()
        return answer

    monkeypatch.setattr(services, "message_send_checks", checked_then_deleted)
    results = services.message_create_batch(items=[
        (ada, gone.pk, "lost", "g1"), (ada, kept.pk, "one", "k1"), (ada, gone.pk, "lost", None), (ada, kept.pk, "two", None),
    ])
    assert results[0] is None and results[2] is None
    assert [(m.seq, m.text, dup) for m, dup in results[1::2]] == [(1, "one", False), (2, "two", False)]
    assert list(Message.objects.values_list("room_id", "seq")) == [(kept.pk, 1), (kept.pk, 2)]


@pytest.mark.django_db(transaction=True)
def test_postgresql_batch_is_one_write_statement_and_no_transaction(monkeypatch):
    """On PostgreSQL in autocommit (the database thread's state) a batch is its two reads and
    one write statement: no BEGIN, no COMMIT, whatever the batch's size."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite's batch is an IMMEDIATE transaction, in process")
    import psycopg
    from django.test.utils import CaptureQueriesContext

    users = [services.user_create(username=f"u{i}", password=PASSWORD) for i in range(30)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(3)]
    items = [(users[i], rooms[i % 3].pk, f"m{i}", f"c{i}") for i in range(30)]
    commits = []
    commit = psycopg.Connection.commit

    def counting(self, *args, **kwargs):
        commits.append(1)
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "commit", counting)
    assert connection.get_autocommit() and not connection.in_atomic_block
    with CaptureQueriesContext(connection) as queries:
        results = services.message_create_batch(items=items)
    *reads, write = [q["sql"] for q in queries.captured_queries]
    assert len(reads) == 2 and not any("INSERT" in sql or "UPDATE" in sql for sql in reads)
    assert "UPDATE" in write and "INSERT INTO" in write
    assert commits == []
    assert sorted((m.room_id, m.seq) for m, _ in results) == sorted((r.pk, s) for r in rooms for s in range(1, 11))
    assert Message.objects.count() == 30 and not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_batch_that_races_a_committed_retry_falls_back_and_reports_the_duplicate(monkeypatch):
    """Another process commits a retry of one of the batch's client_ids after the batch looked it
    up: the bulk INSERT hits the unique constraint, and the batch is redone item by item."""
    ada = services.user_create(username="ada", password=PASSWORD)
    room = services.room_create(slug="r", title="R")
    theirs, _ = services.message_create(room_id=room.pk, author=ada, text="raced", client_id="dup")
    checks = services.message_send_checks
    # the idempotency lookup ran too early: it saw no stored send
    monkeypatch.setattr(services, "message_send_checks",
                        lambda *, pairs, keys, tokens=(), archived=None: (checks(pairs=pairs, keys=[])[0], {}, set()))
    results = services.message_create_batch(items=[(ada, room.pk, "mine", "c1"), (ada, room.pk, "raced", "dup")])
    monkeypatch.setattr(services, "message_send_checks", checks)
    (mine, mine_dup), (raced, raced_dup) = results
    assert (mine.seq, mine_dup) == (2, False)
    assert (raced.pk, raced.seq, raced_dup) == (theirs.pk, 1, True)
    assert list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True)) == [1, 2]
    room.refresh_from_db()
    assert room.last_seq == 2  # the rolled-back batch burned no seq


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_over_the_same_rooms_get_disjoint_gapless_seqs():
    users = [services.user_create(username=f"u{i}", password=PASSWORD) for i in range(6)]
    rooms = [services.room_create(slug=f"r{i}", title="R") for i in range(3)]

    def send(i: int) -> list[tuple[int, int]]:
        out = []
        for j in range(10):
            # each thread walks the rooms in its own order: no deadlock, because rooms lock in id order
            order = rooms if i % 2 else rooms[::-1]
            items = [(users[i], r.pk, f"{i}/{j}", f"{i}/{j}/{r.pk}") for r in order]
            out += [(m.room_id, m.seq) for m, _ in services.message_create_batch(items=items)]
        return out

    results = run_threads(len(users), send)
    for room in rooms:
        seqs = sorted(seq for r in results for room_id, seq in r if room_id == room.pk)
        assert seqs == list(range(1, 61))
        assert list(Message.objects.filter(room=room).order_by("seq").values_list("seq", flat=True)) == seqs


def test_database_serialises_writers():
    """The seq lock needs IMMEDIATE transactions on SQLite; PostgreSQL locks the room row."""
    assert connection.vendor in ("sqlite", "postgresql")
    if connection.vendor == "sqlite":
        assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


# --- users and tokens -------------------------------------------------------------------------

@pytest.mark.django_db
def test_user_create():
    with_password = services.user_create(username="ada", password=PASSWORD)
    assert with_password.check_password(PASSWORD)
    without = services.user_create(username="bot")
    assert not without.has_usable_password()
    with pytest.raises(ValidationError):
        services.user_create(username="bad name!")
    with pytest.raises(ValidationError):
        services.user_create(username="ada")


@pytest.mark.django_db
def test_token_create_stores_only_a_hash():
    ada = services.user_create(username="ada", password=PASSWORD)
    token, raw = services.token_create(user=ada, name="laptop")
    assert raw.startswith("prl_") and len(raw) > 40
    assert token.key_hash == token_hash(raw) and raw not in token.key_hash
    assert token.prefix == raw[:10] and token.name == "laptop"
    assert token_get_active(raw=raw).pk == token.pk
    _, raw2 = services.token_create(user=ada)
    assert raw2 != raw


@pytest.mark.django_db(transaction=True)
def test_token_revoke():
    ada = services.user_create(username="ada", password=PASSWORD)
    token, raw = services.token_create(user=ada)
    services.token_revoke(token=token)
    first = ApiToken.objects.get(pk=token.pk).revoked_at
    assert first is not None
    assert token_get_active(raw=raw) is None
    services.token_revoke(token=token)  # idempotent: the first revocation time stays
    assert ApiToken.objects.get(pk=token.pk).revoked_at == first


@pytest.mark.django_db
def test_token_touch_writes_at_most_once_a_minute():
    ada = services.user_create(username="ada", password=PASSWORD)
    token, _ = services.token_create(user=ada)
    services.token_touch(token=token)
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    services.token_touch(token=token)
    token.refresh_from_db()
    assert token.last_used_at == first
    old = timezone.now() - timedelta(seconds=services.TOKEN_LAST_USED_RESOLUTION_SECS + 5)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    token.refresh_from_db()
    services.token_touch(token=token)
    token.refresh_from_db()
    assert token.last_used_at > old
