"""Rooms, their members and direct conversations (docs/protocol.md §12): the writes, and the
frames they address to the users concerned — `room_added`, `room_removed`, `room_updated` —
through parley.events.UserNotified (every version 2 socket of each user, on every process with
Redis), sent when the write commits.

Functions are `<entity>_<action>(*, kwargs)` as in parley.services; a refusal raises
RoomRefused with the API's code and HTTP status, which the views (parley.room_views) answer.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from parley import events, opened_rooms
from parley.conf import parley_settings
from parley.models import Membership, Room, RoomState
from parley.payloads import room_payload, room_state_payload
from parley.selectors import (
    room_audience_ids,
    room_state_get,
    rooms_with_dm_members,
    user_get_by_username,
)

DM_SLUG_PREFIX = "dm-"  # parley.services.room_create refuses it: nobody names a DM
DM_SLUG_HEX_CHARS = 32
DM_TITLE_MAX_CHARS = 100


class RoomRefused(Exception):
    """A room, member or DM request that cannot be done; nothing was changed. `status` is the
    HTTP status the API answers with, `code` the error's code (docs/protocol.md §12)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# --- the room-state object and the frames ------------------------------------------------------

def room_state_object(*, room: Room, user: Any) -> dict[str, Any]:
    """One user's view of one room (docs/protocol.md §11's room-state object), as the `rooms`
    list has it: read from the database after the change (one statement, counts included)."""
    return room_state_payload(*room_state_get(user=user, room=room))


def _send(user_ids: list[int] | tuple[int, ...], frame: dict[str, Any], *, skip_socket: str | None = None,
          leave_room_id: int | None = None) -> None:
    if user_ids:
        events.send_event_on_commit(events.UserNotified(user_ids=tuple(user_ids), frame=frame,
                                                        skip_socket=skip_socket, leave_room_id=leave_room_id))


def notify_added(*, room: Room, users: list[Any]) -> None:
    """`room_added` to each of these users (each gets their own room-state object)."""
    for user in users:
        _send([user.pk], {"type": "room_added", "state": room_state_object(room=room, user=user)})


def notify_removed(*, room: Room, user_ids: list[int], reason: str) -> None:
    """`room_removed` (reason "removed", "left" or "deleted"); their version 2 sockets in the
    room leave it first (a `left` with reason "removed", as version 1's removal sends)."""
    _send(user_ids, {"type": "room_removed", "room": room.slug, "reason": reason}, leave_room_id=room.pk)


def notify_updated(*, room: Room) -> None:
    """`room_updated` to the room's audience (parley.selectors.room_audience_ids)."""
    rooms_with_dm_members(rooms=[room])
    _send(room_audience_ids(room=room), {"type": "room_updated", "room": room_payload(room, v2=True)})


# --- room state ----------------------------------------------------------------------------

def room_state_listed(*, room: Room, user: Any) -> bool:
    """Put the room in the user's list: a RoomState row (read marker 0 when new), listed. True
    if it was not listed before (the caller announces room_added)."""
    state, created = RoomState.objects.get_or_create(user=user, room=room, defaults={"listed": True})
    if created:
        return True
    if not state.listed:
        state.listed = True
        state.save(update_fields=["listed", "updated_at"])
        return True
    return False


def room_state_unlisted(*, room: Room, user: Any) -> bool:
    """Take the room out of the user's list, keeping the read marker. True if it was listed."""
    # This process's next join of it puts it back in the list (the other processes forget the
    # pair when the `room_removed` that follows reaches the user's sockets there).
    opened_rooms.forget(user.pk, room.pk)
    return bool(RoomState.objects.filter(user=user, room=room, listed=True).update(listed=False, updated_at=timezone.now()))


# --- members -------------------------------------------------------------------------------

def member_added(*, room: Room, user: Any) -> None:
    """After a new membership (parley.services.membership_add): the member's RoomState (listed,
    nothing read) and their `room_added`."""
    RoomState.objects.update_or_create(user=user, room=room, defaults={"listed": True, "last_read_seq": 0})
    notify_added(room=room, users=[user])


def member_removed(*, room: Room, user: Any, reason: str = "removed") -> None:
    """After a membership was deleted (parley.services.membership_remove, room_leave): the
    room-state row goes (they lost the room) and their sockets hear `room_removed`."""
    RoomState.objects.filter(user=user, room=room).delete()
    notify_removed(room=room, user_ids=[user.pk], reason=reason)


MANAGEABLE_ROLES = (Membership.Role.MEMBER, Membership.Role.MODERATOR, Membership.Role.OWNER)


def membership_set_role(*, room: Room, user: Any, role: str, actor: Any) -> Membership:
    """Make a member a `member` or `moderator` (owner or admin), or hand the room over: role
    `owner` makes them its owner and the previous owner a moderator. The owner's own role
    changes only by handing over (409 owner_role)."""
    from parley.selectors import sees_all

    if role not in MANAGEABLE_ROLES:
        raise RoomRefused(400, "bad_field", "'role' must be \"member\", \"moderator\" or \"owner\"", field="role")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(room=room, user_id=user.pk).first()
        if membership is None:
            raise RoomRefused(404, "member_not_found", "no such member")
        if membership.role == role:
            return membership
        if membership.role == Membership.Role.OWNER:
            raise RoomRefused(409, "owner_role", "the owner's role changes only by handing the room to another member")
        if role == Membership.Role.OWNER:
            _hand_over(room=room, membership=membership, actor=actor, admin=sees_all(actor))
        else:
            membership.role = role
            membership.save(update_fields=["role"])
    notify_updated(room=room)
    return membership


def _hand_over(*, room: Room, membership: Membership, actor: Any, admin: bool) -> None:
    owned = Room.objects.filter(owner_id=membership.user_id).count()
    if owned >= parley_settings.MAX_ROOMS_OWNED_PER_USER:
        raise RoomRefused(403, "too_many_rooms_owned", "that member owns the most rooms allowed already")
    previous = Membership.objects.filter(room=room, role=Membership.Role.OWNER)
    if not admin and not previous.filter(user_id=actor.pk).exists():
        raise RoomRefused(403, "forbidden", "only the owner or an admin hands a room over")
    previous.update(role=Membership.Role.MODERATOR)
    membership.role = Membership.Role.OWNER
    membership.save(update_fields=["role"])
    Room.objects.filter(pk=room.pk).update(owner_id=membership.user_id)
    room.owner_id = membership.user_id


def room_leave(*, room: Room, user: Any) -> None:
    """The user leaves the room: a private room's membership ends (its owner must hand it over
    first: 409 owner_cannot_leave); a public room or a DM leaves their list (a DM's members are
    fixed: it comes back with POST /api/dms). Their sockets hear `room_removed` reason "left"."""
    if room.kind == Room.Kind.DM or not room.is_private:
        if not RoomState.objects.filter(user=user, room=room).exists():
            RoomState.objects.create(user=user, room=room, listed=False, last_read_seq=room.last_seq)
        else:
            room_state_unlisted(room=room, user=user)
        notify_removed(room=room, user_ids=[user.pk], reason="left")
        return
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(room=room, user_id=user.pk).first()
        if membership is None:  # staff see a private room without being in it
            raise RoomRefused(409, "not_a_member", "you are not a member of this room")
        if membership.role == Membership.Role.OWNER:
            raise RoomRefused(409, "owner_cannot_leave", "hand the room over to another member first")
        membership.delete()
        events.send_event_on_commit(events.MemberRemoved(room_id=room.pk, user_id=user.pk))
        member_removed(room=room, user=user, reason="left")


# --- the room itself -----------------------------------------------------------------------

def room_update(*, room: Room, title: Any = None, archived: Any = None) -> Room:
    """Rename (title: 1-100 characters after trimming) and/or archive (archived: true; read-only,
    docs/protocol.md §12) or unarchive a room; `room_updated` to its audience if it changed."""
    fields = []
    if title is not None:
        if not isinstance(title, str) or not (1 <= len(title.strip()) <= 100) or "\x00" in title:
            raise RoomRefused(400, "bad_field", "'title' must be 1-100 characters", field="title")
        if title.strip() != room.title:
            room.title = title.strip()
            fields.append("title")
    if archived is not None:
        if not isinstance(archived, bool):
            raise RoomRefused(400, "bad_field", "'archived' must be true or false", field="archived")
        if archived != (room.archived_at is not None):
            room.archived_at = timezone.now() if archived else None
            fields.append("archived_at")
    if fields:
        room.save(update_fields=fields)
        notify_updated(room=room)
    return room


def room_deleted(*, room: Room, user_ids: list[int]) -> None:
    """A room is being deleted (parley.receivers, pre_delete): its members and listers hear
    `room_removed` reason "deleted" once the delete commits."""
    notify_removed(room=room, user_ids=user_ids, reason="deleted")


def room_deleted_audience(*, room: Room) -> list[int]:
    members = Membership.objects.filter(room=room).values_list("user_id", flat=True)
    listed = RoomState.objects.filter(room=room, listed=True).values_list("user_id", flat=True)
    return sorted(set(members) | set(listed))


# --- direct conversations --------------------------------------------------------------------

def dm_slug(user_ids: list[int]) -> str:
    """The one slug of the DM between exactly these users: an HMAC of their sorted ids under
    SECRET_KEY, so nobody can compute another set's slug (to probe whether those people talk)."""
    key = f"{settings.SECRET_KEY}:parley-dm".encode()
    digest = hmac.new(key, ",".join(str(i) for i in sorted(set(user_ids))).encode(), hashlib.sha256).hexdigest()
    return DM_SLUG_PREFIX + digest[:DM_SLUG_HEX_CHARS]


def dm_open(*, creator: Any, usernames: Any) -> tuple[Room, bool]:
    """The DM between the creator and the users named (1 to MAX_DM_MEMBERS - 1 others, active
    accounts): the existing one (False) or a new one (True). A new DM is private, of kind
    "dm", its members fixed; each member gets a RoomState and `room_added`. Opening an existing
    DM puts it back in the creator's list (room_added if it had left it)."""
    if not isinstance(usernames, list) or not all(isinstance(n, str) and n for n in usernames):
        raise RoomRefused(400, "bad_field", "'usernames' must be a list of usernames", field="usernames")
    most = int(parley_settings.MAX_DM_MEMBERS)
    names = list(dict.fromkeys(usernames))
    if len(names) > most:  # before any lookup: a huge list costs nothing
        raise RoomRefused(400, "too_many_members", f"a direct conversation holds at most {most} people, you included")
    users = {creator.pk: creator}
    for name in names:
        user = user_get_by_username(username=name)
        if user is None or not user.is_active:
            raise RoomRefused(404, "user_not_found", f"no user {name!r}", username=name)
        users.setdefault(user.pk, user)
    if len(users) < 2:
        raise RoomRefused(400, "bad_field", "name at least one other person", field="usernames")
    if len(users) > most:
        raise RoomRefused(400, "too_many_members", f"a direct conversation holds at most {most} people, you included")
    slug = dm_slug(list(users))
    existing = Room.objects.filter(slug=slug).first()
    if existing is None:
        people = sorted(users.values(), key=lambda u: u.get_username())
        title = ", ".join(u.get_username() for u in people)[:DM_TITLE_MAX_CHARS]
        try:
            with transaction.atomic():
                room = Room.objects.create(slug=slug, title=title, is_private=True, kind=Room.Kind.DM)
                Membership.objects.bulk_create([Membership(room=room, user=u) for u in people])
                RoomState.objects.bulk_create([RoomState(room=room, user=u) for u in people])
                notify_added(room=room, users=people)
        except IntegrityError:
            existing = Room.objects.filter(slug=slug).first()  # a concurrent open made it first
            if existing is None:
                raise
        else:
            return room, True
    if existing.kind != Room.Kind.DM:  # cannot happen: room_create refuses dm- slugs
        raise RoomRefused(409, "slug_unavailable", "that conversation cannot be opened")
    if room_state_listed(room=existing, user=creator):
        notify_added(room=existing, users=[creator])
    rooms_with_dm_members(rooms=[existing])
    return existing, False

