"""manage.py create_token and bootstrap."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from parley.models import ApiToken, Room
from parley.selectors import token_get_active

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_token_for_existing_user():
    ada = get_user_model().objects.create_user("ada", password="correct-horse-battery")
    output = run("create_token", "ada")
    raw = output.rstrip("\n").splitlines()[-1]
    assert raw.startswith("prl_") and raw.strip() == raw and " " not in raw
    token = token_get_active(raw=raw)
    assert token is not None and token.user == ada and token.name == "cli"
    response = Client().get("/api/me", headers={"Authorization": f"Bearer {raw}"})
    assert response.json()["user"]["username"] == "ada"


@pytest.mark.django_db
def test_create_token_with_name():
    get_user_model().objects.create_user("ada")
    raw = run("create_token", "ada", "--name", "bot-1").splitlines()[-1]
    assert token_get_active(raw=raw).name == "bot-1"


@pytest.mark.django_db
def test_create_token_create_user():
    output = run("create_token", "newbot", "--create-user")
    lines = output.rstrip("\n").splitlines()
    assert len(lines) == 2 and "newbot" in lines[0]
    user = get_user_model().objects.get(username="newbot")
    assert not user.has_usable_password()
    assert token_get_active(raw=lines[-1]).user == user
    # a second run for the now existing user only prints a token
    again = run("create_token", "newbot", "--create-user").rstrip("\n").splitlines()
    assert len(again) == 1 and again[0] != lines[-1]
    assert get_user_model().objects.filter(username="newbot").count() == 1
    assert ApiToken.objects.filter(user=user).count() == 2


@pytest.mark.django_db
def test_create_token_unknown_user_errors():
    with pytest.raises(CommandError, match="create-user"):
        run("create_token", "ghost")
    assert not get_user_model().objects.filter(username="ghost").exists()
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_create_token_invalid_username_errors():
    with pytest.raises(Exception):  # noqa: B017  (ValidationError or CommandError)
        run("create_token", "bad name!", "--create-user")
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_bootstrap_creates_the_lobby_idempotently():
    assert "lobby" in run("bootstrap")
    lobby = Room.objects.get(slug="lobby")
    assert lobby.title == "Lobby" and not lobby.is_private
    Room.objects.filter(pk=lobby.pk).update(title="Main hall")
    run("bootstrap")
    assert Room.objects.count() == 1
    assert Room.objects.get(slug="lobby").title == "Main hall"


@pytest.mark.django_db(transaction=True)
def test_create_token_via_manage_py_prints_the_token_last():
    """Through a real `manage.py` process (needs a file database the subprocess can see)."""
    if connection.vendor != "sqlite":
        db = connection.settings_dict
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        url = f"sqlite:///{connection.settings_dict['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": settings.SECRET_KEY}
    result = subprocess.run([sys.executable, "manage.py", "create_token", "cli-user", "--create-user"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    raw = result.stdout.splitlines()[-1]
    assert token_get_active(raw=raw).user.username == "cli-user"
    result = subprocess.run([sys.executable, "manage.py", "create_token", "nobody"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "nobody" in result.stderr
