"""A message posted from another process — `manage.py shell -c`, as a cron job, a worker or an
operator would — reaches the live sockets of a real server (python -m config.serve), on the
setup of the run: the embedded default (SQLite, no Redis: through the room log,
parley.roomwatch) and PostgreSQL + Redis (through the hub's Redis channel). And a message
posted while no server runs is stored, and clients get it when they join.
"""

from __future__ import annotations

import asyncio

import pytest

from parley.conf import parley_settings
from tests.support.fixtures import RawSocket, make_room, make_user_token, servers  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# A liveness bound, not a latency claim (those are `python -m bench.external_post`'s): the poll
# interval plus a busy 2-core box.
DELIVERY_BOUND_SECS = 10

POST = """
import parley
from django.contrib.auth import get_user_model
bot = get_user_model().objects.get(username="bot")
m = parley.post_message("lobby", "from a shell", author=bot, client_id="cron-1")
print("seq", m.seq)
"""

PUBLISH = """
import parley
try:
    parley.publish_event("lobby", {"kind": "order_shipped", "order": 42})
    print("published")
except parley.EventNotDeliverable:
    print("not deliverable")
"""


async def joined_sockets(server, count: int) -> list[RawSocket]:
    socks = []
    for _ in range(count):
        _, token = await make_user_token()
        sock = await RawSocket.open(server.ws_url, token)
        reply = await sock.request({"type": "join", "room": "lobby"})
        assert reply["type"] == "joined", reply
        socks.append(sock)
    return socks


async def test_a_message_posted_from_a_shell_reaches_two_live_sockets(servers):  # noqa: F811
    await make_room("lobby")
    await make_user_token("bot")
    server = servers()
    socks = await joined_sockets(server, 2)
    out = await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", POST)
    assert out.split() == ["seq", "1"], out
    for sock in socks:
        frame = await sock.take(lambda f: f["type"] == "message", timeout=DELIVERY_BOUND_SECS)
        message = frame["message"]
        assert (frame["room"], message["seq"], message["text"], message["author"]["username"],
                message["client_id"]) == ("lobby", 1, "from a shell", "bot", "cron-1")
    # A rerun of the job (same client_id) stores and sends nothing more.
    out = await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", POST)
    assert out.split() == ["seq", "1"], out
    for sock in socks:
        later = await sock.drain(quiet=1.0)
        assert [f for f in later if f["type"] == "message"] == []
    for sock in socks:
        await sock.close()


async def test_publish_event_from_another_process(servers):  # noqa: F811
    """With Redis, a custom frame; without, a loud refusal: events are not stored, so no log
    could bring them later."""
    await make_room("lobby")
    server = servers()
    socks = await joined_sockets(server, 2)
    out = (await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", PUBLISH)).strip()
    if parley_settings.REDIS_URL:
        assert out == "published"
        for sock in socks:
            frame = await sock.take(lambda f: f["type"] == "custom", timeout=DELIVERY_BOUND_SECS)
            assert frame == {"type": "custom", "room": "lobby", "payload": {"kind": "order_shipped", "order": 42}}
    else:
        assert out == "not deliverable"
    for sock in socks:
        await sock.close()


async def test_a_message_posted_while_no_server_runs_is_there_on_join(servers):  # noqa: F811
    await make_room("lobby")
    await make_user_token("bot")
    server = servers()
    server.stop()
    out = await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", POST)
    assert out.split() == ["seq", "1"], out
    server.start()
    _, token = await make_user_token()
    sock = await RawSocket.open(server.ws_url, token)
    reply = await sock.request({"type": "join", "room": "lobby"})
    assert [m["text"] for m in reply["messages"]] == ["from a shell"]
    await sock.close()


CHANGE = """
import parley
from parley import conversation
from parley.models import Room
from django.contrib.auth import get_user_model
bot = get_user_model().objects.get(username="bot")
room = Room.objects.get(slug="lobby")
m = parley.post_message("lobby", "draft", author=bot)
conversation.message_edit(room=room, actor=bot, seq=m.seq, text="final")
conversation.reaction_set(room=room, actor=bot, seq=m.seq, emoji="✅", add=True)
print("done")
"""


async def test_edits_and_reactions_from_a_shell_reach_live_version_2_sockets(servers):  # noqa: F811
    """docs/protocol.md §10: every entry, from any process, reaches the room's sockets in seq
    order — through the room log without Redis, through Redis with it."""
    await make_room("lobby")
    await make_user_token("bot")
    server = servers()
    _, token = await make_user_token()
    sock = await RawSocket.open(server.ws_url + "?protocol=2", token)
    assert (await sock.request({"type": "join", "room": "lobby"}))["type"] == "joined"
    out = await asyncio.to_thread(server.manage, "shell", "-v", "0", "-c", CHANGE)
    assert out.split() == ["done"], out
    got = [await sock.take(lambda f: f["type"] in ("message", "edit", "reaction"), timeout=DELIVERY_BOUND_SECS)
           for _ in range(3)]
    assert [f["type"] for f in got] == ["message", "edit", "reaction"]
    assert (got[1]["text"], got[2]["emoji"], got[2]["count"]) == ("final", "✅", 1)
    await sock.close()
