"""One message over HTTP (docs/protocol.md §10, "HTTP API, version 2"), the Django admin's edit
and delete, and parley.post_message's reply_to: the same services as the socket's commands, so
their entries reach open sockets live."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

import parley
from parley import services
from parley.models import Message
from tests.conftest import PASSWORD, make_room, make_user, override_parley, user


def token(u: Any) -> str:
    return services.token_create(user=u, name="t")[1]


def api(raw: str) -> tuple[Client, dict[str, str]]:
    return Client(), {"Authorization": f"Bearer {raw}"}


def send(raw: str, method: str, path: str, body: Any = None) -> Any:
    client, headers = api(raw)
    if method == "get":
        return client.get(path, headers=headers)
    data = json.dumps(body) if body is not None else None
    return getattr(client, method)(path, data=data, content_type="application/json", headers=headers)


def error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.json()["error"]["code"] == code


@pytest.mark.django_db
def test_edit_delete_react_over_http():
    ada, bob = user("ada"), user("bob")
    room = services.room_create(slug="lobby", title="Lobby")
    a, b = token(ada), token(bob)
    posted = send(a, "post", "/api/rooms/lobby/messages", {"text": "hello"}).json()["message"]
    seq = posted["seq"]
    reply = send(b, "post", "/api/rooms/lobby/messages", {"text": "hi @ada", "reply_to": seq})
    assert reply.status_code == 201
    body = reply.json()["message"]
    assert body["reply_to"]["seq"] == seq and body["mentions"] == [{"id": ada.pk, "username": "ada"}]
    error(send(b, "post", "/api/rooms/lobby/messages", {"text": "x", "reply_to": 999}), 404, "message_not_found")

    edited = send(a, "patch", f"/api/rooms/lobby/messages/{seq}", {"text": " hello **world** "})
    assert edited.status_code == 200
    assert edited.json()["message"]["text"] == "hello **world**" and edited.json()["seq"] == seq + 2
    error(send(b, "patch", f"/api/rooms/lobby/messages/{seq}", {"text": "mine"}), 403, "forbidden")
    error(send(a, "patch", f"/api/rooms/lobby/messages/{seq}", {"text": ""}), 400, "text_empty")
    error(send(a, "patch", f"/api/rooms/lobby/messages/{seq}", {}), 400, "missing_field")
    error(send(a, "patch", "/api/rooms/lobby/messages/0", {"text": "x"}), 400, "bad_field")
    error(send(a, "patch", "/api/rooms/lobby/messages/99999999999999999999", {"text": "x"}), 400, "bad_field")
    error(send(a, "patch", f"/api/rooms/lobby/messages/{seq + 2}", {"text": "x"}), 404, "message_not_found")
    error(send(a, "patch", "/api/rooms/nowhere/messages/1", {"text": "x"}), 404, "room_not_found")

    path = f"/api/rooms/lobby/messages/{seq}/reactions/{quote('👍')}"
    added = send(b, "put", path)
    assert added.status_code == 200 and added.json()["message"]["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    again = send(b, "put", path)
    assert again.json()["seq"] is None
    seen_by_ada = send(a, "get", f"/api/rooms/lobby/messages/{seq}").json()["message"]
    assert seen_by_ada["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]
    error(send(b, "put", f"/api/rooms/lobby/messages/{seq}/reactions/x"), 400, "bad_field")
    removed = send(b, "delete", path)
    assert removed.status_code == 200 and "reactions" not in removed.json()["message"]

    error(send(b, "delete", f"/api/rooms/lobby/messages/{seq}"), 403, "forbidden")
    gone = send(a, "delete", f"/api/rooms/lobby/messages/{seq}")
    assert gone.status_code == 200 and gone.json()["message"]["deleted"] is True and gone.json()["message"]["text"] == ""
    error(send(a, "patch", f"/api/rooms/lobby/messages/{seq}", {"text": "back"}), 409, "message_deleted")
    error(send(b, "put", path), 409, "message_deleted")
    assert not Message.objects.filter(room=room, text__contains="hello").exists()
    page = send(b, "get", "/api/rooms/lobby/messages").json()["messages"]
    assert [m["seq"] for m in page] == [seq, seq + 1]  # messages only: the other entries are folded in
    assert page[1]["reply_to"]["deleted"] is True


@pytest.mark.django_db
def test_private_rooms_messages_are_not_found_by_outsiders():
    ada, eve = user("ada"), user("eve")
    services.room_create(slug="team", title="Team", owner=ada, is_private=True)
    seq = send(token(ada), "post", "/api/rooms/team/messages", {"text": "secret"}).json()["message"]["seq"]
    e = token(eve)
    for method, path in (("get", f"/api/rooms/team/messages/{seq}"), ("patch", f"/api/rooms/team/messages/{seq}"),
                         ("delete", f"/api/rooms/team/messages/{seq}"),
                         ("put", f"/api/rooms/team/messages/{seq}/reactions/{quote('👍')}")):
        error(send(e, method, path, {"text": "x"}), 404, "room_not_found")  # never message_not_found


@pytest.mark.django_db
def test_session_changes_need_csrf_and_the_edit_bucket_is_shared(parley_settings):
    user("ada")
    services.room_create(slug="lobby", title="Lobby")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="ada", password=PASSWORD)
    seq = services.message_post(room="lobby", text="x", author=get_user_model().objects.get(username="ada"),
                                source="python")[0].seq
    response = client.patch(f"/api/rooms/lobby/messages/{seq}", data=json.dumps({"text": "y"}),
                            content_type="application/json")
    error(response, 403, "csrf_failed")
    client.get("/accounts/login/")
    csrf = client.cookies["csrftoken"].value
    parley_settings(EDITS_BURST=1, EDITS_PER_SEC=0.01)
    ok = client.patch(f"/api/rooms/lobby/messages/{seq}", data=json.dumps({"text": "y"}),
                      content_type="application/json", headers={"X-CSRFToken": csrf})
    assert ok.status_code == 200
    limited = client.delete(f"/api/rooms/lobby/messages/{seq}", headers={"X-CSRFToken": csrf})
    error(limited, 429, "rate_limited")
    assert int(limited["Retry-After"]) >= 1


@pytest.mark.django_db(transaction=True)
async def test_http_admin_and_python_changes_reach_open_sockets_live(connect):
    ada, root = await make_user("ada"), await database_sync_to_async(get_user_model().objects.create_superuser)(
        "root", "root@example.com", PASSWORD)
    await make_room("lobby")
    watcher = await connect(await make_user("wes"), protocol=2)
    await watcher.join("lobby")
    first = await database_sync_to_async(parley.post_message)("lobby", "first", author=ada)
    second = await parley.apost_message("lobby", "re", author=ada, reply_to=first.seq)
    got = [await watcher.recv_type("message") for _ in range(2)]
    assert got[1]["message"]["reply_to"]["seq"] == first.seq
    raw = await database_sync_to_async(token)(ada)
    response = await database_sync_to_async(send)(raw, "patch", f"/api/rooms/lobby/messages/{first.seq}", {"text": "1st"})
    assert response.status_code == 200
    edit = await watcher.recv_type("edit")
    assert (edit["target"], edit["text"]) == (first.seq, "1st")

    def admin_changes() -> None:
        client = Client()
        client.force_login(root)
        row = Message.objects.get(room__slug="lobby", seq=second.seq)
        page = client.get(f"/admin/parley/message/{row.pk}/change/")
        assert page.status_code == 200
        too_long = client.post(f"/admin/parley/message/{row.pk}/change/", {"text": "x" * 5000})
        assert too_long.status_code == 200 and b"the limit is" in too_long.content  # the form's error
        response = client.post(f"/admin/parley/message/{row.pk}/change/", {"text": "moderated"})
        assert response.status_code == 302, response.content[:500]
        versions = client.get(f"/admin/parley/message/{Message.objects.get(room__slug='lobby', seq=first.seq).pk}/change/")
        assert b"1st" in versions.content  # the edit history
        response = client.post(f"/admin/parley/message/{row.pk}/delete/", {"post": "yes"})
        assert response.status_code == 302
        assert Message.objects.filter(pk=row.pk, text="", deleted_at__isnull=False).exists()  # a tombstone

    await database_sync_to_async(admin_changes)()
    moderated = await watcher.recv_type("edit")
    assert (moderated["target"], moderated["text"], moderated["by"]["username"]) == (second.seq, "moderated", "root")
    deleted = await watcher.recv_type("delete")
    assert deleted["target"] == second.seq


@pytest.mark.django_db
def test_post_message_reply_to_refusals():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    with pytest.raises(services.MessageRefused) as refused:
        parley.post_message("lobby", "x", author=ada, reply_to=5)
    assert refused.value.code == "message_not_found"
    with pytest.raises(services.MessageRefused) as refused:
        parley.post_message("lobby", "x", author=ada, reply_to="5")  # type: ignore[arg-type]
    assert refused.value.code == "bad_field"
    with override_parley(MAX_MENTIONS_PER_MESSAGE=2):
        lobby = services.room_ensure(slug="lobby", title="Lobby")
        for name in ("bob", "cy", "dee"):  # people in the room: they posted in it
            services.message_create(room_id=lobby.pk, author=user(name), text="hi", client_id=None)
        message = parley.post_message("lobby", "@dee @cy @bob @dee", author=ada)
    assert [m["username"] for m in message.mentions] == ["dee", "cy"]


@pytest.mark.django_db(transaction=True)
async def test_message_changed_is_sent_for_every_change_from_every_path(connect):
    import threading

    from parley.signals import message_changed

    got: list[tuple[str, int | None, str, str]] = []
    done = threading.Event()

    def receiver(sender: Any, entry: Any, message: Any, source: str, **kwargs: Any) -> None:
        got.append((entry.kind, entry.target_seq, message.text, source))
        if len(got) == 2:
            done.set()

    message_changed.connect(receiver)
    try:
        ada = await make_user("ada")
        await make_room("lobby")
        first = await parley.apost_message("lobby", "one", author=ada)
        a = await connect(ada, protocol=2)
        await a.join("lobby")
        await a.request({"type": "edit", "room": "lobby", "seq": first.seq, "text": "uno"})  # no-op below: not sent
        await a.request({"type": "edit", "room": "lobby", "seq": first.seq, "text": "uno"})
        raw = await database_sync_to_async(token)(ada)
        await database_sync_to_async(send)(raw, "put", f"/api/rooms/lobby/messages/{first.seq}/reactions/{quote('🎉')}")
        assert await database_sync_to_async(done.wait)(5)
    finally:
        message_changed.disconnect(receiver)
    assert sorted(got) == [("edit", first.seq, "uno", "socket"), ("react", first.seq, "uno", "http")]


@pytest.mark.django_db
def test_the_python_api_checks_what_a_socket_checks():
    from parley import conversation

    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    message = parley.post_message(room, "x", author=ada)
    for text, code in (("", "text_empty"), ("   ", "text_empty"), ("x" * 4001, "text_too_long"), ("a\x00b", "bad_field")):
        with pytest.raises(services.MessageRefused) as refused:
            conversation.message_edit(room=room, actor=ada, seq=message.seq, text=text)
        assert refused.value.code == code
    with pytest.raises(services.MessageRefused) as refused:
        conversation.reaction_set(room=room, actor=ada, seq=message.seq, emoji="not an emoji", add=True)
    assert (refused.value.code, refused.value.field) == ("bad_field", "emoji")
    assert conversation.message_edit(room=room, actor=ada, seq=message.seq, text="  y ").message.text == "y"
    assert not Message.objects.filter(kind=Message.Kind.REACT).exists()
