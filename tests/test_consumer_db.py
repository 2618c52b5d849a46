"""chat.consumer_db and chat.dbthread: the consumer's database calls run on the database thread,
one at a time, and leave the socket task's context untouched."""

from __future__ import annotations

import contextvars

import pytest
from channels.db import database_sync_to_async

from chat import consumer_db as db
from chat import selectors
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
    of the reasons db_call uses chat.dbthread instead (the other: its per-call cost)."""
    ada, room = await make_user("ada"), await make_room("lobby")
    before = context_now()
    assert await database_sync_to_async(selectors.room_user_can_access)(user=ada, room_id=room.pk)
    after = context_now()
    assert after.keys() != before.keys() or any(after[var] is not before[var] for var in before)
