"""Parley's own receivers, connected by ParleyConfig.ready().

User deactivation: a user deactivated (or deleted) through the model — the admin, a shell, a
service — has their open sockets closed with 4401 at once: in the process that saved it, and
with Redis in every server process (parley.realtime.hub's control channel). A signal rather
than a service function because the admin's user form saves the model itself; the handshake
already refuses inactive users (parley.selectors.token_get_active, Django's session auth), and
this closes the sockets they opened before. It is the fast path only: a change no signal
announces (`QuerySet.update`, SQL) or one made in a process that shares no Redis with the
servers (a shell beside the embedded default) is caught by parley.revocation's periodic check
within PARLEY_REVOCATION_CHECK_SECS, and by the next command of each socket.

`message_posted` and `message_changed` (parley.signals): sent from parley.events' MessagePosted
and EntryAdded. `notification`: from MessagePosted too, on the signal thread, once per user to
notify (parley.selectors.notification_recipients says who and why).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.contrib.auth import get_user_model
from django.db import close_old_connections
from django.db.models.signals import post_delete, post_save, pre_delete
from django.dispatch import receiver

from parley import events, rooms
from parley.models import Attachment, Message, Room
from parley.selectors import notification_recipients
from parley.signals import message_changed, message_posted, notification

log = logging.getLogger("parley.signals")
User = get_user_model()


@receiver(post_delete, sender=Attachment, dispatch_uid="parley-attachment-file")
def attachment_deleted(sender: Any, instance: Attachment, **kwargs: Any) -> None:
    """An upload's row is gone (its message deleted, its room, its uploader, or it expired
    unattached): its stored file goes once the deletion commits — never before, so a rolled
    back deletion keeps both. A signal, so a room deleted in the admin loses its files too."""
    from django.db import transaction

    from parley.uploads import storage

    name = instance.file

    def remove() -> None:
        try:
            storage().delete(name)
        except Exception:  # the row is gone either way; an orphan file is the operator's to sweep
            log.exception("could not delete the stored file of upload %s", instance.pk)

    transaction.on_commit(remove)


@receiver(post_save, sender=User, dispatch_uid="parley-user-deactivated")
def user_deactivated(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Called after a user is saved; closes their sockets if the user is now inactive."""
    if not instance.is_active and (update_fields is None or "is_active" in update_fields):
        events.send_event_on_commit(events.CredentialRevoked(credential=("user", instance.pk)))


@receiver(post_delete, sender=User, dispatch_uid="parley-user-deleted")
def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Called after a user is deleted; closes their sockets."""
    events.send_event_on_commit(events.CredentialRevoked(credential=("user", instance.pk)))


@receiver(pre_delete, sender=Room, dispatch_uid="parley-room-deleted")
def room_deleted(sender: Any, instance: Room, **kwargs: Any) -> None:
    """Before a room is deleted (the admin, a shell, code), while its memberships still exist:
    its members and listers hear `room_removed` reason "deleted" once the delete commits.
    The room's row is locked first (a queryset's delete, which Room.delete does not see): a
    RoomState written meanwhile waits, instead of failing the delete's last statement."""
    instance.lock_row(kwargs.get("using"))
    rooms.room_deleted(room=instance, user_ids=rooms.room_deleted_audience(room=instance))


_signal_thread: ThreadPoolExecutor | None = None


def _send(signal: Any, name: str, **kwargs: Any) -> None:
    for receiver_fn, result in signal.send_robust(sender=Message, **kwargs):
        if isinstance(result, Exception):
            log.error("a %s receiver (%r) raised", name, receiver_fn, exc_info=result)


def _on_signal_thread(signal: Any, name: str, kwargs: dict[str, Any]) -> None:
    close_old_connections()
    try:
        _send(signal, name, **kwargs)
    finally:
        close_old_connections()


def _signal_executor() -> ThreadPoolExecutor:
    global _signal_thread
    if _signal_thread is None:
        _signal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-signals")
    return _signal_thread


def _dispatch(signal: Any, name: str, *, here: bool, **kwargs: Any) -> None:
    """Send `signal` in this thread (`here`: a synchronous caller's, which committed), or on the
    signal thread: a commit made for an event loop or on the database thread must not wait for
    receivers, which are synchronous and may query the database."""
    if here:
        _send(signal, name, **kwargs)
        return
    _signal_executor().submit(_on_signal_thread, signal, name, kwargs)


def _on_message_posted(event: events.MessagePosted) -> None:
    if not message_posted.has_listeners(Message):
        return
    try:
        asyncio.get_running_loop()
        here = False  # on an event loop (parley.ingest)
    except RuntimeError:
        here = True
    _dispatch(message_posted, "message_posted", here=here, message=event.message, source=event.source)


def _on_entry_added(event: events.EntryAdded) -> None:
    if not message_changed.has_listeners(Message):
        return
    # A socket's change was committed on the database thread (parley.commands).
    _dispatch(message_changed, "message_changed", here=event.source != "socket", entry=event.entry,
              message=event.message, source=event.source)


def _notify(event: events.MessagePosted) -> None:
    """On the signal thread: who the message notifies, then the signal for each of them."""
    close_old_connections()
    try:
        room = Room.objects.get(pk=event.room_id)
        if room.kind != Room.Kind.DM and len(_not_dm) < 100_000:
            _not_dm.add(room.pk)  # a room's kind never changes
        for user, reason in notification_recipients(message=event.message, room=room):
            _send(notification, "notification", user=user, room=room, message=event.message, reason=reason)
    except Room.DoesNotExist:
        pass  # deleted since: nobody to tell
    except Exception:
        log.exception("could not work out who message %s#%s notifies", event.room_id, event.message.seq)
    finally:
        close_old_connections()


def _on_message_posted_notify(event: events.MessagePosted) -> None:
    # Only a message that can notify anyone costs the signal thread its queries: a mention,
    # @room, or a private room (a DM's members; the kind is read there).
    if not notification.has_listeners(Message):
        return
    message = event.message
    if not (message.mentions or message.mention_room or _maybe_dm(event.room_id)):
        return
    _signal_executor().submit(_notify, event)


# Rooms this process knows are no DM (public rooms, private rooms of kind "room"): a plain
# message in them is skipped without a query. Filled on the signal thread.
_not_dm: set[int] = set()


def _maybe_dm(room_id: int) -> bool:
    return room_id not in _not_dm


events.subscribe(events.MessagePosted, _on_message_posted)
events.subscribe(events.MessagePosted, _on_message_posted_notify)
events.subscribe(events.EntryAdded, _on_entry_added)
