"""Parley's public Django signals. Importable before the app registry is ready (it defines
signals only); the receivers Parley itself connects live in parley.receivers.

`message_posted` is sent once for every message stored, whichever way it came — a WebSocket
`send`, `POST /api/rooms/<slug>/messages`, `parley.post_message` — after its transaction
committed, never for a rolled-back one, never for an idempotent replay (which stores nothing).
Keyword arguments:

- `sender`: the Message model class;
- `message`: the stored Message (`room_id`, `seq`, `author` loaded, `text`, `client_id`,
  `created_at`, `target_seq` (the seq it replies to, or None), `mentions` (the mentioned users as
  `[{"id", "username"}]`, or None), `mention_room`; `message.room` is one more query);
- `source`: "socket", "http" or "python".

Where it runs: for "http" and "python", in the thread that committed, before the view or the
call that stored it returns (inside the caller's `transaction.atomic()`, when that block
commits). For "socket", on Parley's signal thread, one thread that runs the receivers of every
socket's message in commit order, so that a slow receiver holds up neither the event loop nor
the database thread (it delays only later signals). Receivers may use the ORM in either case.
It is sent with `send_robust`: a receiver that raises is logged on `parley.signals`, and the
message stays stored and delivered.
"""

from __future__ import annotations

from django.dispatch import Signal

message_posted = Signal()

# Sent once for every edit, delete and reaction (docs/protocol.md §10) after its transaction
# committed, never for a request that changed nothing. Keyword arguments: `sender` (Message),
# `entry` (the log entry: `kind` "edit", "delete", "react" or "unreact", `seq`, `author` = who
# did it, `target_seq`, and `text`/`mentions` for an edit, `emoji`/`count` for a reaction),
# `message` (the message changed, as it is after the change) and `source` ("socket", "http",
# "python" or "admin"). Where it runs, and send_robust: as message_posted.
message_changed = Signal()

# Sent once for each user a new message should notify (docs/protocol.md §11; README
# "Notifications"), after its transaction committed, always on Parley's signal thread (never
# on the event loop or in the request that posted it: receivers may send mail). Keyword
# arguments: `sender` (Message), `user` (who to notify: an active user in the room, never the
# author), `room` (the Room), `message` (as message_posted's) and `reason`: "mention" (the
# message names them), "room_mention" (@room by the owner or an admin) or "dm" (a message in a
# direct conversation of theirs). Sent only when the user's notify setting for the room allows
# the reason ("nothing": none; "mentions", a room's default: mention and room_mention; "all", a
# DM's default: every reason) and they have not muted the room. send_robust, as message_posted.
notification = Signal()
