"""Folding a room's log entries into its messages: `apply(state, entry)`.

The server's pages (`joined`, `history`, GET …/messages) show each message in its current state;
the log's entries (docs/protocol.md §10) say how it got there. Applying every entry in seq order
to the messages one holds gives the same objects a page would show now — `text`, `edited_at`,
`mentions`, `mention_room`, `deleted`, `reactions` with `me`, and the quotes of the replies to
an edited or deleted message. Every entry sets values (none adds to them), so applying one
twice does no harm.

Pure: no I/O, no client. `state` is the application's own dict (seq → message object), e.g. filled
from `joined["messages"]` and then kept with `apply(state, event, me=client.user["id"])` for each
event of `ParleyClient.events()`.
"""

from __future__ import annotations

from typing import Any

# How much of its target's text a reply's quote shows (protocol §10: `reply_to.excerpt`).
REPLY_EXCERPT_CHARS = 100

# The fields a tombstone does not have (protocol §10, `deleted`).
_GONE_WITH_DELETE = ("mentions", "mention_room", "reactions", "edited_at")


def apply(state: dict[int, dict[str, Any]], entry: dict[str, Any], *, me: int | None = None) -> dict[str, Any] | None:
    """Apply one entry event to `state` (seq → message object, changed in place); returns the
    message it made or changed, or None if it is about a message `state` does not hold (older
    than what the application loaded) or is no entry at all. `me` is your user id: a reaction
    of yours sets that emoji's `me`."""
    kind = entry.get("type")
    if kind == "message":
        message = entry.get("message")
        if not isinstance(message, dict):
            return None
        held = state.get(message["seq"])
        new = dict(message)
        if held is not None and "reactions" in held and "reactions" not in new and not new.get("deleted"):
            # A `message` event carries no reactions (its `reaction` entries bring them): one
            # read again (a resume's) must not drop those already applied.
            new["reactions"] = held["reactions"]
        state[new["seq"]] = new
        return new
    target = state.get(entry.get("target"))  # type: ignore[arg-type]
    if target is None:
        return None
    if kind == "edit":
        if target.get("deleted"):
            return target  # an edit read back after the delete: the tombstone stays one
        target["text"] = entry.get("text", "")
        target["edited_at"] = entry.get("edited_at")
        _set_or_drop(target, "mentions", entry.get("mentions") or None)
        _set_or_drop(target, "mention_room", True if entry.get("mention_room") else None)
        _requote(state, target)
    elif kind == "delete":
        target["deleted"] = True
        target["text"] = ""
        for name in _GONE_WITH_DELETE:
            target.pop(name, None)
        _requote(state, target)
    elif kind == "reaction":
        if target.get("deleted"):
            return target  # a deleted message has no reactions
        _react(target, entry, me)
    else:
        return None
    return target


def _set_or_drop(message: dict[str, Any], name: str, value: Any) -> None:
    # Version 2's fields are absent when they have their default (protocol §10).
    if value is None:
        message.pop(name, None)
    else:
        message[name] = value


def _react(message: dict[str, Any], entry: dict[str, Any], me: int | None) -> None:
    emoji, count = entry.get("emoji"), entry.get("count")
    if not isinstance(count, int):
        return
    reactions = [dict(r) for r in message.get("reactions") or []]
    found = next((r for r in reactions if r.get("emoji") == emoji), None)
    if count <= 0:
        reactions = [r for r in reactions if r is not found]
    else:
        if found is None:
            found = {"emoji": emoji, "count": count, "me": False}
            reactions.append(found)  # in the order each emoji was first added
        found["count"] = count
        user = entry.get("user")
        if me is not None and isinstance(user, dict) and user.get("id") == me:
            found["me"] = entry.get("op") == "add"
    _set_or_drop(message, "reactions", reactions or None)


def _requote(state: dict[int, dict[str, Any]], target: dict[str, Any]) -> None:
    """Replies quote their target as it is now (protocol §10, `reply_to`)."""
    deleted = bool(target.get("deleted"))
    for message in state.values():
        quote = message.get("reply_to")
        if isinstance(quote, dict) and quote.get("seq") == target["seq"]:
            message["reply_to"] = {**quote, "deleted": deleted,
                                   "excerpt": "" if deleted else target.get("text", "")[:REPLY_EXCERPT_CHARS]}
