"""The conversation scenario's mix: shares, fallbacks, and reactions that always change something."""

import random
from collections import Counter

import pytest

from bench.conversation import EDIT, EMOJI, REACT, SEND, UNREACT, Mix, ReactionState, next_action


def test_pick_splits_the_unit_interval_by_the_shares():
    mix = Mix()
    assert mix.pick(0.0, can_edit=True, can_react=True) == SEND
    assert mix.pick(0.6999, can_edit=True, can_react=True) == SEND
    assert mix.pick(0.70, can_edit=True, can_react=True) == EDIT
    assert mix.pick(0.8499, can_edit=True, can_react=True) == EDIT
    assert mix.pick(0.85, can_edit=True, can_react=True) == REACT
    assert mix.pick(0.9999, can_edit=True, can_react=True) == REACT


def test_pick_falls_back_to_send_when_there_is_nothing_to_edit_or_react_to():
    mix = Mix()
    assert mix.pick(0.75, can_edit=False, can_react=True) == SEND
    assert mix.pick(0.95, can_edit=True, can_react=False) == SEND


@pytest.mark.parametrize("shares", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.7, 0.15, 0.1)])
def test_a_mix_must_add_up_to_one(shares):
    with pytest.raises(ValueError):
        Mix(*shares)


def test_next_action_follows_the_mix_once_the_room_has_messages():
    rng = random.Random(15)
    state = ReactionState()
    state.acked(3)
    for seq in range(1, 6):
        state.saw_message(seq)
    n = 100_000
    got = Counter()
    for _ in range(n):
        kind, seq, emoji = next_action(Mix(), state, rng)
        got[REACT if kind == UNREACT else kind] += 1
        if kind == EDIT:
            assert seq == 3 and emoji is None
        elif kind in (REACT, UNREACT):
            assert 1 <= seq <= 5 and emoji in EMOJI
        else:
            assert seq is None and emoji is None
    assert abs(got[SEND] / n - 0.70) < 0.01
    assert abs(got[EDIT] / n - 0.15) < 0.01
    assert abs(got[REACT] / n - 0.15) < 0.01


def test_a_new_client_only_sends():
    rng = random.Random(1)
    state = ReactionState()
    assert {next_action(Mix(), state, rng)[0] for _ in range(1000)} == {SEND}


class Fixed(random.Random):
    """Always the first choice, and a fixed draw for the react-or-take-back coin."""

    def __init__(self, draw: float) -> None:
        super().__init__(0)
        self.draw = draw

    def random(self) -> float:
        return self.draw

    def choice(self, seq):
        return seq[0]


def test_toggle_takes_back_its_own_reaction_on_the_low_half_of_the_coin():
    state = ReactionState()
    state.saw_message(7)
    rng = Fixed(0.0)
    assert state.toggle(rng) == (REACT, 7, EMOJI[0])    # nothing to take back yet
    assert state.toggle(rng) == (UNREACT, 7, EMOJI[0])
    assert state.toggle(rng) == (REACT, 7, EMOJI[0])
    assert state.mine == {(7, EMOJI[0])}


def test_toggle_adds_new_reactions_on_the_high_half_until_none_is_left():
    state = ReactionState()
    state.saw_message(7)
    rng = Fixed(0.99)
    assert [state.toggle(rng) for _ in range(4)] == [
        (REACT, 7, EMOJI[0]), (REACT, 7, EMOJI[1]), (REACT, 7, EMOJI[2]), (UNREACT, 7, min(EMOJI))]


def test_every_toggle_changes_the_servers_state():
    """The server's no-op answers (seq null: a react already there, an unreact of nothing) would
    make entries the scenario counts on go missing: the state must never ask for one."""
    rng = random.Random(7)
    state = ReactionState()
    server: set[tuple[int, str]] = set()
    kinds = Counter()
    for seq in range(1, 200):
        state.saw_message(seq)
        for _ in range(rng.randrange(4)):
            kind, target, emoji = state.toggle(rng)
            assert target in state.recent
            key = (target, emoji)
            if kind == REACT:
                assert key not in server
                server.add(key)
            else:
                assert key in server
                server.discard(key)
            kinds[kind] += 1
    assert kinds[REACT] > kinds[UNREACT] > 0.25 * kinds[REACT]


def test_reactions_go_on_recent_messages_only_and_edits_on_the_newest_own_one():
    state = ReactionState(recent=3)
    for seq in range(1, 11):
        state.saw_message(seq)
    assert list(state.recent) == [8, 9, 10]
    state.acked(9)
    state.acked(4)  # an ack that arrives late does not move the edit target back
    assert state.own_last == 9
    rng = random.Random(2)
    assert {state.toggle(rng)[1] for _ in range(200)} == {8, 9, 10}


def test_the_table_reads_each_row_against_its_own_rounds_plain_chat_mix():
    from bench.report import conversation_table

    def row(target, rnd, dps, p99):
        return {"target": target, "round": rnd, "protocol": 2, "mix": "m", "connections": 10,
                "offered_msgs_per_s": 2.0, "deliveries_per_s": dps, "p50_ms": 1.0, "p99_ms": p99,
                "ack_p99_ms": p99, "received": 20, "expected": 20,
                "entries": {"message": 14, "edit": 3, "reaction": 3}}
    text = conversation_table([row("chat v1 (sends)", 1, 100.0, 10.0), row("conversation v2", 1, 50.0, 30.0),
                               row("conversation v2", 2, 100.0, 10.0), row("chat v1 (sends)", 2, 200.0, 40.0)])
    lines = [ln for ln in text.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 2 ")]
    assert lines[1].endswith("| 0.50× | 3.00× | 3.00× |")   # round 1: against 100 / 10
    assert lines[2].endswith("| 0.50× | 0.25× | 0.25× |")   # round 2: against 200 / 40, listed after it
    assert lines[0].endswith("| — | — | — |") and lines[3].endswith("| — | — | — |")
    assert "| 14 / 3 / 3 |" in lines[1]
