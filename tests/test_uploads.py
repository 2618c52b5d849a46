"""Uploads (docs/protocol.md §14): the upload endpoint and its limits, attachments on a version 2
send, over HTTP and from parley.post_message, the message objects that carry them (version 1
sockets keep version 1's frames), downloads authorized as the room with headers that keep an
uploaded HTML or SVG from running, and the files' lives (a delete, a room gone, expiry).

Through the real ASGI application (config.asgi), on SQLite and on PostgreSQL + Redis alike.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.files.storage import storages
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from PIL import Image

import parley
from config.asgi import application
from parley import services
from parley.models import Attachment, Membership, Message, Room
from parley.uploads import sniff, uploads_expired_delete
from tests.conftest import PASSWORD, make_room, make_user, override_parley, user

pytestmark = pytest.mark.django_db(transaction=True)

HTML = b"<!doctype html><html><body><script>parent.pwned = 1; document.title = 'pwned'</script></body></html>"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
       b'<script>parent.pwned = 1</script><rect width="10" height="10"/></svg>')


@pytest.fixture(autouse=True)
def _storage(settings: Any, tmp_path: Any) -> Any:
    """Each test's files in its own folder (the storage alias uploads use is "default")."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    return tmp_path


def png(width: int = 3, height: int = 2, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def token(u: Any) -> str:
    return services.token_create(user=u, name="t")[1]


def upload(raw: str, slug: str, content: bytes, name: str = "f.bin", content_type: str = "application/octet-stream",
           **extra: Any) -> Any:
    f = io.BytesIO(content)
    f.name = name
    # Django's test client sends the file's own content type from its name; `content_type`
    # is what the client claims, which Parley ignores.
    from django.core.files.uploadedfile import SimpleUploadedFile
    return Client().post(f"/api/rooms/{slug}/uploads",
                         {"file": SimpleUploadedFile(name, content, content_type=content_type), **extra},
                         headers={"Authorization": f"Bearer {raw}"})


def api(raw: str, method: str, path: str, body: Any = None) -> Any:
    client, headers = Client(), {"Authorization": f"Bearer {raw}"}
    if method == "get":
        return client.get(path, headers=headers)
    return getattr(client, method)(path, data=json.dumps(body) if body is not None else None,
                                   content_type="application/json", headers=headers)


def error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.json()["error"]["code"] == code


def body_of(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# --- uploading and downloading ----------------------------------------------------------------


def test_an_image_is_sniffed_verified_and_served_inline():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    data = png(3, 2)
    r = upload(raw, "lobby", data, name="../../etc/pic.png", content_type="text/html")
    assert r.status_code == 201, r.content
    up = r.json()["upload"]
    assert up == {"id": up["id"], "name": "pic.png", "size": len(data), "content_type": "image/png",
                  "width": 3, "height": 2, "url": f"/api/rooms/lobby/uploads/{up['id']}"}
    stored = Attachment.objects.get(pk=up["id"]).file
    assert "pic" not in stored and ".." not in stored  # a random name, nothing of the client's
    got = api(raw, "get", up["url"])
    assert got.status_code == 200 and body_of(got) == data
    assert got["Content-Type"] == "image/png"
    assert got["Content-Disposition"] == 'inline; filename="pic.png"'
    assert got["X-Content-Type-Options"] == "nosniff"
    assert got["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert got["Cache-Control"] == "private, no-cache"
    again = Client().get(up["url"], headers={"Authorization": f"Bearer {raw}", "If-None-Match": got["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize("fmt,content_type", [("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_every_inline_format(fmt, content_type):
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    r = upload(token(ada), "lobby", png(5, 4, fmt), name="x")
    assert r.status_code == 201, r.content
    assert r.json()["upload"]["content_type"] == content_type and r.json()["upload"]["width"] == 5


@pytest.mark.parametrize("content,name", [(HTML, "page.html"), (SVG, "drawing.svg")])
def test_html_and_svg_with_script_are_text_downloads_that_cannot_run(content, name):
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    # The client claims a type that would render; Parley reads the bytes.
    r = upload(raw, "lobby", content, name=name, content_type="text/html" if name.endswith("html") else "image/svg+xml")
    assert r.status_code == 201, r.content
    up = r.json()["upload"]
    assert up["content_type"] == "text/plain" and "width" not in up
    got = api(raw, "get", up["url"])
    assert got.status_code == 200 and body_of(got) == content
    assert got["Content-Type"] == "text/plain; charset=utf-8"
    assert got["Content-Disposition"] == f'attachment; filename="{name}"'
    assert got["X-Content-Type-Options"] == "nosniff"
    assert got["Content-Security-Policy"] == "sandbox; default-src 'none'"


def test_a_file_name_is_made_safe_for_the_header():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    up = upload(raw, "lobby", b"hello", name='r\u00e9sum\u00e9 "q".txt').json()["upload"]
    assert up["name"] == 'r\u00e9sum\u00e9 "q".txt'
    got = api(raw, "get", up["url"])
    got.close()
    assert got["Content-Disposition"] == "attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20%22q%22.txt"


def test_session_uploads_need_the_csrf_token():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="ada", password=PASSWORD)
    client.get("/")  # sets the csrftoken cookie
    error(client.post("/api/rooms/lobby/uploads", {"file": io.BytesIO(b"hi")}), 403, "csrf_failed")
    f = io.BytesIO(b"hi there")
    f.name = "note.txt"
    r = client.post("/api/rooms/lobby/uploads", {"file": f},
                    headers={"X-CSRFToken": client.cookies["csrftoken"].value})
    assert r.status_code == 201 and r.json()["upload"]["content_type"] == "text/plain"
    assert ada.pk == Attachment.objects.get().uploader_id
    error(Client().post("/api/rooms/lobby/uploads", {}), 401, "unauthenticated")


def test_refusals_of_the_upload_endpoint(_storage):
    ada, bob = user("ada"), user("bob")
    services.room_create(slug="lobby", title="Lobby")
    services.room_create(slug="secret", title="Secret", owner=bob, is_private=True)
    raw = token(ada)
    error(upload(raw, "secret", b"hi"), 404, "room_not_found")
    error(upload(raw, "nope", b"hi"), 404, "room_not_found")
    error(Client().post("/api/rooms/lobby/uploads", {}, headers={"Authorization": f"Bearer {raw}"}),
          400, "missing_field")
    # The type is what the bytes are: random binary and a "PNG" Pillow cannot decode are refused.
    error(upload(raw, "lobby", bytes(range(256)) * 4, name="x.png", content_type="image/png"), 415,
          "unsupported_file_type")
    error(upload(raw, "lobby", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50, name="x.png"), 415,
          "unsupported_file_type")
    assert Attachment.objects.count() == 0
    assert [p for p in _storage.rglob("*") if p.is_file()] == []  # nothing refused was kept
    assert upload(raw, "lobby", b"kept").status_code == 201
    assert len([p for p in _storage.rglob("*") if p.is_file()]) == 1


def test_the_allowed_types_are_a_setting():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    with override_parley(UPLOAD_CONTENT_TYPES=["image/png"]):
        error(upload(raw, "lobby", b"just text"), 415, "unsupported_file_type")
        assert upload(raw, "lobby", png()).status_code == 201
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    assert upload(raw, "lobby", pdf, name="a.pdf").json()["upload"]["content_type"] == "application/pdf"


def test_upload_size_limit():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    with override_parley(UPLOAD_MAX_BYTES=1000):
        assert upload(raw, "lobby", b"a" * 1000).status_code == 201
        # Within the multipart envelope's allowance: read, then cut off by the size cap.
        error(upload(raw, "lobby", b"a" * 1001), 413, "file_too_large")
        # Announced as larger than any acceptable body: refused before the body is read.
        error(upload(raw, "lobby", b"a" * 40_000), 413, "file_too_large")
    assert Attachment.objects.count() == 1


async def test_an_oversized_body_is_refused_before_a_byte_of_it_is_read():
    """UploadBodyGuard (parley/asgi.py) answers from the headers: the body is never received."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/rooms/lobby/uploads", "raw_path": b"/api/rooms/lobby/uploads",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("localhost", 80),
             "headers": [(b"host", b"localhost"), (b"content-length", str(10**10).encode()),
                         (b"content-type", b"multipart/form-data; boundary=x")]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "file_too_large"

    # Chunked (no Content-Length): cut off once past the bound, answered the same.
    chunks = [{"type": "http.request", "body": b"x" * 65536, "more_body": True} for _ in range(400)]
    scope["headers"] = [(b"host", b"localhost"), (b"content-type", b"multipart/form-data; boundary=x")]
    sent.clear()
    taken = 0

    async def receive_chunks() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        return chunks[taken - 1]

    await application(scope, receive_chunks, send)
    assert sent[0]["status"] == 413 and taken < 200


def test_uploads_per_hour():
    ada, bob = user("ada"), user("bob")
    services.room_create(slug="lobby", title="Lobby")
    a = token(ada)
    with override_parley(UPLOADS_PER_USER_PER_HOUR=2):
        assert upload(a, "lobby", b"1").status_code == 201
        assert upload(a, "lobby", b"2").status_code == 201
        refused = upload(a, "lobby", b"3")
        error(refused, 429, "rate_limited")
        assert int(refused["Retry-After"]) > 0
        assert upload(token(bob), "lobby", b"4").status_code == 201  # per user


def test_image_pixel_limit_refuses_decompression_bombs():
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    with override_parley(UPLOAD_MAX_IMAGE_PIXELS=100):
        error(upload(raw, "lobby", png(11, 10)), 413, "image_too_large")
        assert upload(raw, "lobby", png(10, 10)).status_code == 201
    # A real bomb: 20,000 x 20,000 of one colour compresses to a few hundred KB.
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 1_000_000
    error(upload(raw, "lobby", bomb.getvalue()), 413, "image_too_large")


def test_sniff_tells_text_from_binary():
    assert sniff(io.BytesIO("héllo\n".encode())).content_type == "text/plain"
    assert sniff(io.BytesIO(b"a\x00b")).content_type == "application/octet-stream"
    assert sniff(io.BytesIO(b"")).content_type == "application/octet-stream"
    assert sniff(io.BytesIO(("é" * 5000).encode())).content_type == "text/plain"  # cut inside a character


# --- attachments on messages ------------------------------------------------------------------


@database_sync_to_async
def uploaded(u: Any, slug: str, content: bytes, name: str = "f.txt") -> dict[str, Any]:
    r = upload(token(u), slug, content, name=name)
    assert r.status_code == 201, r.content
    return r.json()["upload"]


async def test_hello_tells_a_v2_client_the_upload_limits(connect, parley_settings):
    parley_settings(UPLOAD_MAX_BYTES=12345, MAX_ATTACHMENTS_PER_MESSAGE=3)
    ada = await make_user("ada")
    v2, v1 = await connect(ada, protocol=2), await connect(ada)
    limits = v2.hello["limits"]
    assert (limits["upload_max_bytes"], limits["max_attachments_per_message"]) == (12345, 3)
    assert "upload_max_bytes" not in v1.hello["limits"]  # version 1 has no files


async def test_a_v2_send_carries_files_and_v1_sockets_see_the_text_only(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    a2, b1 = await connect(ada, protocol=2), await connect(bob)
    await a2.join("lobby")
    await b1.join("lobby")
    pic = await uploaded(ada, "lobby", png(3, 2), name="pic.png")
    doc = await uploaded(ada, "lobby", b"notes", name="notes.txt")
    ack = await a2.request({"type": "send", "room": "lobby", "text": "look", "client_id": "c1",
                            "attachments": [pic["id"], doc["id"]]})
    assert ack["type"] == "ack", ack
    live = (await a2.recv_type("message"))["message"]
    assert live["attachments"] == [pic, doc]
    v1 = (await b1.recv_type("message"))["message"]
    assert set(v1) == {"room", "seq", "id", "client_id", "author", "text", "ts"} and v1["text"] == "look"
    # Pages: version 2's carry the files, version 1's do not.
    assert (await a2.join("lobby"))["messages"][-1]["attachments"] == [pic, doc]
    assert "attachments" not in (await b1.join("lobby"))["messages"][-1]
    history = await b1.request({"type": "history", "room": "lobby"})
    assert "attachments" not in history["messages"][-1]
    page = await database_sync_to_async(lambda: api(token(bob), "get", "/api/rooms/lobby/messages"))()
    assert page.json()["messages"][-1]["attachments"] == [pic, doc]
    # A file-only message: no text needed once there are files.
    only = await uploaded(ada, "lobby", b"more")
    ack = await a2.request({"type": "send", "room": "lobby", "attachments": [only["id"]]})
    assert ack["type"] == "ack", ack
    assert (await b1.recv_type("message"))["message"]["text"] == ""
    assert (await a2.request({"type": "send", "room": "lobby", "text": " "}))["code"] == "text_empty"
    # A resume of version 2 replays the message with its files; version 1's without.
    joined = await a2.join("lobby")
    epoch = joined["room"]["epoch"]
    replay = await a2.join("lobby", after_seq=ack["seq"] - 2, epoch=epoch)
    assert replay["events"][0]["message"]["attachments"] == [pic, doc]
    replay1 = await b1.join("lobby", after_seq=ack["seq"] - 2, epoch=epoch)
    assert replay1["recovered"] and "attachments" not in replay1["messages"][0]


async def test_attachments_must_be_the_senders_own_unattached_uploads_in_the_room(connect):
    ada, bob = await make_user("ada"), await make_user("bob")
    await make_room("lobby")
    await make_room("other")
    a2 = await connect(ada, protocol=2)
    await a2.join("lobby")
    bobs = await uploaded(bob, "lobby", b"bob's")
    elsewhere = await uploaded(ada, "other", b"other room")
    mine = await uploaded(ada, "lobby", b"mine")

    async def refused(ids: Any, code: str = "attachment_not_found") -> None:
        reply = await a2.request({"type": "send", "room": "lobby", "text": "x", "attachments": ids})
        assert reply["type"] == "error" and reply["code"] == code and reply.get("field") == "attachments", reply

    await refused([bobs["id"]])
    await refused([elsewhere["id"]])
    await refused([10**9])
    await refused([mine["id"], mine["id"]])
    await refused(["1"], "bad_field")
    await refused(7, "bad_field")
    assert (await a2.request({"type": "send", "room": "lobby", "text": "x", "attachments": [mine["id"]]}))["type"] == "ack"
    await refused([mine["id"]])  # attached already
    with override_parley(MAX_ATTACHMENTS_PER_MESSAGE=2):
        await refused([1, 2, 3], "too_many_attachments")
    assert await database_sync_to_async(Message.objects.filter(kind="message").count)() == 1
    # Version 1 knows no attachments: the field is ignored, the text is sent.
    a1 = await connect(ada)
    await a1.join("lobby")
    other = await uploaded(ada, "lobby", b"v1")
    assert (await a1.request({"type": "send", "room": "lobby", "text": "v1", "attachments": [other["id"]]}))["type"] == "ack"
    assert await database_sync_to_async(Attachment.objects.filter(pk=other["id"], message__isnull=True).exists)()


async def test_an_expired_upload_cannot_be_attached(connect):
    ada = await make_user("ada")
    await make_room("lobby")
    a2 = await connect(ada, protocol=2)
    await a2.join("lobby")
    up = await uploaded(ada, "lobby", b"old")
    await database_sync_to_async(Attachment.objects.filter(pk=up["id"]).update)(
        created_at=timezone.now() - timedelta(days=2))
    reply = await a2.request({"type": "send", "room": "lobby", "text": "x", "attachments": [up["id"]]})
    assert reply["code"] == "attachment_not_found"


def test_one_batch_cannot_give_one_upload_to_two_messages():
    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    up = upload(token(ada), "lobby", b"once").json()["upload"]
    results = services.message_create_batch(items=[(ada, room.pk, "a", None), (ada, room.pk, "b", None),
                                                   (ada, room.pk, "plain", None)],
                                            attachments=[(up["id"],), (up["id"],), ()])
    assert isinstance(results[0], tuple) and results[0][0].attachments[0]["id"] == up["id"]
    assert isinstance(results[1], services.MessageRefused) and results[1].code == "attachment_not_found"
    assert isinstance(results[2], tuple) and results[2][0].attachments is None
    assert Attachment.objects.get().message_id == results[0][0].pk
    assert Message.objects.get(pk=results[0][0].pk).attachments == results[0][0].attachments


def test_the_item_by_item_path_attaches_too(monkeypatch):
    """A batch that hits a constraint is stored item by item (parley.services): files go along."""
    from django.db import IntegrityError

    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    up = upload(token(ada), "lobby", b"careful").json()["upload"]

    def conflict(*args: Any) -> None:
        raise IntegrityError("a retry of one of these client_ids committed elsewhere")

    monkeypatch.setattr(services, "_messages_create_together", conflict)
    results = services.message_create_batch(items=[(ada, room.pk, "", None), (ada, room.pk, "plain", None)],
                                            attachments=[(up["id"],), ()])
    message = results[0][0]
    assert message.attachments[0]["id"] == up["id"] and results[1][0].attachments is None
    assert Attachment.objects.get().message_id == message.pk


def test_http_post_and_post_message_take_attachments():
    ada, bob = user("ada"), user("bob")
    room = services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    up = upload(raw, "lobby", png(), name="p.png").json()["upload"]
    r = api(raw, "post", "/api/rooms/lobby/messages", {"text": "", "attachments": [up["id"]]})
    assert r.status_code == 201, r.content
    assert r.json()["message"]["attachments"] == [up]
    error(api(raw, "post", "/api/rooms/lobby/messages", {"text": "x", "attachments": [up["id"]]}), 404,
          "attachment_not_found")
    with override_parley(MAX_ATTACHMENTS_PER_MESSAGE=1):
        error(api(raw, "post", "/api/rooms/lobby/messages", {"text": "x", "attachments": [1, 2]}), 400,
              "too_many_attachments")
    second = upload(raw, "lobby", b"text").json()["upload"]
    with pytest.raises(parley.MessageRefused) as refused:
        parley.post_message(room, "x", author=bob, attachments=[second["id"]])
    assert refused.value.code == "attachment_not_found"
    message = parley.post_message(room, "here", author=ada, attachments=[second["id"]])
    assert message.attachments[0]["id"] == second["id"]
    got = api(raw, "get", f"/api/rooms/lobby/messages/{message.seq}")
    assert got.json()["message"]["attachments"][0]["url"] == second["url"]


# --- who may download, and the files' lives -----------------------------------------------------


def test_downloads_are_authorized_as_the_room():
    ada, bob, eve = user("ada"), user("bob"), user("eve")
    room = services.room_create(slug="secret", title="Secret", owner=ada, is_private=True)
    services.membership_add(room=room, user=bob)
    services.room_create(slug="lobby", title="Lobby")
    a, b, e = token(ada), token(bob), token(eve)
    up = upload(a, "secret", b"classified").json()["upload"]
    error(api(b, "get", up["url"]), 404, "upload_not_found")  # unattached: its uploader's only
    assert body_of(api(a, "get", up["url"])) == b"classified"
    parley.post_message(room, "see", author=ada, attachments=[up["id"]])
    assert body_of(api(b, "get", up["url"])) == b"classified"
    error(api(e, "get", up["url"]), 404, "upload_not_found")
    error(api(a, "get", up["url"].replace("secret", "lobby")), 404, "upload_not_found")  # the path's room
    error(api(a, "get", "/api/rooms/secret/uploads/999999"), 404, "upload_not_found")
    error(Client().get(up["url"]), 401, "unauthenticated")
    services.membership_remove(room=room, user=bob)
    error(api(b, "get", up["url"]), 404, "upload_not_found")
    staff = user("root", is_staff=True)
    assert body_of(api(token(staff), "get", up["url"])) == b"classified"


def test_deleting_a_message_deletes_its_files(_storage):
    ada, bob = user("ada"), user("bob")
    room = services.room_create(slug="lobby", title="Lobby", owner=ada)
    raw = token(bob)
    up = upload(raw, "lobby", b"to be deleted").json()["upload"]
    name = Attachment.objects.get(pk=up["id"]).file
    message = parley.post_message(room, "file", author=bob, attachments=[up["id"]])
    assert storages["default"].exists(name)
    from parley.conversation import message_delete
    change = message_delete(room=room, actor=ada, seq=message.seq)
    assert change.message.attachments is None
    assert not Attachment.objects.exists() and not storages["default"].exists(name)
    error(api(raw, "get", up["url"]), 404, "upload_not_found")
    assert "attachments" not in api(raw, "get", f"/api/rooms/lobby/messages/{message.seq}").json()["message"]


def test_a_file_missing_from_the_storage_is_upload_not_found(_storage, caplog):
    ada = user("ada")
    services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    up = upload(raw, "lobby", b"soon gone").json()["upload"]
    storages["default"].delete(Attachment.objects.get(pk=up["id"]).file)
    error(api(raw, "get", up["url"]), 404, "upload_not_found")
    assert "missing from the storage" in caplog.text


def test_deleting_a_room_deletes_its_files():
    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    ups = [upload(raw, "lobby", b"a").json()["upload"], upload(raw, "lobby", b"b").json()["upload"]]
    parley.post_message(room, "one", author=ada, attachments=[ups[0]["id"]])
    names = list(Attachment.objects.values_list("file", flat=True))
    Room.objects.filter(pk=room.pk).delete()
    assert not any(storages["default"].exists(n) for n in names)


def test_unattached_uploads_expire():
    ada = user("ada")
    room = services.room_create(slug="lobby", title="Lobby")
    raw = token(ada)
    old, kept, fresh = (upload(raw, "lobby", c).json()["upload"] for c in (b"old", b"kept", b"fresh"))
    parley.post_message(room, "kept", author=ada, attachments=[kept["id"]])
    long_ago = timezone.now() - timedelta(seconds=24 * 3600 + 5)
    Attachment.objects.filter(pk__in=[old["id"], kept["id"]]).update(created_at=long_ago)
    old_file = Attachment.objects.get(pk=old["id"]).file
    out = io.StringIO()
    call_command("parley_expire_uploads", stdout=out)
    assert "deleted 1 expired" in out.getvalue()
    assert set(Attachment.objects.values_list("pk", flat=True)) == {kept["id"], fresh["id"]}
    assert not storages["default"].exists(old_file)
    # Lazily too: an upload sweeps what expired before it.
    with override_parley(UPLOAD_UNATTACHED_TTL_SECS=60):
        Attachment.objects.filter(pk=fresh["id"]).update(created_at=timezone.now() - timedelta(seconds=61))
        upload(raw, "lobby", b"new")
        assert not Attachment.objects.filter(pk=fresh["id"]).exists()
        assert uploads_expired_delete() == 0


async def test_a_removed_member_loses_the_files_live(connect):
    """The download and the room go together: a member removed mid-conversation gets 404."""
    ada, bob = await make_user("ada"), await make_user("bob")
    room = await make_room("secret", owner=ada, private=True)
    await database_sync_to_async(services.membership_add)(room=room, user=bob)
    a2, b2 = await connect(ada, protocol=2), await connect(bob, protocol=2)
    await a2.join("secret")
    await b2.join("secret")
    up = await uploaded(ada, "secret", png(), name="p.png")
    await a2.request({"type": "send", "room": "secret", "text": "pic", "attachments": [up["id"]]})
    url = (await b2.recv_type("message"))["message"]["attachments"][0]["url"]
    raw = await database_sync_to_async(token)(bob)
    assert await database_sync_to_async(lambda: body_of(api(raw, "get", url)))() == png()
    await database_sync_to_async(services.membership_remove)(room=room, user=bob)
    assert (await b2.recv_type("left"))["reason"] == "removed"
    assert (await database_sync_to_async(api)(raw, "get", url)).status_code == 404
    await asyncio.sleep(0)
    assert await database_sync_to_async(Membership.objects.filter(user=bob).count)() == 0
