"""An example receiver of `parley.signals.notification`: e-mail a mention or a direct message to
a user who is not online, through Django's mail (EMAIL_BACKEND and DEFAULT_FROM_EMAIL).

Opt in with `PARLEY = {"MAIL_NOTIFICATIONS": True}` (ParleyConfig.ready connects it), or call
`connect()` from your own AppConfig.ready. "Not online" is parley.presence's answer for the
message's room (`user_online_blocking`): no socket of the user in this process, and, with
REDIS_URL, none in the room on any process. Without Redis, a server of several processes
cannot see the others' sockets: a user online elsewhere may get the mail too.

It runs on Parley's signal thread (parley.receivers), so a slow mail server holds up later
notifications and message_posted receivers, never a socket or a request; a failed send is
logged by the signal (send_robust) and the message is unaffected. It mails every notification
it gets: a project that wants digests or a rate per user writes its own receiver the same way.
"""

from __future__ import annotations

from typing import Any

from django.core.mail import send_mail

from parley.models import Message
from parley.presence import user_online_blocking
from parley.signals import notification

DISPATCH_UID = "parley.contrib.mail_notifications"
EXCERPT_CHARS = 300  # of the message's text in the mail

_SUBJECTS = {
    "mention": "{author} mentioned you in #{room}",
    "room_mention": "{author} wrote to everyone in #{room}",
    "dm": "{author} sent you a message",
}


def connect() -> None:
    notification.connect(mail_offline_user, sender=Message, dispatch_uid=DISPATCH_UID)


def disconnect() -> None:
    notification.disconnect(sender=Message, dispatch_uid=DISPATCH_UID)


def mail_offline_user(sender: Any, *, user: Any, room: Any, message: Any, reason: str, **kwargs: Any) -> None:
    """The receiver: one mail to `user` if they have an address and are not online."""
    address = getattr(user, "email", "")
    if not address or user_online_blocking(user_id=user.pk, room_id=room.pk):
        return
    author = message.author.get_username()
    subject = _SUBJECTS.get(reason, _SUBJECTS["mention"]).format(author=author, room=room.slug)
    text = message.text if len(message.text) <= EXCERPT_CHARS else message.text[:EXCERPT_CHARS] + "…"
    body = f"{author} in #{room.slug} ({room.title}):\n\n{text}\n"
    send_mail(subject, body, None, [address])
