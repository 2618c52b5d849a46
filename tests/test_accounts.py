"""The standalone server's account pages, hardened: django-axes's lockout per username and address
(config/settings.py AXES_*, config/auth.py), the disabled-account message, password reset by
e-mail and its limits, and django-csp's policy. Driven through Django's test clients, which run
the real URLconf, middleware and backends (and, for AsyncClient, the ASGI handler)."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core import mail
from django.db.models import F
from django.test import AsyncClient, Client

from parley.http_security import CONTENT_SECURITY_POLICY, CSP_DIRECTIVES, PERMISSIONS_POLICY
from parley.throttles import DISABLED_ACCOUNT_MESSAGE
from tests.conftest import PASSWORD, user

pytestmark = pytest.mark.django_db

INVALID_LOGIN = b"Please enter a correct username and password"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lockout(settings: Any) -> Any:
    """Three failures per username and address within 15 minutes lock the pair."""
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    return settings


def sign_in(username: str, password: str, address: str, path: str = "/accounts/login/",
            **headers: Any) -> Any:
    client = Client()
    response = client.post(path, {"username": username, "password": password},
                           REMOTE_ADDR=address, **headers)
    response.signed_in = client.get("/api/me").status_code == 200
    return response


def assert_locked_out(response: Any) -> None:
    assert response.status_code == 429, response.status_code
    assert int(response["Retry-After"]) == 15 * 60
    assert b'data-testid="locked-out"' in response.content
    assert b"locked for 15 minutes" in response.content
    assert not response.signed_in


# --- django-axes: failures per username and address ----------------------------------------------

def test_failures_lock_the_username_from_that_address_only(lockout):
    user("carol_x")
    for i in range(2):
        response = sign_in("carol_x", f"wrong-{i}", "198.51.100.1")
        assert response.status_code == 200 and INVALID_LOGIN in response.content
    assert_locked_out(sign_in("carol_x", "wrong-2", "198.51.100.1"))  # the third one
    assert_locked_out(sign_in("carol_x", PASSWORD, "198.51.100.1"))  # even the right password
    # The victim, from their own address, is not locked out by a stranger's failures …
    assert sign_in("carol_x", PASSWORD, "198.51.100.2").signed_in
    # … and the stranger's address may still sign in as someone else.
    user("dave_x")
    assert sign_in("dave_x", PASSWORD, "198.51.100.1").signed_in


def test_failures_are_stored_in_the_database_for_every_process(lockout):
    user("erin_x")
    for _ in range(2):
        sign_in("erin_x", "wrong-password", "198.51.100.3")
    attempt = AccessAttempt.objects.get(username="erin_x", ip_address="198.51.100.3")
    assert attempt.failures_since_start == 2
    assert "wrong-password" not in attempt.post_data  # axes masks the password it records


def test_the_lockout_ends_after_the_cool_off(lockout):
    user("fay_x")
    for _ in range(3):
        sign_in("fay_x", "wrong-password", "198.51.100.4")
    assert_locked_out(sign_in("fay_x", PASSWORD, "198.51.100.4"))
    # As if the cool-off had passed since the last failure.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=16))
    assert sign_in("fay_x", PASSWORD, "198.51.100.4").signed_in


def test_a_successful_sign_in_clears_the_pairs_failures(lockout):
    user("gus_x")
    for _ in range(2):
        sign_in("gus_x", "wrong-password", "198.51.100.5")
    assert sign_in("gus_x", PASSWORD, "198.51.100.5").signed_in
    for _ in range(2):
        assert sign_in("gus_x", "wrong-password", "198.51.100.5").status_code == 200
    assert_locked_out(sign_in("gus_x", "wrong-password", "198.51.100.5"))


def test_unknown_usernames_are_counted_and_answered_alike(lockout):
    """Nothing tells a username that exists from one that does not: the same error, then the
    same lockout page."""
    user("hal_x")
    for name in ("hal_x", "nobody_x"):
        responses = [sign_in(name, "wrong-password", "198.51.100.6") for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert all(INVALID_LOGIN in r.content for r in responses[:2])
        assert_locked_out(responses[2])
        assert name.encode() not in responses[2].content


def test_the_admin_sign_in_is_locked_out_too(lockout):
    get_user_model().objects.create_superuser("root_x", "root@example.com", PASSWORD)
    for _ in range(2):
        assert sign_in("root_x", "wrong-password", "198.51.100.7", path="/admin/login/").status_code == 200
    assert_locked_out(sign_in("root_x", "wrong-password", "198.51.100.7", path="/admin/login/"))
    assert_locked_out(sign_in("root_x", PASSWORD, "198.51.100.7", path="/admin/login/"))
    assert_locked_out(sign_in("root_x", PASSWORD, "198.51.100.7"))  # one count for both pages


def test_the_address_is_remote_addr_not_a_header_the_client_sends(lockout):
    """Behind a proxy uvicorn puts the forwarded client address in REMOTE_ADDR (for trusted
    proxies only); a client's own X-Forwarded-For must not give it fresh addresses."""
    user("ivy_x")
    for i in range(3):
        response = sign_in("ivy_x", "wrong-password", "198.51.100.8",
                           HTTP_X_FORWARDED_FOR=f"203.0.113.{i + 50}")
    assert_locked_out(response)
    assert set(AccessAttempt.objects.filter(username="ivy_x").values_list("ip_address", flat=True)) \
        == {"198.51.100.8"}


def test_a_request_without_an_address_is_counted_without_one(lockout):
    """No REMOTE_ADDR (uvicorn on a unix socket): axes keys the pair by the username alone and
    stores no address (PostgreSQL's inet column takes no placeholder)."""
    user("abe_x")
    assert sign_in("abe_x", "wrong-password", "").status_code == 200
    assert AccessAttempt.objects.get(username="abe_x").ip_address is None
    assert sign_in("abe_x", PASSWORD, "").signed_in


@pytest.mark.django_db(transaction=True)  # the view runs on another thread's connection
async def test_the_lockout_page_through_the_asgi_handler(lockout):
    """The server runs Django's middleware in async mode, where axes calls the lockout page with
    other arguments."""
    await services_user("jay_x")
    client = AsyncClient(REMOTE_ADDR="198.51.100.9")
    for _ in range(2):
        response = await client.post("/accounts/login/", {"username": "jay_x", "password": "nope"})
        assert response.status_code == 200
    response = await client.post("/accounts/login/", {"username": "jay_x", "password": PASSWORD + "?"})
    assert response.status_code == 429 and int(response["Retry-After"]) == 15 * 60
    assert b'data-testid="locked-out"' in response.content


async def services_user(name: str) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(user)(name)


# --- disabled accounts --------------------------------------------------------------------------

def test_a_disabled_account_is_told_so_only_with_its_right_password():
    user("kim_x", is_active=False)
    right = sign_in("kim_x", PASSWORD, "198.51.100.10")
    assert right.status_code == 200 and not right.signed_in
    assert DISABLED_ACCOUNT_MESSAGE.encode() in right.content
    wrong = sign_in("kim_x", "wrong-password", "198.51.100.10")
    assert wrong.status_code == 200 and not wrong.signed_in
    assert DISABLED_ACCOUNT_MESSAGE.encode() not in wrong.content and INVALID_LOGIN in wrong.content


def test_a_disabled_account_is_told_so_on_the_admin_sign_in_too():
    get_user_model().objects.create_superuser("lee_x", "lee@example.com", PASSWORD, is_active=False)
    response = sign_in("lee_x", PASSWORD, "198.51.100.11", path="/admin/login/")
    assert response.status_code == 200 and DISABLED_ACCOUNT_MESSAGE.encode() in response.content


def test_sessions_signed_in_by_djangos_model_backend_stay_signed_in():
    """Sessions name the backend that signed them in: those from before the standalone server
    had its own password backend (or from a process not yet upgraded) still work."""
    client = Client()
    client.force_login(user("pat_x"), backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/api/me").status_code == 200


class CountingHasher(MD5PasswordHasher):
    """A real hasher that counts how often a password is hashed, to check, or to waste time."""

    algorithm = "counting_md5"
    hashed = 0

    def encode(self, password: str, salt: str) -> str:
        CountingHasher.hashed += 1
        return super().encode(password, salt)


@pytest.mark.parametrize("username", ["rae_x", "nobody_r"])
def test_a_failed_sign_in_hashes_the_password_once(settings, username):
    """Django's ModelBackend, listed after Parley's for old sessions, never checks the same
    password a second time — for a known username or an unknown one."""
    settings.PASSWORD_HASHERS = ["tests.test_accounts.CountingHasher"]
    user("rae_x")
    CountingHasher.hashed = 0
    assert sign_in(username, "wrong-password", "198.51.100.21").status_code == 200
    assert CountingHasher.hashed == 1
    CountingHasher.hashed = 0
    assert sign_in("rae_x", PASSWORD, "198.51.100.21").signed_in
    assert CountingHasher.hashed == 1


# --- password reset -----------------------------------------------------------------------------

def reset_link(message: Any) -> str:
    match = re.search(r"http://testserver(/accounts/reset/[^/\s]+/[^/\s]+/)", message.body)
    assert match, message.body
    return match.group(1)


def request_reset(email: str, address: str) -> Any:
    return Client().post("/accounts/password_reset/", {"email": email}, REMOTE_ADDR=address)


def test_password_reset_by_mail_sets_a_password_that_signs_in():
    user("mia_x", email="mia@example.com")
    page = Client().get("/accounts/login/")
    assert b'href="/accounts/password_reset/"' in page.content  # linked from the sign-in page

    response = request_reset("MIA@example.com", "198.51.100.12")
    assert response.status_code == 302 and response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["mia@example.com"] and "mia_x" in message.body

    client = Client()
    form_url = client.get(reset_link(message))["Location"]  # Django swaps the token for a session
    assert client.get(form_url).status_code == 200
    new_password = "a-Fresh-passphrase-42"
    response = client.post(form_url, {"new_password1": new_password, "new_password2": new_password})
    assert response.status_code == 302 and response["Location"] == "/accounts/reset/done/"
    assert b"Sign in with the new one" in client.get("/accounts/reset/done/").content

    assert not sign_in("mia_x", PASSWORD, "198.51.100.12").signed_in
    assert sign_in("mia_x", new_password, "198.51.100.12").signed_in
    again = Client().get(reset_link(message), follow=True)  # the link works once
    assert b'data-testid="password-reset-invalid"' in again.content


def test_password_reset_for_an_unknown_address_answers_the_same_and_sends_nothing():
    response = request_reset("nobody@example.com", "198.51.100.13")
    assert response.status_code == 302 and response["Location"] == "/accounts/password_reset/done/"
    assert mail.outbox == []


def test_password_reset_with_a_forged_host_sends_no_link():
    """The link's host is the request's Host, which Django takes only from ALLOWED_HOSTS."""
    user("rex_x", email="rex@example.com")
    response = Client().post("/accounts/password_reset/", {"email": "rex@example.com"},
                             HTTP_HOST="evil.example", REMOTE_ADDR="198.51.100.22")
    assert response.status_code == 400
    assert mail.outbox == []


def test_password_reset_mails_per_email_address_are_limited(parley_settings):
    parley_settings.PASSWORD_RESETS_PER_EMAIL_PER_HOUR = 2
    user("ned_x", email="ned@example.com")
    for address in ("198.51.100.14", "198.51.100.15"):
        assert request_reset("ned@example.com", address).status_code == 302
    response = request_reset("Ned@Example.com", "198.51.100.16")  # from anywhere, any case
    assert response.status_code == 429 and 1700 < int(response["Retry-After"]) <= 1800
    assert b"Too many password reset requests" in response.content
    assert len(mail.outbox) == 2
    # An address no account has is limited alike: the answer does not tell which exist.
    for _ in range(2):
        assert request_reset("ghost@example.com", "198.51.100.17").status_code == 302
    assert request_reset("ghost@example.com", "198.51.100.17").status_code == 429


def test_password_reset_requests_per_client_address_are_limited(parley_settings):
    parley_settings.PASSWORD_RESETS_PER_IP_PER_HOUR = 2
    parley_settings.PASSWORD_RESETS_PER_EMAIL_PER_HOUR = 1
    for name in ("spam_a", "spam_b"):
        assert request_reset(f"{name}@example.com", "198.51.100.18").status_code == 302
    response = request_reset("spam_c@example.com", "198.51.100.18")
    assert response.status_code == 429 and 1700 < int(response["Retry-After"]) <= 1800
    assert b"Too many password reset requests" in response.content
    # The refused request cost spam_c@ nothing: its one request an hour is still there.
    assert request_reset("spam_c@example.com", "198.51.100.19").status_code == 302


# --- Content-Security-Policy (django-csp) and Permissions-Policy ------------------------------

def directives(header: str) -> dict[str, list[str]]:
    parts = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in parts}


def test_the_chat_page_carries_parleys_policy():
    user("oz_x")
    client = Client()
    client.force_login(get_user_model().objects.get(username="oz_x"))
    response = client.get("/")
    assert response.status_code == 200
    assert directives(response["Content-Security-Policy"]) == CSP_DIRECTIVES
    assert directives(CONTENT_SECURITY_POLICY) == CSP_DIRECTIVES  # the string for hosts: the same
    assert "nonce-" not in response["Content-Security-Policy"]
    assert response["Permissions-Policy"] == PERMISSIONS_POLICY


def test_the_admin_goes_without_the_policy_but_keeps_the_other_headers():
    response = Client().get("/admin/login/")
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response
    assert response["Permissions-Policy"] == PERMISSIONS_POLICY
    assert response["X-Frame-Options"] == "DENY"


def test_the_parley_package_imports_neither_axes_nor_csp():
    """A host project adds Parley without django-axes or django-csp: only the standalone server
    (config/) uses them."""
    offenders = []
    for path in (ROOT / "parley").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[0] in ("axes", "csp")]
    assert offenders == []
