"""Model signals: a user deactivated (or deleted) through the model — the admin, a shell, a
service — has their open sockets closed with 4401 at once: in the process that saved it, and
with Redis in every server process (parley.realtime.hub's control channel).

A signal rather than a service function because the admin's user form saves the model itself;
the handshake already refuses inactive users (parley.selectors.token_get_active, Django's session
auth), and this closes the sockets they opened before. It is the fast path only: a change no
signal announces (`QuerySet.update`, SQL) or one made in a process that shares no Redis with
the servers (a shell beside the embedded default) is caught by parley.revocation's periodic
check within PARLEY_REVOCATION_CHECK_SECS, and by the next command of each socket.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from parley import fanout

User = get_user_model()


def _close_sockets_after_commit(user_id: int) -> None:
    transaction.on_commit(
        lambda: async_to_sync(fanout.close_credential_sockets)(credential=("user", user_id))
    )


@receiver(post_save, sender=User, dispatch_uid="parley-user-deactivated")
def user_deactivated(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Called after a user is saved; closes their sockets if the user is now inactive."""
    if not instance.is_active and (update_fields is None or "is_active" in update_fields):
        _close_sockets_after_commit(instance.pk)


@receiver(post_delete, sender=User, dispatch_uid="parley-user-deleted")
def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Called after a user is deleted; closes their sockets."""
    _close_sockets_after_commit(instance.pk)
