"""parley.realtime.hub: local fan-out, fan-out across processes over Redis, and catch-up after Redis restarts."""

import asyncio
import shutil
import socket
import subprocess

import pytest
import redis.asyncio as aioredis

from parley.realtime.hub import LocalHub, RedisHub, stats
from tests.conftest import REQUIRE_SERVICES


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.resyncs: list[int] = []
        self.revoked = 0
        self.user_events: list[dict] = []

    def hub_event(self, event):
        self.events.append(event)

    def hub_resync(self, room_id):
        self.resyncs.append(room_id)

    def hub_credentials_revoked(self):
        self.revoked += 1

    def hub_user_event(self, event):
        self.user_events.append(event)


async def wait_for(predicate, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_local_hub_delivers_to_room_members_only():
    hub = LocalHub()
    a, b, other = Recorder(), Recorder(), Recorder()
    await hub.subscribe(1, a)
    await hub.subscribe(1, b)
    await hub.subscribe(2, other)
    await hub.publish(1, {"type": "chat.message", "n": 1})
    assert a.events == b.events == [{"type": "chat.message", "n": 1}] and other.events == []
    await hub.unsubscribe(1, a)
    await hub.publish(1, {"type": "chat.message", "n": 2})
    assert len(a.events) == 1 and len(b.events) == 2
    assert 1 in hub.rooms and 2 in hub.rooms
    await hub.unsubscribe(1, b)
    assert 1 not in hub.rooms  # empty rooms are forgotten


async def test_one_broken_receiver_does_not_stop_the_others():
    class Broken(Recorder):
        def hub_event(self, event):
            raise RuntimeError("boom")

    hub, good = LocalHub(), Recorder()
    await hub.subscribe(1, Broken())
    await hub.subscribe(1, good)
    await hub.publish(1, {"type": "chat.message"})
    assert len(good.events) == 1


async def test_revoking_credentials_reaches_only_their_sockets_once():
    hub = LocalHub()
    a1, a2, b, gone = Recorder(), Recorder(), Recorder(), Recorder()
    for credential, receiver in [(("token", 1), a1), (("token", 1), a2), (("token", 2), b), (("token", 1), gone)]:
        await hub.watch(credential, receiver)
    await hub.watch(("user", 1), b)  # a token and a user with the same id are different keys
    hub.unwatch(("token", 1), gone)  # that socket closed
    await hub.revoke(("token", 1))
    await hub.revoke(("token", 1))  # a second revocation finds nobody left
    assert (a1.revoked, a2.revoked, b.revoked, gone.revoked) == (1, 1, 0, 0)
    assert hub.credentials == {("token", 2): {b}, ("user", 1): {b}}


async def test_user_events_reach_every_socket_of_that_user_and_no_one_else():
    hub = LocalHub()
    ada_1, ada_2, bob, ada_token = Recorder(), Recorder(), Recorder(), Recorder()
    await hub.watch(("user", 1), ada_1)
    await hub.watch(("user", 1), ada_2)
    await hub.watch(("user", 2), bob)
    await hub.watch(("token", 1), ada_token)  # a token's id is not a user's
    await hub.subscribe(1, bob)  # nor is a room's
    await hub.publish_user(1, {"type": "user.frame", "n": 1})
    assert ada_1.user_events == ada_2.user_events == [{"type": "user.frame", "n": 1}]
    assert bob.user_events == ada_token.user_events == bob.events == []
    hub.unwatch(("user", 1), ada_1)  # that socket closed
    await hub.publish_user(1, {"type": "user.frame", "n": 2})
    assert len(ada_1.user_events) == 1 and len(ada_2.user_events) == 2


@pytest.mark.django_db(transaction=True)
async def test_the_periodic_check_closes_what_the_database_no_longer_vouches_for(parley_settings):
    """parley.revocation over the hub's watched credentials: one query names the lost ones —
    an inactive user, a revoked token, rows that do not exist — and only their receivers are
    closed; the check stops by itself once nothing is watched."""
    from channels.db import database_sync_to_async
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from parley import services
    from parley.models import ApiToken

    @database_sync_to_async
    def world():
        ada = services.user_create(username="ada")
        bob = services.user_create(username="bob")
        ada_token, _ = services.token_create(user=ada)
        bob_token, _ = services.token_create(user=bob)
        get_user_model().objects.filter(pk=bob.pk).update(is_active=False)
        ApiToken.objects.filter(pk=ada_token.pk).update(revoked_at=timezone.now())
        return ada, bob, ada_token, bob_token

    parley_settings.REVOCATION_CHECK_SECS = 0.2
    ada, bob, ada_token, bob_token = await world()
    hub = LocalHub()
    watched = {("user", ada.pk): Recorder(), ("user", bob.pk): Recorder(), ("token", ada_token.pk): Recorder(),
               ("token", bob_token.pk): Recorder(), ("user", 10**9): Recorder(), ("token", 10**9): Recorder()}
    for credential, receiver in watched.items():
        await hub.watch(credential, receiver)
    lost = {("user", bob.pk), ("token", ada_token.pk), ("user", 10**9), ("token", 10**9)}
    await wait_for(lambda: all(watched[c].revoked == 1 for c in lost))
    assert {c for c, r in watched.items() if r.revoked} == lost
    assert set(hub.credentials) == {("user", ada.pk), ("token", bob_token.pk)}
    for credential in list(hub.credentials):
        hub.unwatch(credential, watched[credential])
    await wait_for(lambda: hub._revocation_check.task.done())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    """A redis-server of our own, so the test can stop and restart it without touching others."""
    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRE_SERVICES:
            pytest.fail("redis-server is not installed but PARLEY_REQUIRE_SERVICES=1")
        pytest.skip("needs the redis-server binary")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs = []

    def start():
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    start()
    yield f"redis://127.0.0.1:{port}/0", start, procs
    for proc in procs:
        proc.kill()
        proc.wait()


async def ping(url):
    client = aioredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    return await client.ping()
                except Exception:
                    await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_two_processes_share_a_room_through_redis(private_redis):
    url, _, _ = private_redis
    await ping(url)
    process_a, process_b = RedisHub(url, "t"), RedisHub(url, "t")  # two "processes", one Redis
    on_a, on_b, elsewhere = Recorder(), Recorder(), Recorder()
    await process_a.subscribe(7, on_a)
    await process_b.subscribe(7, on_b)
    await process_b.subscribe(8, elsewhere)
    await asyncio.sleep(0.1)
    await process_a.publish(7, {"type": "chat.message", "seq": 1})
    await wait_for(lambda: on_a.events and on_b.events)
    assert on_a.events == on_b.events == [{"type": "chat.message", "seq": 1}]
    assert elsewhere.events == []


async def test_with_redis_down_local_receivers_still_get_events_and_publish_does_not_wait(private_redis):
    url, _, procs = private_redis
    await ping(url)
    hub, here, also_here = RedisHub(url, "t"), Recorder(), Recorder()
    await hub.subscribe(7, here)
    await hub.subscribe(7, also_here)
    await hub.watch(("user", 3), here)
    dropped_before = stats.dropped_publishes
    procs[-1].kill()
    procs[-1].wait()
    # publish hands the event to this hub's sockets before anything touches Redis, and queues
    # the other processes' copy: it returns without waiting out the Redis client's retries.
    await asyncio.wait_for(hub.publish(7, {"type": "chat.message", "seq": 1}), 1)
    assert here.events == also_here.events == [{"type": "chat.message", "seq": 1}]
    await hub.revoke(("user", 3))  # revocations reach this process's sockets the same way
    assert here.revoked == 1 and also_here.revoked == 0
    await wait_for(lambda: hub.dropped_publishes == 2, timeout=30)  # given up, not kept forever
    assert stats.dropped_publishes == dropped_before + 2  # what /metrics reports (parley.metrics)


async def test_the_publish_queue_for_redis_is_bounded_by_its_setting(parley_settings):
    """PARLEY_REDIS_OUTBOX_MAX_EVENTS: while Redis does not answer a process holds at most that
    many events for the others, dropping the oldest (its own sockets had every one)."""
    with socket.socket() as s:  # a port nothing listens on: Redis "down" from the start
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parley_settings.REDIS_OUTBOX_MAX_EVENTS = 3
    hub, here = RedisHub(f"redis://127.0.0.1:{port}/0", "t"), Recorder()
    await hub.subscribe(7, here)
    for seq in range(1, 6):  # none of these awaits yields: the drainer has not run yet
        await hub.publish(7, {"type": "chat.message", "seq": seq})
    assert [e["seq"] for e in here.events] == [1, 2, 3, 4, 5]
    assert hub.dropped_publishes == 2 and len(hub._outbox) == 3


async def test_credentials_revoked_in_one_process_close_their_sockets_in_another(private_redis):
    url, _, _ = private_redis
    await ping(url)
    process_a, process_b = RedisHub(url, "t"), RedisHub(url, "t")
    on_b, other_token = Recorder(), Recorder()
    await process_b.watch(("token", 5), on_b)
    await process_b.watch(("token", 6), other_token)
    await process_b.subscribe(1, Recorder())  # the room and control channels share one listener
    await asyncio.sleep(0.1)
    await process_a.revoke(("token", 5))  # process A has no socket of that token: it publishes anyway
    await wait_for(lambda: on_b.revoked == 1)
    assert other_token.revoked == 0 and ("token", 5) not in process_b.credentials


async def test_user_events_cross_processes_once_each_from_async_and_sync_code(private_redis):
    from parley.realtime.hub import publish_user_from_sync

    url, _, _ = private_redis
    await ping(url)
    process_a, process_b = RedisHub(url, "t"), RedisHub(url, "t")
    on_a, on_b, other_user = Recorder(), Recorder(), Recorder()
    await process_a.watch(("user", 4), on_a)
    await process_b.watch(("user", 4), on_b)
    await process_b.watch(("user", 5), other_user)
    await asyncio.sleep(0.1)
    await process_a.publish_user(4, {"type": "user.frame", "n": 1})
    await wait_for(lambda: on_b.user_events)
    assert on_a.user_events == on_b.user_events == [{"type": "user.frame", "n": 1}]  # A's own copy skipped
    # From a view's thread or a worker: every process gets it but those that delivered it already.
    await asyncio.to_thread(publish_user_from_sync, url, "t", 4, {"type": "user.frame", "n": 2},
                            [process_a.origin])
    await wait_for(lambda: len(on_b.user_events) == 2)
    await asyncio.sleep(0.1)
    assert [e["n"] for e in on_a.user_events] == [1] and other_user.user_events == []


async def test_resubscribes_and_asks_for_catch_up_after_redis_restarts(private_redis):
    url, start, procs = private_redis
    await ping(url)
    hub, receiver = RedisHub(url, "t"), Recorder()
    await hub.subscribe(3, receiver)
    await hub.watch(("user", 4), receiver)
    await asyncio.sleep(0.1)
    procs[-1].kill()
    procs[-1].wait()
    await asyncio.sleep(0.5)  # the listener notices and starts backing off
    start()
    await ping(url)
    await wait_for(lambda: receiver.resyncs == [3], timeout=15)
    await hub.publish(3, {"type": "chat.message", "seq": 9})  # and live delivery works again
    await wait_for(lambda: receiver.events == [{"type": "chat.message", "seq": 9}])
    await hub.revoke(("user", 4))  # the control channel was resubscribed too
    await wait_for(lambda: receiver.revoked == 1)
