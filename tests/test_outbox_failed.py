"""parley_client never drops a send silently (docs/protocol.md §12, docs/client-python.md):
against a real server subprocess, a send that cannot succeed — its room archived, the user
removed while sends were still queued — fails with its text (SendFailed, a `send_failed`
event, `failed_sends`), and every text the application sent is either acked or reported."""

from __future__ import annotations  # noqa: I001  (tests.support must come before parley_client)

import asyncio
from typing import Any

import pytest

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from parley_client import SendFailed
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import Collector, closing_db, fast_client, make_user_token, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@closing_db
def make_private_room(slug: str, owner: str, members: list[str]) -> None:
    from django.contrib.auth import get_user_model

    from parley import services

    users = get_user_model().objects
    room = services.room_create(slug=slug, title=slug.title(), owner=users.get(username=owner), is_private=True)
    for name in members:
        services.membership_add(room=room, user=users.get(username=name))


async def test_a_send_to_an_archived_room_fails_with_its_text_and_can_be_retried(servers: Any) -> None:
    server = servers()
    ada, ada_token = await make_user_token("ada")
    bob, bob_token = await make_user_token("bob")
    await make_private_room("team", ada, [bob])
    client = fast_client(server.ws_url, bob_token)
    async with client:
        events = Collector(client)
        await client.join("team")
        await asyncio.to_thread(server.api, "PATCH", "/api/rooms/team", ada_token, {"archived": True})
        with pytest.raises(SendFailed) as failed:
            await client.send("team", "keep me", client_id="k-1")
        assert (failed.value.code, failed.value.text, failed.value.room) == ("room_archived", "keep me", "team")
        assert [f.client_id for f in client.failed_sends] == ["k-1"]
        await wait_for(lambda: any(e["type"] == "send_failed" for e in events.events), 5, "send_failed")
        event = next(e for e in events.events if e["type"] == "send_failed")
        assert (event["text"], event["code"], event["client_id"]) == ("keep me", "room_archived", "k-1")
        # The room was archived live: the client heard it.
        await wait_for(lambda: any(e["type"] == "room_updated" for e in events.events), 5, "room_updated")
        await asyncio.to_thread(server.api, "PATCH", "/api/rooms/team", ada_token, {"archived": False})
        ack = await client.retry_failed("k-1")
        assert ack["type"] == "ack" and ack["client_id"] == "k-1" and client.failed_sends == []
        await events.stop()


async def test_sends_queued_when_the_user_is_removed_are_failed_not_lost(servers: Any) -> None:
    # One message a second: most of the burst below is still in the outbox when bob is removed.
    server = servers(extra_env={"PARLEY_MESSAGES_PER_SEC": "1", "PARLEY_MESSAGES_BURST": "1"})
    ada, ada_token = await make_user_token("ada")
    bob, bob_token = await make_user_token("bob")
    await make_private_room("team", ada, [bob])
    client = fast_client(server.ws_url, bob_token)
    async with client:
        events = Collector(client)
        await client.join("team")
        texts = [f"note {i}" for i in range(8)]
        sends = [asyncio.ensure_future(client.send("team", t, client_id=f"n-{i}")) for i, t in enumerate(texts)]
        await wait_for(lambda: sends[0].done(), 5, "the first ack")
        await asyncio.to_thread(server.api, "DELETE", "/api/rooms/team/members/bob", ada_token)
        results = await asyncio.gather(*sends, return_exceptions=True)
        acked = [t for t, r in zip(texts, results, strict=True) if isinstance(r, dict)]
        failed = [r for r in results if isinstance(r, SendFailed)]
        # Each text is either stored (acked) or failed with its text: none vanished.
        assert sorted(acked + [f.text for f in failed]) == sorted(texts)
        assert failed and all(f.room == "team" for f in failed)
        assert {f.code for f in failed} <= {"room_removed", "room_not_found"}
        assert sorted(f.text for f in client.failed_sends) == sorted(f.text for f in failed)
        await wait_for(lambda: len([e for e in events.events if e["type"] == "send_failed"]) == len(failed),
                       5, "a send_failed event per failed send")
        await wait_for(lambda: any(e["type"] == "room_removed" for e in events.events), 5, "room_removed")
        assert client.room("team") is None
        # Discarding is the application's choice, one by one.
        for f in failed:
            assert client.discard_failed(f.client_id) is f
        assert client.failed_sends == []
        await events.stop()
