"""Events addressed to a user rather than a room (parley.events.UserNotified → parley.fanout →
parley.realtime.hub.publish_user): every version 2 socket of the user gets the frame, from any
thread, and no one else does."""

from __future__ import annotations

import asyncio

import pytest

from parley import events
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_user_event_reaches_each_v2_socket_of_that_user_only(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    ada_1, ada_2 = await connect(ada, protocol=2), await connect(ada, protocol=2)
    ada_v1, bob_v2 = await connect(ada), await connect(bob, protocol=2)
    frame = {"type": "room_updated", "room": {"slug": "x"}}
    # From a view's or a worker's thread, as services send it when their transaction commits.
    await asyncio.to_thread(events.send_event, events.UserNotified(user_ids=(ada.pk,), frame=frame))
    assert await ada_1.recv_type("room_updated") == frame
    assert await ada_2.recv_type("room_updated") == frame
    # Version 1 sockets never get frames the version does not define; other users get nothing.
    assert await ada_v1.nothing("room_updated") and await bob_v2.nothing("room_updated")


async def test_the_socket_that_caused_a_user_event_can_be_skipped(connect):
    ada = await make_user("ada")
    mine, other = await connect(ada, protocol=2), await connect(ada, protocol=2)
    # Which socket is which: the consumer's channel name is the session's socket id.
    from parley.realtime.hub import get_hub

    receivers = get_hub().credentials[("user", ada.pk)]
    assert len(receivers) == 2
    first = next(iter(receivers))
    await asyncio.to_thread(events.send_event, events.UserNotified(
        user_ids=(ada.pk,), frame={"type": "read", "room": "lobby", "seq": 3}, skip_socket=first.session.socket_id))
    got = [client for client in (mine, other) if not await client.nothing("read")]
    assert len(got) == 1
