"""Parley as a host project adds it (README, "Add Parley to your Django project").

A throwaway Django project is written to a temp dir: its own user model (email login, no
`username` field), its own sign-in page and LOGIN_URL, its own layout around the chat page
(templates/parley/base.html), Parley under the URL prefix chat/, and the asgi.py of the README.
The wheel is built from this checkout and installed into a fresh venv on Python 3.13 (the
hashed base lock, then the wheel with --no-deps), the host is migrated and served by uvicorn,
and two users chat through it: one by a token made with create_token on the host's user model,
one by the session cookie of the host's own sign-in page.
"""

from __future__ import annotations

import glob
import http.cookiejar
import json
import os
import shutil
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.support.server import REPO, free_port

pytestmark = pytest.mark.slow

UV = REPO / ".cache" / "tools" / "bin" / "uv"
HOST_PYTHON = "3.13"

SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "host-project-test"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "accounts",
    "channels",
    "parley",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "hostsite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [BASE_DIR / "templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth"]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "host.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "/sign-in/"
STATIC_URL = "/static/"
ASGI_APPLICATION = "hostsite.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Parley's one settings dict: every key it does not name keeps its default.
PARLEY = {"RESERVED_SLUGS": ["admin"]}
"""

URLS = """
from django.contrib.auth.views import LoginView
from django.urls import include, path

urlpatterns = [
    path("sign-in/", LoginView.as_view(template_name="host_login.html"), name="host-login"),
    path("chat/", include("parley.urls")),
]
"""

# README, "Add Parley to your Django project", as a host writes it.
ASGI = """
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

import parley.asgi  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": parley.asgi.websocket_application(),
})
"""

MANAGE = """
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostsite.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

USER_MODEL = """
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models


class UserManager(BaseUserManager):
    def create_user(self, email, password=None, **extra):
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)

    objects = UserManager()
    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
"""

# The host's layout; Parley's page goes where its two blocks are placed.
HOST_BASE = """<!doctype html>
<html><head><title>Host site</title>{% block extra_head %}{% endblock %}</head>
<body><header id="host-header">Host site navigation</header>
<div id="host-main">{% block main %}{% endblock %}</div></body></html>
"""
PARLEY_BASE_OVERRIDE = """{% extends "host_base.html" %}
{% block extra_head %}{% block parley_head %}{% endblock %}{% endblock %}
{% block main %}{% block parley_content %}{% endblock %}{% endblock %}
"""
HOST_LOGIN = """{% extends "host_base.html" %}
{% block main %}<form method="post">{% csrf_token %}{{ form }}<button>Sign in</button></form>{% endblock %}
"""


def find_python(version: str) -> str | None:
    """The interpreter scripts/lib/common.sh's find_python would pick: on PATH, or pyenv's."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))]
    for candidate in candidates:
        if candidate and subprocess.run(
                [candidate, "-c", f"import sys; sys.exit('%d.%d' % sys.version_info[:2] != {version!r})"],
                capture_output=True).returncode == 0:
            return candidate
    return None


def write_host(root: Path) -> None:
    files = {
        "manage.py": MANAGE,
        "hostsite/__init__.py": "",
        "hostsite/settings.py": SETTINGS,
        "hostsite/urls.py": URLS,
        "hostsite/asgi.py": ASGI,
        "accounts/__init__.py": "",
        "accounts/models.py": USER_MODEL,
        "accounts/migrations/__init__.py": "",
        "templates/host_base.html": HOST_BASE,
        "templates/host_login.html": HOST_LOGIN,
        "templates/parley/base.html": PARLEY_BASE_OVERRIDE,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def build_wheel(dist: Path, env: dict[str, str]) -> Path:
    # setuptools builds in build/ beside the sources and copies what it finds there: a stale
    # build/lib would put files that are gone from the checkout into the wheel.
    for leftover in (REPO / "build", REPO / "parley.egg-info"):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        run([str(UV), "build", "--wheel", "--out-dir", str(dist), str(REPO)], cwd=dist.parent, env=env)
    finally:
        for leftover in (REPO / "build", REPO / "parley.egg-info"):
            shutil.rmtree(leftover, ignore_errors=True)
    return next(dist.glob("parley-*.whl"))


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The host project, installed and served: (base URL, its dir, env, venv python)."""
    python = find_python(HOST_PYTHON)
    if python is None or not UV.exists():
        reason = f"needs python{HOST_PYTHON} (pyenv) and uv at {UV} (scripts/test installs it)"
        if os.environ.get("PARLEY_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("host")
    root, venv, dist = tmp / "site", tmp / "venv", tmp / "dist"
    write_host(root)
    # Nothing of this checkout on the path: the host must run on the installed wheel alone.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARLEY_", "DJANGO_", "PYTHON", "VIRTUAL_ENV")) and k not in
           ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env["UV_NO_PROGRESS"] = "1"
    wheel = build_wheel(dist, env)
    run([str(UV), "venv", "--quiet", "--python", python, str(venv)], cwd=tmp, env=env)
    vpy = str(venv / "bin" / "python")
    run([str(UV), "pip", "install", "--quiet", "--python", vpy, "--require-hashes",
         "-r", str(REPO / "requirements" / "base.lock")], cwd=tmp, env=env)
    run([str(UV), "pip", "install", "--quiet", "--python", vpy, "--no-deps", str(wheel)], cwd=tmp, env=env)

    where = run([vpy, "-c", "import sys, parley; print(parley.__file__); print('%d.%d' % sys.version_info[:2])"],
                cwd=root, env=env).split()
    assert where[0].startswith(str(venv)), f"parley imported from {where[0]}, not the installed wheel"
    assert where[1] == HOST_PYTHON
    run([vpy, "manage.py", "makemigrations", "accounts"], cwd=root, env=env)
    run([vpy, "manage.py", "migrate", "--noinput"], cwd=root, env=env)
    run([vpy, "manage.py", "bootstrap"], cwd=root, env=env)

    port = free_port()
    log = open(tmp / "uvicorn.log", "w")
    proc = subprocess.Popen(
        [vpy, "-m", "uvicorn", "hostsite.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--ws", "websockets-sansio", "--no-access-log"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/chat/healthz", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp / "uvicorn.log").read_text()
                assert time.monotonic() < deadline, (tmp / "uvicorn.log").read_text()
                time.sleep(0.2)
        yield base, root, env, vpy
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def sign_in(base: str, email: str, password: str) -> http.cookiejar.CookieJar:
    """Signs in through the host's own page (its LoginView, its email field)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    opener.open(f"{base}/sign-in/").close()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    body = urllib.parse.urlencode({"username": email, "password": password,
                                   "csrfmiddlewaretoken": csrf}).encode()
    try:
        opener.open(urllib.request.Request(f"{base}/sign-in/?next=/chat/", data=body,
                                           headers={"Referer": f"{base}/sign-in/"}))
        raise AssertionError("the sign-in did not redirect: refused?")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302 and exc.headers["Location"] == "/chat/", exc.code
    assert any(c.name == "sessionid" for c in jar)
    return jar


def cookie_header(jar: http.cookiejar.CookieJar) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def recv_until(ws, kind: str, timeout: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


def test_a_host_project_serves_parley_under_its_prefix_with_its_own_users_and_layout(host):
    base, root, env, vpy = host
    # Users of the host's model: one made by Parley's create_token (email as the username),
    # one with a password for the host's sign-in page.
    token = run([vpy, "manage.py", "create_token", "ada@example.com", "--create-user"],
                cwd=root, env=env).strip().splitlines()[-1]
    run([vpy, "manage.py", "shell", "-c",
         "from django.contrib.auth import get_user_model; "
         "get_user_model().objects.create_user('bob@example.com', 'a long passphrase')"],
        cwd=root, env=env)

    # Anonymous visitors go to the host's LOGIN_URL, not to a Parley page.
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"{base}/chat/")
    assert refused.value.code == 302
    assert refused.value.headers["Location"] == "/sign-in/?next=/chat/"

    jar = sign_in(base, "bob@example.com", "a long passphrase")
    page_opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = page_opener.open(f"{base}/chat/").read().decode()
    assert 'id="host-header"' in page  # the host's layout, through parley/base.html's blocks
    assert 'data-api-rooms="/chat/api/rooms"' in page and 'data-socket-path="/ws/chat/"' in page
    assert 'data-login-url="/sign-in/"' in page
    assert 'data-testid="logout"' not in page  # the host routes no view named "logout"

    rooms = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/chat/api/rooms", headers={"Authorization": f"Bearer {token}"})).read())
    assert "lobby" in [room["slug"] for room in rooms["rooms"]]
    for headers, status, code in (({"Authorization": f"Bearer {token}"}, 404, "not_found"),
                                  ({"Authorization": "Bearer prl_wrong"}, 401, "invalid_token")):
        with pytest.raises(urllib.error.HTTPError) as answered:
            urllib.request.urlopen(urllib.request.Request(f"{base}/chat/api/nope", headers=headers))
        assert answered.value.code == status
        assert json.loads(answered.value.read())["error"]["code"] == code
    me = json.loads(page_opener.open(f"{base}/chat/api/me").read())
    assert me["user"]["username"] == "bob@example.com"

    ws_url = base.replace("http", "ws", 1) + "/ws/chat/"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ada, \
         connect(ws_url, additional_headers={"Cookie": cookie_header(jar), "Origin": base}) as bob:
        assert recv_until(ada, "hello")["user"]["username"] == "ada@example.com"
        assert recv_until(bob, "hello")["user"]["username"] == "bob@example.com"
        for ws in (ada, bob):
            ws.send(json.dumps({"type": "join", "ref": "j", "room": "lobby"}))
            recv_until(ws, "joined")
        ada.send(json.dumps({"type": "send", "ref": "s", "room": "lobby", "text": "hello from ada",
                             "client_id": "host-1"}))
        got = recv_until(bob, "message")["message"]
        assert (got["text"], got["author"]["username"]) == ("hello from ada", "ada@example.com")
        bob.send(json.dumps({"type": "send", "ref": "s", "room": "lobby", "text": "hi ada",
                             "client_id": "host-2"}))
        seen = recv_until(ada, "message")["message"]
        if seen["text"] == "hello from ada":  # ada's own message reaches her too
            seen = recv_until(ada, "message")["message"]
        assert (seen["text"], seen["author"]["username"]) == ("hi ada", "bob@example.com")

    # The members API finds users by the host's USERNAME_FIELD.
    created = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/chat/api/rooms", method="POST", data=json.dumps(
            {"slug": "ops", "title": "Ops", "private": True}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})).read())
    assert created["room"]["slug"] == "ops"
    added = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/chat/api/rooms/ops/members", method="POST",
        data=json.dumps({"username": "bob@example.com"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})).read())
    assert added["member"]["username"] == "bob@example.com"
    removed = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/chat/api/rooms/ops/members/bob@example.com", method="DELETE",
        headers={"Authorization": f"Bearer {token}"})).read())
    assert removed["removed"]["username"] == "bob@example.com"


def test_the_wheel_holds_only_the_parley_package(host, tmp_path):
    env = host[2]
    with zipfile.ZipFile(build_wheel(tmp_path / "dist", env)) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"parley"}, tops  # not config/, bench/, clients/ or tests/
    for wanted in ("parley/py.typed", "parley/templates/parley/app.html", "parley/templates/parley/base.html",
                   "parley/static/parley/app.js", "parley/migrations/0001_initial.py",
                   "parley/realtime/outbound.py"):
        assert wanted in names, wanted
    # The standalone server's sign-in pages would shadow a host's registration/ templates.
    assert not any(name.startswith("parley/templates/registration/") for name in names)
