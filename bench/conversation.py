"""The conversation scenario's client logic that needs no socket: which action a client takes
next, and whether its reaction adds or removes (docs/protocol.md §10).

A conversation client speaks protocol version 2 in a room of 10 and, at each of its turns,
sends a message, edits its own last message, or toggles a reaction on one of the room's recent
messages, in the proportions of a `Mix` (70% / 15% / 15% by default). An action that cannot be
taken yet falls back to a send: there is nothing to edit before the client's first message is
acknowledged, and nothing to react to before a message reached the room.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

SEND, EDIT, REACT, UNREACT = "send", "edit", "react", "unreact"
# Three emoji a user may put on one message at most (PARLEY_MAX_REACTIONS_PER_USER is 10, and a
# message holds at most 20 different ones): the mix never hits too_many_reactions. Each is a
# single code point, so no validator can disagree about it being one emoji.
EMOJI = ("\U0001f44d", "\U0001f389", "\U0001f602")  # 👍 🎉 😂
RECENT = 5  # a reaction goes on one of the room's last RECENT messages


@dataclass(frozen=True)
class Mix:
    """Shares of a client's turns: send, edit (of its own last message), react/unreact."""

    send: float = 0.70
    edit: float = 0.15
    react: float = 0.15

    def __post_init__(self) -> None:
        shares = (self.send, self.edit, self.react)
        if any(s < 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-9:
            raise ValueError(f"a mix's shares are >= 0 and add up to 1, not {shares}")

    def label(self) -> str:
        return f"{self.send:.0%} send, {self.edit:.0%} edit, {self.react:.0%} react/unreact"

    def pick(self, u: float, *, can_edit: bool, can_react: bool) -> str:
        """The action for a uniform draw `u` in [0, 1): SEND, EDIT or REACT (REACT means "toggle a
        reaction": ReactionState.toggle says which way)."""
        if u < self.send:
            return SEND
        if u < self.send + self.edit:
            return EDIT if can_edit else SEND
        return REACT if can_react else SEND


class ReactionState:
    """One client's view of its own reactions and of the room's recent messages.

    The client is its user's only socket, so the server's reactions of that user are exactly the
    ones this state holds once every request is answered; a toggle therefore always changes
    something (never the `"seq": null` no-op of docs/protocol.md §10), and every action makes
    one log entry that reaches the whole room."""

    def __init__(self, recent: int = RECENT) -> None:
        self.recent: deque[int] = deque(maxlen=recent)
        self.mine: set[tuple[int, str]] = set()
        self.own_last: int | None = None  # seq of this client's last acknowledged message

    def saw_message(self, seq: int) -> None:
        self.recent.append(seq)

    def acked(self, seq: int) -> None:
        if self.own_last is None or seq > self.own_last:
            self.own_last = seq

    def toggle(self, rng: random.Random) -> tuple[str, int, str]:
        """(REACT or UNREACT, message seq, emoji) on one of the recent messages, with the state
        updated as if the server already did it. Half the time it takes back one of the client's
        own reactions there (when it has one), otherwise it adds one it has not put there yet:
        a client never unreacts what it did not react, nor reacts twice."""
        recent = set(self.recent)
        self.mine = {k for k in self.mine if k[0] in recent}  # older ones are never touched again
        fresh = [(seq, e) for seq in self.recent for e in EMOJI if (seq, e) not in self.mine]
        if self.mine and (not fresh or rng.random() < 0.5):
            seq, emoji = rng.choice(sorted(self.mine))
            self.mine.discard((seq, emoji))
            return UNREACT, seq, emoji
        seq, emoji = rng.choice(fresh)
        self.mine.add((seq, emoji))
        return REACT, seq, emoji


def next_action(mix: Mix, state: ReactionState, rng: random.Random) -> tuple[str, int | None, str | None]:
    """(action, target seq, emoji) for one turn: SEND with no target, EDIT of the client's own
    last message, or REACT/UNREACT on a recent message."""
    kind = mix.pick(rng.random(), can_edit=state.own_last is not None, can_react=bool(state.recent))
    if kind == EDIT:
        return EDIT, state.own_last, None
    if kind == REACT:
        return state.toggle(rng)
    return SEND, None, None
