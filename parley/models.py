"""Parley's data: rooms, their members, their sequenced logs (messages and what happened to
them), reactions, and API tokens.

Every message is in the database before anyone sees it; nothing about the log lives only in
memory. Presence (who is online) is deliberately not here: it is ephemeral, see parley/presence.py.
"""

import re
import uuid

from django.conf import settings
from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from django.db import models, transaction

SLUG_RE = re.compile(r"^[a-z0-9_-]{1,50}\Z")
SLUG_VALIDATOR = RegexValidator(SLUG_RE, "1-50 characters of a-z, 0-9, - and _")


def new_epoch() -> str:
    return uuid.uuid4().hex


class Room(models.Model):
    class Kind(models.TextChoices):
        ROOM = "room"
        DM = "dm"  # a direct conversation: private, its members fixed when it is created

    slug = models.CharField(max_length=50, unique=True, validators=[SLUG_VALIDATOR])
    title = models.CharField(max_length=100, validators=[ProhibitNullCharactersValidator()])
    is_private = models.BooleanField(default=False)
    kind = models.CharField(max_length=4, choices=Kind.choices, default=Kind.ROOM, db_default=Kind.ROOM)
    # Archived: read-only, kept for its history and search; NULL while the room is in use.
    archived_at = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The newest message's sequence number. Incremented (under the row's write lock) in the same
    # transaction that inserts the message, so sequence numbers are gap-free and only grow.
    last_seq = models.BigIntegerField(default=0)
    # Identifies this room's log. A client resumes only against the epoch it saw, so it never
    # splices sequence numbers from two different logs (e.g. a room deleted and re-created).
    epoch = models.CharField(max_length=32, default=new_epoch, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def delete(self, using: str | None = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        """Delete the room with its rows, its own row locked first (PostgreSQL; SQLite's writes
        are serial anyway): a row that refers to it and is written meanwhile — a join's
        RoomState, a send — waits for the delete and then fails on its own, instead of landing
        after the delete collected the room's rows, which made the delete fail on the foreign
        key. (A queryset's delete locks each room in parley.receivers' pre_delete, later.)"""
        with transaction.atomic(using=using):
            self.lock_row(using)
            return super().delete(using=using, keep_parents=keep_parents)

    def lock_row(self, using: str | None = None) -> None:
        """SELECT … FOR UPDATE of this room's row, until the transaction ends (inside one)."""
        list(Room.objects.using(using).select_for_update().filter(pk=self.pk).values_list("pk", flat=True))


class Membership(models.Model):
    """Who may see a private room. Public rooms need no membership."""

    class Role(models.TextChoices):
        OWNER = "owner"
        MODERATOR = "moderator"
        MEMBER = "member"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id} ({self.role})"


class RoomState(models.Model):
    """One user's state in one room: how far they have read, how the room notifies them, and
    whether it is in their room list. A public room gets a row when the user first opens it;
    a private room or DM's members get one when they are added."""

    class Notify(models.TextChoices):
        ALL = "all"
        MENTIONS = "mentions"
        NOTHING = "nothing"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="states")
    # The highest seq the user has read (0: nothing). Only ever moves forward.
    last_read_seq = models.BigIntegerField(default=0)
    # "" means the default: "all" for a DM, "mentions" for a room.
    notify = models.CharField(max_length=8, choices=Notify.choices, blank=True, default="")
    muted = models.BooleanField(default=False)
    # False once the user left a public room: it leaves their list, the read marker is kept.
    listed = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "room"], name="roomstate_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id} read to {self.last_read_seq}"


class Message(models.Model):
    """One entry of a room's log (docs/protocol.md §10): a posted message, or an edit, delete or
    reaction of one. Every entry takes the room's next seq, so resume, gap filling and live
    delivery carry all of them in one order with the same machinery; pages show the
    `message` entries only, each in its current state (the other kinds are folded into it).
    """

    class Kind(models.TextChoices):
        MESSAGE = "message"
        EDIT = "edit"
        DELETE = "delete"
        REACT = "react"
        UNREACT = "unreact"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    # db_default: ingest's hand-written INSERTs (parley.storage) name only the columns they set.
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.MESSAGE, db_default=Kind.MESSAGE)
    # The author of a message; for the other kinds, who edited, deleted or reacted.
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # A message's current text, an edit's new text; "" for a tombstone (the text is erased, not
    # hidden), and for deletes and reactions.
    text = models.TextField()
    # The sender's idempotency key: a retried send with the same key returns the first message.
    # NULL (not "") when absent, because NULLs never collide in the unique constraint below.
    client_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField()
    # The seq of the message this entry is about: the one edited, deleted or reacted to; for a
    # message, the one it replies to (NULL: not a reply).
    target_seq = models.BigIntegerField(null=True, blank=True)
    # [{"id", "username"}] of the users a message (or an edit's text) mentions, as the wire has
    # them (parley.mentions); NULL for none.
    mentions = models.JSONField(null=True, blank=True)
    mention_room = models.BooleanField(default=False, db_default=False)
    edited_at = models.DateTimeField(null=True, blank=True)  # a message's last edit
    deleted_at = models.DateTimeField(null=True, blank=True)  # a message's tombstone
    # A message's reactions as [[emoji, count], …] in the order each emoji was first added
    # (a list: PostgreSQL's jsonb does not keep an object's key order); NULL for none. Who
    # reacted is in Reaction; this is what pages show without counting rows.
    reactions = models.JSONField(null=True, blank=True)
    # A reaction entry's emoji, and how many users had it on the message after the entry.
    emoji = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    count = models.PositiveIntegerField(null=True, blank=True)
    # A message's files as the wire describes them ([{"id", "name", "size", "content_type",
    # "width"?, "height"?}], parley.uploads.attachment_record), NULL for none: pages and live
    # events show them without a join; Attachment has the rows (and the stored files).
    attachments = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq_unique"),
            models.UniqueConstraint(
                fields=["room", "author", "client_id"], name="message_idempotency_unique"
            ),
        ]
        indexes = [
            # A message's edit entries (erased with it) and the replies to it (quotes).
            models.Index(fields=["room", "target_seq"], name="message_room_target_idx"),
            # Pages read the message entries only: without this, a page behind 300,000 reaction
            # entries read them all (PostgreSQL, 20-47 ms → 92-107 ms per page).
            models.Index(fields=["room", "seq"], condition=models.Q(kind="message"), name="message_room_page_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"


class Reaction(models.Model):
    """Who put which emoji on which message: one row per (message, user, emoji), so adding the
    same reaction twice is one reaction. Message.reactions keeps the counts."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reaction_rows")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    emoji = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message", "user", "emoji"], name="reaction_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.emoji} by {self.user_id} on {self.message_id}"


class Profile(models.Model):
    """How a user appears in the chat: a display name and an avatar. A user without a row (or
    with blanks) shows as their full name or username, with generated initials (parley.profiles)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="parley_profile")
    display_name = models.CharField(max_length=64, blank=True, validators=[ProhibitNullCharactersValidator()])
    # The avatar as Parley re-encoded it (a square PNG), in the PARLEY AVATAR_STORAGE storage.
    avatar = models.CharField(max_length=200, blank=True)
    # Bumped on every avatar change: part of its URL, so caches never show an old one.
    avatar_version = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"profile of {self.user_id}"


class ApiToken(models.Model):
    """A bearer token for non-browser clients. Only the SHA-256 of the secret is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="first characters, to recognise it")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class Attachment(models.Model):
    """A file uploaded to a room (docs/protocol.md §14): unattached until its uploader's next
    message takes it, then the message's. Stored through Django's storage API (the STORAGES
    alias PARLEY UPLOADS_STORAGE names) under a random name; `name` is only what the uploader
    called it. Deleted with its message (a delete makes a tombstone), its room, or when it
    expires unattached; its file is deleted after the row's transaction commits
    (parley.receivers)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    uploader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="attachment_rows")
    file = models.CharField(max_length=255)  # the storage's name of the stored file
    name = models.CharField(max_length=255)  # the uploader's file name, made safe (parley.uploads)
    size = models.BigIntegerField()  # bytes
    content_type = models.CharField(max_length=100)  # sniffed from the bytes, never the client's claim
    width = models.PositiveIntegerField(null=True, blank=True)  # pixels, for a verified image
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # The expiry sweep reads the unattached ones, oldest first.
            models.Index(fields=["created_at"], condition=models.Q(message__isnull=True),
                         name="attachment_unattached_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes) in {self.room_id}"
