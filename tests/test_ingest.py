"""parley.ingest: group commit of concurrent sends."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError, IntegrityError

from parley import ingest, services
from parley.models import Message
from tests.conftest import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_concurrent_sends_share_transactions_and_get_consecutive_seqs(monkeypatch):
    room, user = await make_room("lobby"), await make_user("ada")
    batches = []
    original = services.message_create_batch

    def counting(*, items, **kwargs):
        batches.append(len(items))
        return original(items=items, **kwargs)

    monkeypatch.setattr(services, "message_create_batch", counting)
    writer = ingest.MessageWriter()
    results = await asyncio.gather(*(
        writer.submit(user=user, room_id=room.pk, text=f"m{i}", client_id=f"c{i}") for i in range(50)
    ))
    assert sorted(message.seq for message, _ in results) == list(range(1, 51))
    assert sum(batches) == 50 and len(batches) < 50  # they piled up and shared transactions
    batches.clear()
    message, duplicate = await writer.submit(user=user, room_id=room.pk, text="alone", client_id=None)
    assert batches == [1] and message.seq == 51 and not duplicate  # idle: straight through


async def test_one_failing_item_does_not_spoil_its_batch(monkeypatch):
    """On the item-by-item path (taken when the batch hits a constraint), each item has its own
    savepoint: one item's error is reported to its sender alone."""
    room, user = await make_room("lobby"), await make_user("ada")
    original = services.message_create

    def conflict(items, tokens, replies):
        raise IntegrityError("a retry of one of these client_ids committed elsewhere")

    def flaky(*, room_id, author, text, client_id, reply_to=None):
        if text == "bad":
            raise DatabaseError("disk says no")
        return original(room_id=room_id, author=author, text=text, client_id=client_id, reply_to=reply_to)

    monkeypatch.setattr(services, "_messages_create_together", conflict)
    monkeypatch.setattr(services, "message_create", flaky)
    writer = ingest.MessageWriter()
    results = await asyncio.gather(
        *(writer.submit(user=user, room_id=room.pk, text=t, client_id=None) for t in ("a", "bad", "b", "c")),
        return_exceptions=True,
    )
    assert isinstance(results[1], DatabaseError)
    assert [r[0].text for i, r in enumerate(results) if i != 1] == ["a", "b", "c"]
    assert await database_sync_to_async(Message.objects.count)() == 3


async def test_a_failed_commit_fails_every_send_in_it(monkeypatch):
    room, user = await make_room("lobby"), await make_user("ada")

    def broken(*, items, **kwargs):
        raise DatabaseError("commit failed")

    monkeypatch.setattr(services, "message_create_batch", broken)
    writer = ingest.MessageWriter()
    results = await asyncio.gather(
        *(writer.submit(user=user, room_id=room.pk, text=f"m{i}", client_id=None) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, DatabaseError) for r in results)


async def test_lost_access_is_reported_per_item():
    owner, outsider = await make_user("owner"), await make_user("outsider")
    room = await make_room("secret", owner=owner, private=True)
    writer = ingest.MessageWriter()
    mine, theirs = await asyncio.gather(
        writer.submit(user=owner, room_id=room.pk, text="hi", client_id=None),
        writer.submit(user=outsider, room_id=room.pk, text="let me in", client_id=None),
    )
    assert mine[0].seq == 1 and theirs is None
