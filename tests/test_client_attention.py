"""parley_client and the room list (docs/protocol.md §11) against a real server subprocess: the
list after hello, `read()` from one socket seen by another of the same user."""

from __future__ import annotations

from typing import Any

import pytest

import tests.support  # noqa: F401  (puts clients/python on sys.path first)
from tests.support.fixtures import *  # noqa: F403
from tests.support.fixtures import fast_client, make_room, make_user_token, wait_for

ROOM = "lobby"


@pytest.mark.django_db(transaction=True)
async def test_room_states_and_read_across_a_users_clients(servers: Any) -> None:
    server = servers()
    await make_room(ROOM)
    _, ada_token = await make_user_token("ada")
    _, bob_token = await make_user_token("bob")
    desk, phone, bob = (fast_client(server.ws_url, t) for t in (ada_token, ada_token, bob_token))
    try:
        await desk.start()
        assert await desk.wait_room_states() == {}  # nothing opened yet
        await desk.join(ROOM)
        await bob.start()
        await bob.join(ROOM)
        acks = [await bob.send(ROOM, text) for text in ("one", "two @ada", "three")]
        states = await desk.rooms()
        assert (states[ROOM]["unread"], states[ROOM]["mentions"]) == (3, 1)
        await phone.start()
        assert (await phone.wait_room_states())[ROOM]["unread"] == 3
        reply = await phone.read(ROOM, acks[1]["seq"])
        assert (reply["seq"], reply["unread"], reply["mentions"]) == (acks[1]["seq"], 1, 0)
        assert phone.room_states[ROOM]["unread"] == 1
        # The desk hears it from the server: its copy of the list follows.
        await wait_for(lambda: desk.room_states[ROOM]["last_read_seq"] == acks[1]["seq"], 10, "the read frame")
        assert desk.room_states[ROOM]["unread"] == 1
        back = await phone.read(ROOM, 1)
        assert back["seq"] == acks[1]["seq"]  # never backwards
    finally:
        for client in (desk, phone, bob):
            await client.close()
