"""The largest frame a client must accept (docs/protocol.md §1): no joined/history reply and no
HTTP messages page exceeds it, whatever the texts hold. PARLEY_REPLY_MAX_BYTES bounds the
messages as encoded — JSON escapes make U+0001 six bytes — not their UTF-8 text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from parley import protocol
from tests.conftest import make_room, make_token, make_user

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


@database_sync_to_async
def bulk_messages(slug: str, authors: list[Any], per_author: int, text: Any) -> None:
    """Messages straight through the ORM (as if the authors had sent them), `text(i)` each."""
    from django.db import transaction
    from django.utils import timezone

    from parley.models import Message, Room

    with transaction.atomic():
        room = Room.objects.select_for_update().get(slug=slug)
        now, seq, rows = timezone.now(), room.last_seq, []
        for _ in range(per_author):
            for author in authors:
                seq += 1
                rows.append(Message(room=room, seq=seq, author=author, text=text(seq),
                                    client_id=f"c-{seq:08d}-0000-0000-0000-000000000000", created_at=now))
        Message.objects.bulk_create(rows)
        Room.objects.filter(pk=room.pk).update(last_seq=seq)


async def raw_request(client: Any, frame: dict[str, Any], timeout: float = 10) -> tuple[dict[str, Any], int]:
    """The reply to `frame` and its size on the wire (UTF-8 bytes of the text frame)."""
    await client.send({**frame, "ref": "raw"})
    while True:
        out = await client.ws.receive_output(timeout)
        assert out["type"] == "websocket.send", out
        reply = json.loads(out["text"])
        if reply.get("ref") == "raw":
            return reply, len(out["text"].encode())


def test_the_largest_server_frame_is_one_mebibyte_by_default():
    assert protocol.max_server_frame_bytes() == MIB  # websockets' default max_size


async def test_frames_full_of_escaped_characters_stay_within_the_largest_frame(connect):
    """Ten users post 100 messages of 4,000 characters that JSON-escape badly (U+0001 is six
    bytes) or are four bytes each (emoji): a default join, a full history page and an HTTP page
    were 2.3-4.6 MiB; each must now be at most 1 MiB, and paging still reaches every message."""
    await make_room("lobby")
    authors = [await make_user(f"user{i}") for i in range(10)]
    await bulk_messages("lobby", authors, 10,
                        lambda seq: ("\x01" if seq % 2 else "😀\x01") * (4000 if seq % 2 else 2000))
    reader = await connect(await make_user("reader"))
    joined, size = await raw_request(reader, {"type": "join", "room": "lobby"})
    assert joined["type"] == "joined" and size <= MIB, size
    assert joined["has_more"] is True and joined["messages"][-1]["seq"] == 100
    seen = [m["seq"] for m in joined["messages"]]
    while True:  # page back to the first message, every page within the bound
        page, size = await raw_request(reader, {"type": "history", "room": "lobby", "before": seen[0], "limit": 100})
        assert page["type"] == "history" and size <= MIB, size
        seen[:0] = [m["seq"] for m in page["messages"]]
        if not page["has_more"]:
            break
    assert seen == list(range(1, 101))

    token = await make_token(reader.user)
    http = HttpClient(headers={"Authorization": f"Bearer {token}"})
    response = await database_sync_to_async(http.get)("/api/rooms/lobby/messages?limit=100")
    assert response.status_code == 200 and len(response.content) <= MIB, len(response.content)
    body = json.loads(response.content)
    assert body["has_more"] is True and body["messages"][-1]["seq"] == 100
    assert body["messages"][-1]["text"] == joined["messages"][-1]["text"]  # the same page, unescaped


async def test_a_full_resume_window_of_ordinary_messages_is_recovered(connect):
    """1,000 missed messages with 400,000 bytes of text (400 characters each, typical fields):
    protocol.md §5 promises a recovered resume, in one frame of at most 1 MiB."""
    room = await make_room("lobby")
    authors = [await make_user(f"writer{i}") for i in range(4)]
    await bulk_messages("lobby", authors, 250, lambda seq: f"{seq:06d} " + "x" * 393)
    reader = await connect(await make_user("reader"))
    joined, size = await raw_request(reader, {"type": "join", "room": "lobby", "after_seq": 0,
                                              "epoch": room.epoch})
    assert joined["recovered"] is True, (joined["recovered"], size)
    assert [m["seq"] for m in joined["messages"]] == list(range(1, 1001))
    assert sum(len(m["text"]) for m in joined["messages"]) == 400_000
    assert size <= MIB, size


def test_a_room_with_thousands_online_gets_a_member_list_that_fits():
    from parley.commands import members_that_fit as _members_that_fit

    members = [{"id": 10**12 + i, "username": "ü" * 150} for i in range(20_000)]
    kept = _members_that_fit(members)
    assert 0 < len(kept) < len(members) and kept == members[:len(kept)]
    budget = protocol.REPLY_ENVELOPE_MAX_BYTES - protocol.REPLY_ENVELOPE_FIXED_BYTES
    assert len(json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()) <= budget
    assert _members_that_fit(members[:10]) == members[:10]
