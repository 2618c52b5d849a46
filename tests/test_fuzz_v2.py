"""Property tests for protocol version 2's frames (docs/protocol.md §10): `edit`, `delete`,
`react`, `unreact` and `send` with `reply_to`, first at the protocol layer (parse_command on
random and garbage fields: wrong types, huge ints, NUL, odd emoji), then through a version 2
socket on the real ASGI application, where the socket must stay open, answer every frame in
order with a documented reply, and put in the room's log exactly the entries it acknowledged.

Deterministic (derandomize=True, a fixed seed) so CI sees the same examples every run; the same
shape as tests/test_fuzz.py, which covers version 1's frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import emoji as emoji_lib
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from config.asgi import application
from parley import protocol
from parley.models import Message, Room
from parley.protocol import (
    Delete,
    Edit,
    Join,
    Leave,
    Ping,
    ProtocolError,
    React,
    Send,
    decode_frame,
    parse_command,
)
from tests.conftest import HOST, ORIGIN, Client, make_token, override_parley
from tests.test_fuzz import PARSE_CODES, Raw, check_command, huge_ints, json_scalars, json_values

FAST = settings(max_examples=300, deadline=None, derandomize=True)
V2_TYPES = ["edit", "delete", "react", "unreact", "send"]
TYPES = [*V2_TYPES, "join", "ping", "reacted", "edited", "reaction", "EDIT", ""]
# Codes a version 2 socket may answer a conversation frame with (§6, §10).
CONVERSATION_CODES = {"message_not_found", "message_deleted", "forbidden", "too_many_reactions"}
DOCUMENTED_CODES = PARSE_CODES | CONVERSATION_CODES | {"not_joined", "commit_failed", "internal_error",
                                                       "rate_limited"}

# Odd emoji, and things that look like one: skin tones alone and applied, ZWJ sequences, flags,
# keycaps, tag sequences, variation selectors, two emoji, an emoji with text or NUL, too long.
ODD_EMOJI = [
    "👍", "👍🏽", "🏽", "👩🏽‍💻", "👨‍👩‍👧‍👦", "🇫🇷", "🇫", "1️⃣", "#", "❤️", "❤", "\ufe0f", "\u200d", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "👍👍", "👍 ", " 👍", "a", "ab", ":+1:", "👍\x00", "\x00", "", "x" * 33, "👍" * 17, "🫠", "\U0010ffff",
    "<script>", "©", "™", "↔️",
]
emojis = st.one_of(st.sampled_from(ODD_EMOJI), st.text(max_size=3), st.sampled_from([5, True, None, ["👍"], {}]))
seqs = st.one_of(st.integers(-2, 40), huge_ints, st.sampled_from([0, 1, 2**53, True, 1.0, "1", None, [1]]))
texts = st.one_of(
    st.text(max_size=30), json_scalars,
    st.sampled_from(["", "  ", "x" * 4000, "y" * 4001, "a\x00b", "**bold** _it_ @ada @room",
                     "[x](javascript:alert(1)) <img src=x onerror=alert(1)>", "\u202etxet"]),
)


def v2_frames(rooms: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames that look like version 2 commands: the right names, values often right, often not."""
    values = {
        "ref": st.one_of(st.text(min_size=1, max_size=8, alphabet="abc123"), st.sampled_from(["", "r" * 65, 7, None])),
        "room": st.sampled_from(rooms),
        "seq": seqs,
        "text": texts,
        "emoji": emojis,
        "reply_to": seqs,
        "client_id": st.one_of(st.sampled_from(["c1", "c2", "", "z" * 65]), json_scalars),
    }
    return st.builds(
        lambda kind, chosen, extra: {**extra, **chosen, "type": kind},
        st.sampled_from(TYPES),
        st.fixed_dictionaries({}, optional=values),
        st.dictionaries(st.sampled_from(["x", "target", "op", "count", "by"]), json_values, max_size=2),
    )


def check_v2_command(command: Any, frame: dict[str, Any]) -> None:
    """What a parsed version 2 command guarantees."""
    if isinstance(command, (Edit, Delete, React)):
        assert isinstance(command.room, str) and 1 <= len(command.room) <= 50 and "\x00" not in command.room
        assert type(command.seq) is int and 1 <= command.seq <= 2**53
    if isinstance(command, Edit):
        assert command.text == command.text.strip() and 1 <= len(command.text) <= 4000
        assert "\x00" not in command.text
    if isinstance(command, React):
        assert command.add is (frame["type"] == "react")
        assert isinstance(command.emoji, str) and 1 <= len(command.emoji) <= 32 and "\x00" not in command.emoji
        assert emoji_lib.is_emoji(command.emoji)  # one emoji, as §10 documents
    if isinstance(command, Send):
        assert command.reply_to is None or (type(command.reply_to) is int and 1 <= command.reply_to <= 2**53)
    if not isinstance(command, (Edit, Delete, React)):
        check_command(command)


def parse(frame: dict[str, Any], version: int = 2) -> Any:
    """The command, or the ProtocolError — which must carry a documented code and encode."""
    try:
        command = parse_command(frame, version=version)
    except ProtocolError as err:
        assert err.code in PARSE_CODES, err.code
        encoded = json.loads(protocol.encode(err.to_frame(protocol.frame_ref(frame))))
        assert encoded["code"] == err.code and isinstance(encoded["message"], str)
        return err
    check_v2_command(command, frame)
    return command


# --- (a) the parser ---------------------------------------------------------------------------

@FAST
@given(v2_frames(["lobby", "", "x" * 51, 5, None, ["lobby"], "lo\u0000bby", "Lobby"]))
def test_parse_v2_frames(frame):
    direct = parse(frame)
    # The same frame off the wire (JSON, then decode_frame) gets the same answer.
    try:
        decoded = decode_frame(json.dumps(frame), None)
    except ProtocolError as err:
        assert err.code in PARSE_CODES
        return
    again = parse(decoded)
    if isinstance(direct, ProtocolError):
        assert isinstance(again, ProtocolError) and again.code == direct.code
    else:
        assert again == direct


@FAST
@given(v2_frames(["lobby"]))
def test_version_1_knows_no_conversation_commands(frame):
    """On a version 1 socket the new types are unknown_type and send's reply_to is ignored."""
    result = parse(frame, version=1)
    if frame["type"] in ("edit", "delete", "react", "unreact") and frame_ref_ok(frame):
        assert isinstance(result, ProtocolError) and result.code == "unknown_type"
    if isinstance(result, Send):
        assert result.reply_to is None


def frame_ref_ok(frame: dict[str, Any]) -> bool:
    ref = frame.get("ref")
    return ref is None or protocol.frame_ref(frame) is not None


@FAST
@given(st.one_of(st.text(max_size=40), st.sampled_from(ODD_EMOJI)))
def test_emoji_is_one_emoji_or_bad_field(value):
    result = parse({"type": "react", "room": "lobby", "seq": 1, "emoji": value})
    if isinstance(result, ProtocolError):
        assert (result.code, result.field) in {("bad_field", "emoji"), ("missing_field", "emoji")}
    else:
        # Unicode's fully-qualified form of the same emoji ("©" → "©️"), never another one.
        assert result.emoji.replace("\ufe0f", "") == value.replace("\ufe0f", "")


@FAST
@given(st.sampled_from(["edit", "delete", "react", "unreact"]), seqs)
def test_seq_is_an_integer_from_1_to_2_53(kind, seq):
    frame = {"type": kind, "room": "lobby", "seq": seq, "text": "t", "emoji": "👍"}
    result = parse(frame)
    if seq is None:
        assert isinstance(result, ProtocolError) and (result.code, result.field) == ("missing_field", "seq")
    elif type(seq) is int and 1 <= seq <= 2**53:
        assert result.seq == seq
    else:
        assert isinstance(result, ProtocolError) and (result.code, result.field) == ("bad_field", "seq")


# --- (b) a version 2 socket under random frame sequences ------------------------------------

VISIBLE_ROOMS = ["lobby", "other"]
ROOM_CHOICES = ["lobby", "lobby", "other", "secret", "nope", "", 5, None]
REPLY_TYPES = {"joined", "left", "ack", "history", "pong", "error", "edited", "deleted", "reacted"}
EVENT_TYPES = {"message", "edit", "delete", "reaction", "presence", "typing",
               # addressed to the user (protocol §11, §12): the room list after hello, and what
               # a join of a public room for the first time announces to the user's sockets
               "rooms", "read", "room_state", "room_added", "room_removed", "room_updated"}
# What a well-formed conversation frame for a joined room may be answered with: it depends on
# the log (which seq is a message, whose, deleted, how many reactions), which the fuzz makes.
OUTCOMES = {
    Edit: {"edited", "error:message_not_found", "error:message_deleted", "error:forbidden"},
    Delete: {"deleted", "error:message_not_found", "error:forbidden"},
    React: {"reacted", "error:message_not_found", "error:message_deleted", "error:too_many_reactions"},
    Send: {"ack", "error:message_not_found", "error:message_deleted"},
}


def _valid_v2() -> st.SearchStrategy[dict[str, Any]]:
    room = st.sampled_from(["lobby", "lobby", "lobby", "other", "nope"])
    seq = st.integers(1, 30)
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("edit"), "room": room, "seq": seq,
                               "text": st.text(min_size=1, max_size=20).filter(lambda t: t.strip() and "\x00" not in t)}),
        st.fixed_dictionaries({"type": st.just("delete"), "room": room, "seq": seq}),
        st.fixed_dictionaries({"type": st.sampled_from(["react", "unreact"]), "room": room, "seq": seq,
                               "emoji": st.sampled_from(["👍", "👍🏽", "👩🏽‍💻", "🇫🇷", "❤️", "🎉"])}),
        st.fixed_dictionaries({"type": st.just("send"), "room": room, "text": st.just("a reply"),
                               "reply_to": seq}, optional={"client_id": st.sampled_from(["r1", "r2", "r3"])}),
        st.fixed_dictionaries({"type": st.just("send"), "room": room, "text": st.just("plain")}),
        st.fixed_dictionaries({"type": st.sampled_from(["join", "leave"]), "room": room}),
    )


def _with_ref(frame: dict[str, Any], ref: str | None) -> dict[str, Any]:
    return frame if ref is None else {**frame, "ref": ref}


_refs = st.one_of(st.none(), st.text(alphabet="abcdef0123", min_size=1, max_size=6))
wire_frames = st.one_of(
    *[st.builds(_with_ref, _valid_v2(), _refs).map(lambda f: Raw(text=json.dumps(f))) for _ in range(5)],
    v2_frames(ROOM_CHOICES).map(lambda f: Raw(text=json.dumps(f))),
    v2_frames(ROOM_CHOICES).map(lambda f: Raw(text=json.dumps(f))),
    st.sampled_from([
        Raw(text='{"type":"edit","room":"lobby","seq":' + "9" * 400 + ',"text":"x"}'),
        Raw(text='{"type":"react","room":"lobby","seq":1,"emoji":"\\ud83d"}'),  # half a surrogate pair
        Raw(text='{"type":"react","room":"lobby","seq":1e999,"emoji":"👍"}'),
        Raw(text='{"type":"delete","room":"lobby","seq":1,"type":"ping"}'),
        Raw(text='{"type":"send","room":"lobby","text":"r","reply_to":-0}'),
        Raw(data=b'{"type":"edit"}'),
    ]),
)


@dataclass
class Oracle:
    """Each frame's expected reply: one exact answer, or the set a valid conversation frame may get."""

    joined: set[str] = field(default_factory=lambda: {"lobby", "other"})

    def expect(self, raw: Raw) -> tuple[set[str], str | None] | None:
        try:
            frame = decode_frame(raw.text, raw.data)
        except ProtocolError as err:
            return {f"error:{err.code}"}, None
        ref = protocol.frame_ref(frame)
        try:
            cmd = parse_command(frame, version=2)
        except ProtocolError as err:
            return {f"error:{err.code}"}, ref
        if isinstance(cmd, Ping):
            return {"pong"}, ref
        if isinstance(cmd, Join):
            if cmd.room not in VISIBLE_ROOMS:
                return {"error:room_not_found"}, ref
            self.joined.add(cmd.room)
            return {"joined"}, ref
        if cmd.room not in self.joined:
            return {"error:not_joined"}, ref
        if isinstance(cmd, Leave):
            self.joined.discard(cmd.room)
            return {"left"}, ref
        if isinstance(cmd, Send) and cmd.reply_to is None:
            return {"ack"}, ref
        outcomes = OUTCOMES.get(type(cmd))
        if outcomes is not None:
            return outcomes, ref
        return None  # typing: no reply; history: not generated here


@database_sync_to_async
def _world() -> tuple[Any, Any]:
    User = get_user_model()
    ada = User.objects.filter(username="ada").first() or User.objects.create_user("ada")
    bob = User.objects.filter(username="bob").first() or User.objects.create_user("bob")
    for slug in VISIBLE_ROOMS:
        Room.objects.get_or_create(slug=slug, defaults={"title": slug})
    if not Room.objects.filter(slug="secret").exists():
        from parley import services
        services.room_create(slug="secret", title="Secret", owner=bob, is_private=True)
    return ada, bob


@database_sync_to_async
def _log_of(slug: str) -> list[tuple[int, str]]:
    return list(Message.objects.filter(room__slug=slug).order_by("seq").values_list("seq", "kind"))


async def _connect_v2(user: Any) -> Client:
    token = await make_token(user)
    headers = [(b"authorization", f"Bearer {token}".encode()), (b"origin", ORIGIN), (b"host", HOST)]
    communicator = WebsocketCommunicator(application, "/ws/chat/?protocol=2", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected, "handshake refused"
    hello = await communicator.receive_json_from(timeout=3)
    assert hello["type"] == "hello" and hello["protocol"] == 2
    return Client(communicator, user, hello)


async def _send_raw(client: Client, raw: Raw) -> None:
    if raw.data is not None:
        await client.ws.send_input({"type": "websocket.receive", "bytes": raw.data})
    else:
        await client.ws.send_input({"type": "websocket.receive", "text": raw.text})


@pytest.mark.django_db(transaction=True)
@seed(20261202)  # fixed seed and no example database: the same examples in every run
@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(wire_frames, min_size=2, max_size=14))
async def test_v2_socket_survives_random_conversation_frames(frames):
    # The edit bucket (2/s, burst 20 per user) is tested in tests/test_client_conversations.py;
    # here it would turn most frames into rate_limited strikes.
    with override_parley(EDITS_PER_SEC=100_000, EDITS_BURST=100_000):
        await _fuzz(frames)


async def _fuzz(frames: list[Raw]) -> None:
    ada, bob = await _world()
    fuzzer, observer = await _connect_v2(ada), await _connect_v2(bob)
    try:
        for room in VISIBLE_ROOMS:
            await fuzzer.join(room)
        await observer.join("lobby")
        # Something to edit, react to and reply to: ada's (hers to edit) and bob's (forbidden).
        await fuzzer.say("lobby", "ada's message")
        await observer.say("lobby", "bob's message")
        base = len(await _log_of("lobby"))
        await observer.messages(2)
        observer.inbox.clear()

        oracle = Oracle()
        expected = [e for e in (oracle.expect(raw) for raw in frames) if e is not None]
        for raw in frames:
            await _send_raw(fuzzer, raw)
        await fuzzer.send({"type": "ping", "ref": "final-ping"})

        replies: list[dict[str, Any]] = []
        while True:
            frame = await fuzzer.recv(timeout=10)
            assert frame["type"] in REPLY_TYPES | EVENT_TYPES, frame
            if frame["type"] in REPLY_TYPES:
                replies.append(frame)
                if frame.get("ref") == "final-ping":
                    break
        assert replies.pop() == {"type": "pong", "ref": "final-ping"}  # the socket still answers
        assert len(replies) == len(expected), (replies, expected)
        for reply, (allowed, ref) in zip(replies, expected, strict=True):
            got = "error:" + reply["code"] if reply["type"] == "error" else reply["type"]
            assert got in allowed and reply.get("ref") == ref, (reply, allowed, ref)
            if reply["type"] == "error":
                assert reply["code"] in DOCUMENTED_CODES and isinstance(reply["message"], str)
        event(f"conversation replies: {min(sum(r['type'] in ('edited', 'deleted', 'reacted') for r in replies), 3)}")

        # The lobby's log gained exactly the entries the replies name, and its seqs stay 1..N.
        made = sorted(r["seq"] for r in replies
                      if r.get("room") == "lobby" and r["type"] in ("edited", "deleted", "reacted", "ack")
                      and isinstance(r.get("seq"), int) and not r.get("duplicate"))
        log = await _log_of("lobby")
        assert [seq for seq, _ in log] == list(range(1, len(log) + 1))
        assert made == list(range(base + 1, len(log) + 1))
        # ... and the observer got each of them once, in order, as its event.
        for seq in made:
            frame = await observer.recv(timeout=5)
            while frame["type"] in ("presence", "typing", "rooms", "read", "room_state", "room_added", "room_updated"):
                frame = await observer.recv(timeout=5)
            assert frame["type"] in ("message", "edit", "delete", "reaction"), frame
            got = frame["message"]["seq"] if frame["type"] == "message" else frame["seq"]
            assert got == seq
        await observer.nothing(timeout=0.05)
        assert not [f for f in observer.inbox if f["type"] in ("message", "edit", "delete", "reaction")]
        assert (await observer.request({"type": "ping"}))["type"] == "pong"
    finally:
        await fuzzer.close()
        await observer.close()
