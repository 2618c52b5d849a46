"""The chat consumer, driven through the real config.asgi.application."""

import pytest

from tests.conftest import make_room, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_two_clients_see_each_others_messages_in_sequence(connect):
    await make_room("lobby")
    ada, bob = await make_user("ada"), await make_user("bob")
    a, b = await connect(ada), await connect(bob)
    await a.join("lobby")
    await b.join("lobby")
    for i in range(3):
        await a.say("lobby", f"from ada {i}")
        await b.say("lobby", f"from bob {i}")
    for client in (a, b):
        got = await client.messages(6)
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5, 6]
        assert [m["author"]["username"] for m in got] == ["ada", "bob"] * 3
    await a.close()
    await b.close()
