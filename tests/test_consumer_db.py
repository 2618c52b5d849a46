"""parley.consumer_db and parley.realtime.dbthread: the consumer's database calls run on the database thread,
one at a time, and leave the socket task's context untouched."""

from __future__ import annotations

import contextvars

import pytest
from channels.db import database_sync_to_async

from parley import consumer_db as db
from parley import selectors
from tests.conftest import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def context_now() -> dict[contextvars.ContextVar, object]:
    return dict(contextvars.copy_context())


async def test_a_database_call_leaves_the_callers_context_as_it_was():
    ada, room = await make_user("ada"), await make_room("lobby")
    before = context_now()
    assert await db.can_access(ada, room.pk)
    after = context_now()
    assert after.keys() == before.keys() and all(after[var] is before[var] for var in before)


async def test_why_plain_database_sync_to_async_is_not_used_for_them():
    """asgiref writes the thread's context back into the caller's (re-homing every asgiref
    Local's storage): kept in each open socket's task context, that was ~0.6 KB a socket. One
    of the reasons db_call uses parley.realtime.dbthread instead (the other: its per-call cost)."""
    ada, room = await make_user("ada"), await make_room("lobby")
    before = context_now()
    assert await database_sync_to_async(selectors.room_user_can_access)(user=ada, room_id=room.pk)
    after = context_now()
    assert after.keys() != before.keys() or any(after[var] is not before[var] for var in before)


def test_joins_read_together_answer_each_join_as_alone(django_assert_num_queries):
    """join_snapshots (what joins that reach the database thread together share): one room
    query, one for the messages of every resuming join — ten members resuming a room share its
    rows — each distinct page read once, and every join gets what join_snapshots gives it alone."""
    from parley import services
    from parley.protocol import Join

    users = [services.user_create(username=f"u{i}", password="correct-horse-battery") for i in range(10)]
    outsider = services.user_create(username="outsider", password="correct-horse-battery")
    lobby = services.room_create(slug="lobby", title="Lobby")
    secret = services.room_create(slug="secret", title="Secret", owner=users[0], is_private=True)
    for i in range(1, 8):
        services.message_create(room_id=lobby.pk, author=users[0], text=f"m{i}", client_id=None)
    services.message_create(room_id=secret.pk, author=users[0], text="s1", client_id=None)
    resume = Join(room="lobby", after_seq=4, epoch=lobby.epoch, limit=50)
    items = [(u, resume) for u in users]
    items += [(users[1], Join(room="lobby", after_seq=4, epoch="another-log", limit=3)),  # not recovered: page
              (users[0], Join(room="secret", after_seq=None, epoch=None, limit=50)),
              (outsider, Join(room="secret", after_seq=None, epoch=None, limit=50)),
              (users[2], Join(room="nope", after_seq=None, epoch=None, limit=50))]
    # rooms; whether the users still hold; the private room's memberships; every resume's
    # messages; the lobby page; the secret page
    with django_assert_num_queries(6):
        together = db.join_snapshots(items)
    alone = [db.join_snapshots([item])[0] for item in items]

    def plain(snapshot):
        if snapshot is None:
            return None
        room, messages, *rest = snapshot
        return (room.pk, [(m.seq, m.text, m.author.username) for m in messages], *rest)

    assert [plain(s) for s in together] == [plain(s) for s in alone]
    assert plain(together[0]) == (lobby.pk, [(5, "m5", "u0"), (6, "m6", "u0"), (7, "m7", "u0")], True, True, 7, 7, {})
    assert all(a is b for s in together[:10] for a, b in zip(s[1], together[0][1], strict=True))  # rows shared
    assert plain(together[10]) == (lobby.pk, [(5, "m5", "u0"), (6, "m6", "u0"), (7, "m7", "u0")], True, False, 7, 7, {})
    assert plain(together[11])[1] == [(1, "s1", "u0")]
    assert together[12] is None and together[13] is None
