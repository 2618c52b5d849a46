"""Writes. Every function is `<entity>_<action>(*, keyword args)`; consumers and views stay thin."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from chat import fanout
from chat.models import ApiToken, Membership, Message, Room
from chat.selectors import message_get_by_client_id, room_user_can_access, token_hash

TOKEN_LAST_USED_RESOLUTION_SECS = 60  # don't write last_used_at on every request


def room_create(*, slug: str, title: str, owner: Any = None, is_private: bool = False) -> Room:
    room = Room(slug=slug, title=title, owner=owner, is_private=is_private)
    room.full_clean()
    with transaction.atomic():
        room.save()
        if owner is not None:
            Membership.objects.create(room=room, user=owner, role=Membership.Role.OWNER)
    return room


def room_ensure(*, slug: str, title: str) -> Room:
    """Create a public room if it is missing (used for the lobby); never changes an existing one."""
    room, _ = Room.objects.get_or_create(slug=slug, defaults={"title": title})
    return room


def membership_add(*, room: Room, user: Any) -> Membership:
    membership, _ = Membership.objects.get_or_create(room=room, user=user)
    return membership


def membership_remove(*, room: Room, user: Any) -> bool:
    """Take a member out of a room (never its owner). Their open sockets leave the room at once.

    Every command also re-checks access, so this is belt and braces: without the broadcast, a
    removed member would keep *receiving* the room's messages until their next command.
    """
    deleted, _ = Membership.objects.filter(room=room, user=user).exclude(role=Membership.Role.OWNER).delete()
    if deleted and room.is_private:
        transaction.on_commit(
            lambda: async_to_sync(fanout.broadcast_removed)(room_id=room.pk, user_id=user.pk)
        )
    return bool(deleted)


def message_create(*, room_id: int, author: Any, text: str, client_id: str | None) -> tuple[Message, bool]:
    """Store one message and give it the room's next sequence number.

    Returns (message, duplicate). A second call with the same (room, author, client_id) returns the
    first message and duplicate=True instead of storing another, also when both calls race.
    The text must already be validated and trimmed (chat.protocol does it for sockets).
    """
    if client_id:
        existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
        if existing is not None:
            return existing, True
    try:
        with transaction.atomic():
            # The UPDATE takes the room row's write lock (PostgreSQL) or the database write lock
            # (SQLite, IMMEDIATE mode) until commit, so concurrent senders get consecutive numbers.
            Room.objects.filter(pk=room_id).update(last_seq=F("last_seq") + 1)
            seq = Room.objects.values_list("last_seq", flat=True).get(pk=room_id)
            message = Message.objects.create(
                room_id=room_id, seq=seq, author=author, text=text, client_id=client_id,
                created_at=timezone.now(),
            )
    except IntegrityError:
        # A concurrent retry of the same client_id won the race; its row is committed now.
        if client_id:
            existing = message_get_by_client_id(room_id=room_id, author_id=author.pk, client_id=client_id)
            if existing is not None:
                return existing, True
        raise
    return message, False


def message_create_batch(*, items: list[tuple[Any, int, str, str | None]]) -> list[Any]:
    """Store several (author, room_id, text, client_id) sends in one transaction (chat.ingest).

    Each item gets what message_create returns, or None if its author may no longer use the room,
    or the exception it raised; one item failing (in its own savepoint) does not undo the others.
    If the transaction itself cannot commit, the error propagates and nothing is stored.
    """
    results: list[Any] = []
    with transaction.atomic():
        for author, room_id, text, client_id in items:
            try:
                with transaction.atomic():  # a savepoint: an error here leaves the others intact
                    if not room_user_can_access(user=author, room_id=room_id):
                        results.append(None)
                        continue
                    results.append(message_create(room_id=room_id, author=author, text=text, client_id=client_id))
            except DatabaseError as exc:
                results.append(exc)
    return results


def user_create(*, username: str, password: str | None = None) -> Any:
    User = get_user_model()
    user = User(username=username)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    return user


def token_create(*, user: Any, name: str = "") -> tuple[ApiToken, str]:
    """Make a token; returns (row, secret). The secret is shown once and stored only hashed."""
    raw = "prl_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, key_hash=token_hash(raw), prefix=raw[:10])
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    """Revoke a token: it stops authenticating, and sockets opened with it close with 4401."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        token_id = token.pk
        transaction.on_commit(lambda: async_to_sync(fanout.close_token_sockets)(token_id=token_id))


def token_touch(*, token: ApiToken) -> None:
    now = timezone.now()
    stale = now - timedelta(seconds=TOKEN_LAST_USED_RESOLUTION_SECS)
    if token.last_used_at is None or token.last_used_at < stale:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
