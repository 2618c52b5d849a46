"""parley.urls mounted under a host's prefix, and the pieces a host's asgi.py uses.

tests/test_host_project.py does all of this end to end in a real host project on the installed
wheel (slow); these are the same rules, quick, inside the standalone server's test settings.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
from django.test import Client
from django.urls import include, path

from parley import services

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"

# A host's URLconf: Parley under chat/, a sign-in page of its own and no view named "logout".
hosturls = types.ModuleType("tests_host_urls")
hosturls.urlpatterns = [path("chat/", include("parley.urls"))]  # type: ignore[attr-defined]
sys.modules["tests_host_urls"] = hosturls


@pytest.fixture
def host(settings):
    settings.ROOT_URLCONF = "tests_host_urls"
    settings.LOGIN_URL = "/sign-in/"
    return settings


def test_the_page_and_the_api_live_under_the_hosts_prefix(host):
    services.user_create(username="ada", password=PASSWORD)
    client = Client()
    assert client.login(username="ada", password=PASSWORD)
    page = client.get("/chat/")
    assert page.status_code == 200
    html = page.content.decode()
    for attribute in ('data-api-me="/chat/api/me"', 'data-api-rooms="/chat/api/rooms"',
                      'data-app-url="/chat/"', 'data-socket-path="/ws/chat/"', 'data-login-url="/sign-in/"'):
        assert attribute in html
    assert 'data-testid="logout"' not in html
    assert client.get("/chat/api/rooms").status_code == 200
    assert client.get("/api/rooms").status_code == 404


def test_anonymous_visitors_go_to_the_hosts_login_url(host):
    response = Client().get("/chat/")
    assert response.status_code == 302
    assert response["Location"] == "/sign-in/?next=/chat/"


def test_bearer_tokens_work_on_the_api_without_the_middleware(host):
    host.MIDDLEWARE = [m for m in host.MIDDLEWARE if m != "parley.http_auth.BearerTokenMiddleware"]
    user = services.user_create(username="ada")
    raw = services.token_create(user=user, name="t")[1]
    response = Client().get("/chat/api/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.json()["user"]["username"] == "ada"
    wrong = Client().get("/chat/api/me", headers={"Authorization": "Bearer prl_wrong"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_token")
    # A session-less write with a token needs no CSRF token.
    created = Client(enforce_csrf_checks=True).post(
        "/chat/api/rooms", data=json.dumps({"slug": "ops", "title": "Ops"}),
        content_type="application/json", headers={"Authorization": f"Bearer {raw}"})
    assert created.status_code == 201


def test_api_errors_are_json_under_the_prefix(host):
    from parley.views import is_api

    client = Client()
    unknown = client.get("/chat/api/nope")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert is_api(unknown.wsgi_request)
    assert not is_api(client.get("/chat/").wsgi_request)


def test_the_standalone_page_keeps_its_own_urls():
    services.user_create(username="ada", password=PASSWORD)
    client = Client()
    assert client.login(username="ada", password=PASSWORD)
    html = client.get("/").content.decode()
    assert 'data-api-rooms="/api/rooms"' in html and 'data-login-url="/accounts/login/"' in html
    assert 'data-testid="logout"' in html


def test_websocket_application_is_the_stack_config_asgi_serves():
    import config.asgi
    import parley.asgi
    from parley.ws_auth import HandshakeRateLimit

    stack = parley.asgi.websocket_application()
    assert isinstance(stack, HandshakeRateLimit)
    assert type(config.asgi.application.application_mapping["websocket"]) is type(stack)
