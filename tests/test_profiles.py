"""People (docs/protocol.md §15): display names, avatars re-encoded before anyone sees them, and
profiles looked up by id."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.test import Client
from PIL import Image

from parley import profiles, services
from parley.models import Profile
from tests.conftest import user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Any) -> Any:
    """The default storage (where avatars go) in a folder of this test's own."""
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "media")}}}
    return tmp_path / "media"


def bearer(u: Any) -> Client:
    raw = services.token_create(user=u, name="t")[1]
    return Client(headers={"Authorization": f"Bearer {raw}"})


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (300, 200), colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def patch(client: Client, body: Any) -> Any:
    return client.patch("/api/profile", data=json.dumps(body), content_type="application/json")


def put_avatar(client: Client, data: bytes, content_type: str = "image/png") -> Any:
    return client.put("/api/profile/avatar", data=data, content_type=content_type)


def test_a_new_user_shows_as_their_full_name_or_username():
    ada = user("ada")
    client = bearer(ada)
    assert client.get("/api/profile").json() == {"profile": {
        "id": ada.pk, "username": "ada", "name": "ada", "display_name": "", "avatar": None}}
    ada.first_name, ada.last_name = "Ada", "Lovelace"
    ada.save()
    assert client.get("/api/profile").json()["profile"]["name"] == "Ada Lovelace"


def test_display_name_is_set_tidied_and_cleared():
    ada = user("ada")
    client = bearer(ada)
    got = patch(client, {"display_name": "  Ada \n  the   Countess "}).json()["profile"]
    assert got["name"] == got["display_name"] == "Ada the Countess"
    assert patch(client, {"display_name": ""}).json()["profile"]["name"] == "ada"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"display_name": "x" * 65}, 400, "display_name_too_long"),
    ({"display_name": 7}, 400, "bad_field"),
    ({"display_name": None}, 400, "bad_field"),
    ({}, 400, "missing_field"),
    ({"display_name": "a\x00b"}, 400, "bad_json"),
])
def test_bad_display_names_are_refused_and_change_nothing(body, status, code):
    ada = user("ada")
    client = bearer(ada)
    patch(client, {"display_name": "Ada"})
    response = patch(client, body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert client.get("/api/profile").json()["profile"]["name"] == "Ada"


def test_writes_need_csrf_with_a_session_and_credentials_at_all():
    user("ada")
    from tests.conftest import PASSWORD

    session = Client(enforce_csrf_checks=True)
    assert session.login(username="ada", password=PASSWORD)
    assert patch(session, {"display_name": "Ada"}).json()["error"]["code"] == "csrf_failed"
    assert Client().get("/api/profiles?ids=1").status_code == 401


def test_profiles_by_id_leave_out_unknown_and_deactivated_users():
    ada, bob, gone = user("ada"), user("bob"), user("gone")
    patch(bearer(bob), {"display_name": "Bobby"})
    gone.is_active = False
    gone.save()
    got = bearer(ada).get(f"/api/profiles?ids={bob.pk},{ada.pk},{gone.pk},999999").json()["profiles"]
    assert [(p["id"], p["name"]) for p in got] == [(ada.pk, "ada"), (bob.pk, "Bobby")]


@pytest.mark.parametrize("ids", ["", "1,", "a", "1;2", "-1", "1,,2", "1" * 17])
def test_profile_ids_must_be_a_list_of_numbers(ids):
    response = bearer(user("ada")).get(f"/api/profiles?ids={ids}")
    assert (response.status_code, response.json()["error"]["field"]) == (400, "ids")


def test_too_many_ids_in_one_lookup(settings):
    settings.PARLEY = {"MAX_PROFILE_IDS": 3}
    client = bearer(user("ada"))
    assert client.get("/api/profiles?ids=1,2,3").status_code == 200
    response = client.get("/api/profiles?ids=1,2,3,4")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "too_many_ids")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_an_avatar_is_stored_as_a_square_png_and_served_safely(fmt, media):
    ada, bob = user("ada"), user("bob")
    got = put_avatar(bearer(ada), image_bytes(fmt), f"image/{fmt.lower()}").json()["profile"]
    assert got["avatar"] == f"/api/profiles/{ada.pk}/avatar?v=1"
    response = bearer(bob).get(got["avatar"])  # any signed-in user may see it
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Content-Disposition"] == 'inline; filename="avatar.png"'
    served = Image.open(io.BytesIO(response.content))
    assert (served.format, served.size) == ("PNG", (profiles.AVATAR_SIZE_PX, profiles.AVATAR_SIZE_PX))
    assert Client().get(got["avatar"]).status_code == 401
    assert len(list((media / "parley" / "avatars").iterdir())) == 1


def test_a_new_avatar_gets_a_new_url_and_replaces_the_old_file(media):
    ada = user("ada")
    client = bearer(ada)
    put_avatar(client, image_bytes(colour="red"))
    second = put_avatar(client, image_bytes(colour="blue")).json()["profile"]["avatar"]
    assert second.endswith("?v=2")
    assert [p.name for p in (media / "parley" / "avatars").iterdir()] == [f"{ada.pk}-2.png"]
    pixel = Image.open(io.BytesIO(client.get(second).content)).convert("RGB").getpixel((64, 64))
    assert pixel == (0, 0, 255)
    cleared = client.delete("/api/profile/avatar").json()["profile"]
    assert cleared["avatar"] is None
    assert client.get(f"/api/profiles/{ada.pk}/avatar").status_code == 404
    assert list((media / "parley" / "avatars").iterdir()) == []


@pytest.mark.parametrize("data", [
    b"<html><script>alert(1)</script></html>",
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    b"GIF89a<script>alert(1)</script>",  # a "GIF" that is really a script
    image_bytes("BMP"),  # a real image, not one of the four formats
    image_bytes()[:60],  # a truncated PNG
    b"",
])
def test_what_is_not_a_usable_image_is_refused(data):
    ada = user("ada")
    response = put_avatar(bearer(ada), data)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_image")
    assert not Profile.objects.filter(user=ada).exclude(avatar="").exists()


def test_image_size_limits_in_bytes_and_in_pixels(settings):
    settings.PARLEY = {"AVATAR_MAX_BYTES": 1000, "AVATAR_MAX_PIXELS": 10_000}
    client = bearer(user("ada"))
    big = image_bytes(size=(2000, 2000), colour="red")
    assert len(big) > 1000
    response = put_avatar(client, big)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "avatar_too_large")
    settings.PARLEY = {"AVATAR_MAX_PIXELS": 10_000}
    # A few hundred bytes that would decode to 4 million pixels: refused from the header.
    response = put_avatar(client, big)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "avatar_too_large")
    assert put_avatar(client, image_bytes(size=(100, 100))).status_code == 200


def test_profile_changes_are_rate_limited_refused_ones_included(settings):
    from parley import limits

    settings.PARLEY = {"PROFILE_UPDATES_PER_HOUR": 2}
    ada = user("ada")
    client = bearer(ada)
    try:
        assert patch(client, {"display_name": 5}).status_code == 400  # refused, and charged
        assert patch(client, {"display_name": "Ada"}).status_code == 200
        response = put_avatar(client, image_bytes())
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
        assert int(response["Retry-After"]) >= 1 and response.json()["error"]["retry_after_ms"] > 0
        assert client.get("/api/profile").status_code == 200  # reads are not charged
    finally:
        limits.PROFILE_UPDATE_BUCKETS.forget(ada.pk)  # ids are reused by the next tests


def test_a_deactivated_users_avatar_is_not_served():
    ada = user("ada")
    url = put_avatar(bearer(ada), image_bytes()).json()["profile"]["avatar"]
    viewer = bearer(user("bob"))
    assert viewer.get(url).status_code == 200
    ada.is_active = False
    ada.save()
    assert viewer.get(url).status_code == 404
