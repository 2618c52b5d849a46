"""parley.signals.notification (docs/protocol.md §11, README "Notifications"): who a new message
notifies and why, from every path a message takes, on the signal thread; and the opt-in example
receiver that e-mails an offline user (parley.contrib.mail_notifications), with Django's locmem
mail backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.apps import apps
from django.core import mail

import parley
from parley import receivers, services
from parley.contrib import mail_notifications
from parley.models import Message, Room
from parley.signals import notification
from tests.conftest import make_room, make_user, override_parley

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def told() -> Iterator[list[tuple[str, str, str, str]]]:
    """(username, room slug, reason, thread name) of every notification sent during the test."""
    got: list[tuple[str, str, str, str]] = []

    def receiver(sender: Any, *, user: Any, room: Any, message: Any, reason: str, **kwargs: Any) -> None:
        assert sender is Message and isinstance(message, Message)
        got.append((user.get_username(), room.slug, reason, threading.current_thread().name))

    notification.connect(receiver, sender=Message, dispatch_uid="test-notifications")
    yield got
    notification.disconnect(sender=Message, dispatch_uid="test-notifications")


def flushed() -> None:
    """Wait until the signal thread has run everything queued so far."""
    receivers._signal_executor().submit(lambda: None).result(timeout=10)


@database_sync_to_async
def post(slug: str, text: str, author: Any) -> None:
    parley.post_message(slug, text, author=author)
    flushed()


@database_sync_to_async
def setting(u: Any, slug: str, **changes: Any) -> None:
    services.room_state_update(user=u, room=Room.objects.get(slug=slug), **changes)


@database_sync_to_async
def open_room(u: Any, slug: str) -> None:
    room = Room.objects.get(slug=slug)
    services.room_states_open(opened=[(u.pk, room.pk, room.last_seq)])


@database_sync_to_async
def make_dm(slug: str, *people: Any) -> Room:
    """A DM with a slug the test can name (parley.rooms.dm_open makes an HMAC one; room_create
    refuses dm- slugs): the same rows dm_open writes."""
    room = Room.objects.create(slug=slug, title="DM", is_private=True, kind=Room.Kind.DM)
    for person in people:
        services.membership_add(room=room, user=person)
    return room


def reasons(got: list[tuple[str, str, str, str]]) -> set[tuple[str, str]]:
    return {(name, reason) for name, _, reason, _ in got}


async def test_mentions_room_mentions_and_dms_each_with_its_reason(told):
    owner, ada, bob, cy = [await make_user(n) for n in ("owner", "ada", "bob", "cy")]
    await make_room("lobby", owner=owner)
    for person in (ada, bob, cy):
        await open_room(person, "lobby")
    await post("lobby", "plain words", bob)
    assert told == []  # nobody named: a room's default ("mentions") tells no one
    await post("lobby", "hi @ada and @bob", bob)
    assert reasons(told) == {("ada", "mention")}  # never the author
    assert all(thread.startswith("parley-signals") for *_, thread in told)
    told.clear()
    await post("lobby", "@room meeting now, @cy", owner)
    assert reasons(told) == {("ada", "room_mention"), ("bob", "room_mention"), ("cy", "mention")}
    told.clear()
    await make_dm("dm-abc", ada, bob, cy)
    await post("dm-abc", "lunch?", ada)
    assert reasons(told) == {("bob", "dm"), ("cy", "dm")}


async def test_settings_and_mute_decide(told):
    ada, bob, cy = [await make_user(n) for n in ("ada", "bob", "cy")]
    await make_room("lobby")
    for person in (ada, bob, cy):
        await open_room(person, "lobby")
    await setting(ada, "lobby", notify="nothing")
    await setting(bob, "lobby", muted=True)
    await post("lobby", "@ada @bob @cy", cy)
    assert told == []  # ada: nothing; bob: muted; cy: the author
    await make_dm("dm-1", ada, bob)
    await setting(bob, "dm-1", notify="mentions")
    await post("dm-1", "no name here", ada)
    assert told == []  # a DM set to "mentions" is told of mentions only
    await post("dm-1", "but @bob here", ada)
    assert reasons(told) == {("bob", "mention")}
    told.clear()
    await setting(bob, "dm-1", notify="all")
    await post("dm-1", "again", ada)
    assert reasons(told) == {("bob", "dm")}


async def test_a_socket_send_notifies_on_the_signal_thread(connect, told):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    await open_room(ada, "lobby")
    client = await connect(bob, protocol=2)
    await client.join("lobby")
    await client.say("lobby", "ping @ada")
    await asyncio.to_thread(flushed)
    assert [(n, r) for n, _, r, _ in told] == [("ada", "mention")]
    assert told[0][3].startswith("parley-signals")


async def test_the_mail_example_mails_only_users_who_are_not_online(connect, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ada, bob = await make_user("ada"), await make_user("bob")

    def with_email() -> None:
        ada.email = "ada@example.com"
        ada.save(update_fields=["email"])

    await database_sync_to_async(with_email)()
    await make_room("lobby")
    await open_room(ada, "lobby")
    mail_notifications.connect()
    try:
        await post("lobby", "@ada the build is green", bob)
        assert len(mail.outbox) == 1
        sent = mail.outbox[0]
        assert sent.to == ["ada@example.com"] and sent.subject == "bob mentioned you in #lobby"
        assert "the build is green" in sent.body
        online = await connect(ada, protocol=2)
        await post("lobby", "@ada are you there?", bob)
        await asyncio.to_thread(flushed)
        assert len(mail.outbox) == 1  # she has a socket open: no mail
        await online.close()
        await post("lobby", "@bob only", bob)
        assert len(mail.outbox) == 1  # no notification, no mail
    finally:
        mail_notifications.disconnect()


def test_the_setting_connects_the_mail_example():
    assert not notification.has_listeners(Message)
    with override_parley(MAIL_NOTIFICATIONS=True):
        apps.get_app_config("parley").ready()
    try:
        assert notification.has_listeners(Message)
    finally:
        mail_notifications.disconnect()
