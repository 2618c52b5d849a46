"""The delivery side of one socket: what parley.realtime.hub calls, and what reaches the socket
from a room without the client asking — the room log's entries in seq order (messages, and for
version 2 sockets edits, deletes and reactions), presence, typing, removals.

A `Delivery` is the socket's hub receiver (parley.realtime.hub.Receiver). The hub calls it
synchronously, once per local socket of the room, with the frame already encoded for everyone
(parley.fanout): a message goes through the socket's ordering (parley.realtime.ordering) and out
through the session's `send_message`, the socket's bounded outbound queue. What live delivery
missed — a broadcast overtaken by a later one, or lost while the hub's Redis subscription was
down — is read back from the database (`fill_gap`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from parley import consumer_db as db
from parley import metrics, opened_rooms, protocol
from parley.conf import parley_settings
from parley.models import Message
from parley.payloads import entry_frame
from parley.realtime.ordering import SKIP, Subscription
from parley.realtime.tasks import spawn

if TYPE_CHECKING:
    from parley.session import Session

log = logging.getLogger(__name__)

_GAP_FILLS = metrics.GAP_FILLS.labels("gap")
_RESYNCS = metrics.GAP_FILLS.labels("resync")


class Delivery:
    """One socket's receiver of room events (the hub holds it in its room and credential sets)."""

    # The fan-out's hot path reads these once per recipient: plain slots, no property.
    __slots__ = ("send_message", "session", "subs", "v2")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.subs = session.subs_by_id  # the same dict: a room joined is a room delivered
        self.send_message = session.send_message
        self.v2 = session.v2

    # --- parley.realtime.hub.Receiver -------------------------------------------------------

    def hub_event(self, event: dict[str, Any]) -> None:
        """Called by parley.realtime.hub, synchronously, for each event of a room this socket joined.

        A message committed in the room goes out now if it is next in line, else is held:
        parley.realtime.ordering decides, and a gap it reports is filled from the database.
        This runs once per recipient of every broadcast, so the message case is handled here
        rather than in a method of its own: a call less per recipient on the fan-out's hot path.
        """
        kind = event["type"]
        if kind == "chat.message":
            sub = self.subs.get(event["room_id"])
            if sub is None:
                return
            if not self.v2 and "v1" in event:  # a message with files: version 1's frame has none
                if sub.offer(event["seq"], event["v1"][0], event["v1"][1], self.send_message):
                    self.schedule_gap_fill(sub)
            elif sub.offer(event["seq"], event["frame"], event.get("size"), self.send_message):
                self.schedule_gap_fill(sub)
        elif kind == "chat.entry":  # an edit, delete or reaction: version 2 sockets only (SKIP)
            sub = self.subs.get(event["room_id"])
            if sub is not None and sub.offer(event["seq"], event["frame"] if self.v2 else SKIP, event.get("size"),
                                             self.send_message):
                self.schedule_gap_fill(sub)
        elif kind in ("chat.presence", "chat.custom"):  # custom: parley.fanout.custom_event
            self.relay_presence(event)
        elif kind == "chat.typing":
            self.relay_typing(event)
        elif kind == "chat.revoke":
            spawn(self.room_revoked(event))

    def hub_resync(self, room_id: int) -> None:
        """Called by parley.realtime.hub when events may have been lost (Redis reconnected): catch up."""
        sub = self.subs.get(room_id)
        if sub is not None and sub.ready:
            spawn(self.fill_gap(sub, up_to=None))

    def hub_credentials_revoked(self) -> None:
        """Called by parley.realtime.hub when this socket's API token is revoked or its user
        deactivated: close with 4401."""
        log.info("closing a socket of user %s: its credentials were revoked", self.session.user.pk,
                 extra={"socket_id": self.session.socket_id, "user_id": self.session.user.pk})
        self.session.close(protocol.CLOSE_CREDENTIALS_REVOKED)

    def hub_user_event(self, event: dict[str, Any]) -> None:
        """Called by parley.realtime.hub for an event addressed to this socket's user
        (parley.fanout.user_event): version 2 sockets get its frame, unless they caused it."""
        leave = event.get("leave_room")
        if leave is not None:  # the room left the user's list, wherever that happened
            opened_rooms.forget(self.session.user.pk, leave)
        if self.v2 and event.get("skip") != self.session.socket_id:
            if leave is not None:
                self.leave_now(leave)  # (room_removed: out of the room before the frame says so)
            self.send_message(event["frame"], None)

    # --- room events ------------------------------------------------------------------------

    # Presence and typing go only to sockets whose join completed (sub.ready): a join subscribes
    # before it checks access, so a socket refused a private room must not see its events
    # meanwhile; the joined reply carries the member list as of after the subscription anyway.
    def relay_presence(self, event: dict[str, Any]) -> None:
        """A user's first socket joined, or last socket left, the room. The socket that caused
        it is skipped: its `joined` reply already lists the members."""
        sub = self.subs.get(event["room_id"])
        if sub is not None and sub.ready and event["origin"] != self.session.socket_id:
            self.send_message(event["frame"], None)

    def relay_typing(self, event: dict[str, Any]) -> None:
        """Someone in the room is typing; the typist's own sockets skip it."""
        sub = self.subs.get(event["room_id"])
        if sub is not None and sub.ready and event["user_id"] != self.session.user.pk:
            self.send_message(event["frame"], None)

    async def room_revoked(self, event: dict[str, Any]) -> None:
        """A user lost access to the room (removed from a private room): if it is this socket's
        user, leave it now."""
        if event["user_id"] == self.session.user.pk:
            self.leave_now(event["room_id"])

    def leave_now(self, room_id: int) -> None:
        """Leave the room on this socket at once, telling the client (`left`, reason "removed");
        the hub and presence catch up in a task. Nothing if the socket is not in it (a removal
        reaches it both as a room event and, version 2, with its user event: one `left`)."""
        sub = self.subs.get(room_id)
        if sub is None:
            return
        self.session.forget_room(sub)
        self.session.send_frame({"type": "left", "room": sub.slug, "reason": "removed"})
        spawn(self.session.unsubscribe(sub))

    # --- going live and filling gaps --------------------------------------------------------

    def start(self, sub: Subscription, high_seq: int) -> None:
        """The join's snapshot (up to high_seq) was sent: deliver what queued meanwhile, live."""
        if sub.start(high_seq, self.send_message):
            self.schedule_gap_fill(sub)

    def schedule_gap_fill(self, sub: Subscription) -> None:
        if sub.gap_fill_scheduled:
            return
        sub.gap_fill_scheduled = True
        delay = parley_settings.GAP_FILL_DELAY_MS / 1000
        asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.fill_gap(sub, up_to=sub.first_pending()))
        )

    async def fill_gap(self, sub: Subscription, up_to: int | None) -> None:
        """Read from the database what live delivery missed (a broadcast overtaken or lost).

        Runs PARLEY_GAP_FILL_DELAY_MS after a seq arrived ahead of a gap, or after the hub's
        Redis subscription came back (up_to=None: everything newer than what was delivered).
        """
        sub.gap_fill_scheduled = False
        if self.subs.get(sub.room_id) is not sub:
            return
        if up_to is not None and up_to <= sub.high_seq + 1:
            if sub.drain(self.send_message):
                self.schedule_gap_fill(sub)
            return
        limit = parley_settings.RESUME_MAX_GAP if up_to is None else up_to - sub.high_seq
        (_RESYNCS if up_to is None else _GAP_FILLS).inc()
        missing = await db.messages_after(sub.room_id, sub.high_seq, up_to, limit)
        if self.subs.get(sub.room_id) is not sub:
            return
        for entry in missing:
            if entry.seq == sub.high_seq + 1:  # live delivery may have moved on meanwhile
                if self.v2 or entry.kind == Message.Kind.MESSAGE:
                    self.send_message(*protocol.encode_sized(entry_frame(entry, room_slug=sub.slug,
                                                                         attachments=self.v2)))
                sub.high_seq = entry.seq
        first = sub.first_pending()
        if up_to is not None and first is not None and first == up_to and sub.high_seq + 1 < first:
            log.error("room %s: seqs %s..%s are not in the database; skipping them",
                      sub.slug, sub.high_seq + 1, first - 1)
            sub.high_seq = first - 1
        if sub.drain(self.send_message):
            self.schedule_gap_fill(sub)
