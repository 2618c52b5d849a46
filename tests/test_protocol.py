"""parley.protocol on its own: decoding, validation, error frames, encoding (docs/protocol.md §2, §3, §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley import protocol
from parley.protocol import (
    History,
    Join,
    Leave,
    Ping,
    ProtocolError,
    Send,
    Typing,
    decode_frame,
    parse_command,
)


def code_of(text: str | None = None, data: bytes | None = None) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_command(decode_frame(text, data))
    return info.value.code


def parse(frame: dict) -> object:
    return parse_command(frame)


def error(frame: dict) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_command(frame)
    return info.value


# --- decode_frame -----------------------------------------------------------------------------

def test_decode_object():
    assert decode_frame('{"type": "ping", "ref": "1"}', None) == {"type": "ping", "ref": "1"}


def test_binary_is_refused():
    assert code_of(None, b'{"type":"ping"}') == "binary_not_supported"


@pytest.mark.parametrize("text", ["", "{", "nope", '{"type": "ping",}', "{'type': 'ping'}", "NaN",
                                  '"\\ud800"', "\ud800", '{"a": 1e999}'])
def test_bad_json(text):
    assert code_of(text) == "bad_json"


@pytest.mark.parametrize("text", ["[]", "1", "null", '"x"', "true", "{}", '{"type": 1}', '{"type": null}',
                                  '{"type": ["ping"]}'])
def test_bad_frame(text):
    assert code_of(text) == "bad_frame"


def test_frame_too_large(parley_settings):
    parley_settings.MAX_FRAME_BYTES = 100
    ok = '{"type":"ping","p":"' + "x" * (100 - 22) + '"}'
    assert len(ok.encode()) == 100
    assert decode_frame(ok, None)["type"] == "ping"
    assert code_of(ok[:-2] + 'x"}') == "frame_too_large"
    # counted in UTF-8 bytes, not characters: 30 characters, 120 bytes
    assert code_of('{"type":"ping","p":"' + "😀" * 30 + '"}') == "frame_too_large"
    assert decode_frame('{"type":"ping","p":"' + "é" * 30 + '"}', None)["type"] == "ping"


# --- parse_command ----------------------------------------------------------------------------

def test_parse_each_type(parley_settings):
    assert parse({"type": "join", "room": "lobby"}) == Join("lobby", None, None, parley_settings.HISTORY_PAGE_DEFAULT)
    assert parse({"type": "join", "room": "lobby", "after_seq": 0, "epoch": "e", "limit": 7}) == Join("lobby", 0, "e", 7)
    assert parse({"type": "leave", "room": "lobby"}) == Leave("lobby")
    assert parse({"type": "send", "room": "lobby", "text": "  hi \n", "client_id": "c"}) == Send("lobby", "hi", "c")
    assert parse({"type": "send", "room": "lobby", "text": "hi"}) == Send("lobby", "hi", None)
    assert parse({"type": "history", "room": "lobby"}) == History("lobby", None, 50)
    assert parse({"type": "history", "room": "lobby", "before": 20, "limit": 100}) == History("lobby", 20, 100)
    assert parse({"type": "typing", "room": "lobby"}) == Typing("lobby")
    assert parse({"type": "ping"}) == Ping()


def test_unknown_fields_are_ignored():
    assert parse({"type": "ping", "x": [1, {"y": None}], "ref": "r"}) == Ping()


@pytest.mark.parametrize("kind", ["pong", "Ping", "", "hello", "message", "ack"])
def test_unknown_type(kind):
    err = error({"type": kind})
    assert err.code == "unknown_type" and err.field == "type"


def test_unknown_type_message_is_bounded():
    assert len(error({"type": "x" * 10_000}).message) < 200


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "join"}, "room"), ({"type": "leave"}, "room"), ({"type": "history"}, "room"),
    ({"type": "typing"}, "room"), ({"type": "send", "text": "x"}, "room"), ({"type": "send", "room": "r"}, "text"),
    ({"type": "join", "room": None}, "room"),
])
def test_missing_field(frame, field):
    err = error(frame)
    assert (err.code, err.field) == ("missing_field", field)


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "join", "room": 5}, "room"),
    ({"type": "join", "room": ""}, "room"),
    ({"type": "join", "room": "r" * 51}, "room"),
    ({"type": "join", "room": "r", "after_seq": True}, "after_seq"),
    ({"type": "join", "room": "r", "after_seq": False}, "after_seq"),
    ({"type": "join", "room": "r", "after_seq": -1}, "after_seq"),
    ({"type": "join", "room": "r", "after_seq": 2**53 + 1}, "after_seq"),
    ({"type": "join", "room": "r", "after_seq": 1.0}, "after_seq"),
    ({"type": "join", "room": "r", "after_seq": "1"}, "after_seq"),
    ({"type": "join", "room": "r", "epoch": 1}, "epoch"),
    ({"type": "join", "room": "r", "epoch": "e" * 65}, "epoch"),
    ({"type": "join", "room": "r", "limit": 0}, "limit"),
    ({"type": "join", "room": "r", "limit": True}, "limit"),
    ({"type": "history", "room": "r", "before": 0}, "before"),
    ({"type": "history", "room": "r", "before": True}, "before"),
    ({"type": "history", "room": "r", "limit": 10**100}, "limit"),
    ({"type": "send", "room": "r", "text": 1}, "text"),
    ({"type": "send", "room": "r", "text": False}, "text"),
    ({"type": "send", "room": "r", "text": "x", "client_id": 1}, "client_id"),
    ({"type": "send", "room": "r", "text": "x", "client_id": "c" * 65}, "client_id"),
    ({"type": "ping", "ref": 1}, "ref"),
    ({"type": "ping", "ref": ""}, "ref"),
    ({"type": "ping", "ref": "r" * 65}, "ref"),
])
def test_bad_field(frame, field):
    err = error(frame)
    assert (err.code, err.field) == ("bad_field", field), err.message


def test_boundaries_accepted():
    assert parse({"type": "join", "room": "r" * 50, "after_seq": 2**53, "epoch": "e" * 64, "limit": 100}).limit == 100
    assert parse({"type": "join", "room": "r", "limit": 1}).limit == 1
    assert parse({"type": "history", "room": "r", "before": 1}).before == 1
    assert parse({"type": "send", "room": "r", "text": "x", "client_id": "c" * 64}).client_id == "c" * 64
    assert parse({"type": "ping", "ref": "r" * 64}) == Ping()
    assert parse({"type": "ping", "ref": "r"}) == Ping()


def test_text_rules(parley_settings):
    assert error({"type": "send", "room": "r", "text": ""}).code == "text_empty"
    assert error({"type": "send", "room": "r", "text": " \t\n\u00a0 "}).code == "text_empty"
    assert parse({"type": "send", "room": "r", "text": "x" * 4000}).text == "x" * 4000
    assert parse({"type": "send", "room": "r", "text": " " + "x" * 4000 + " "}).text == "x" * 4000
    err = error({"type": "send", "room": "r", "text": "x" * 4001})
    assert (err.code, err.field) == ("text_too_long", "text")
    assert "4,001" in err.message and "4,000" in err.message
    parley_settings.MAX_TEXT_CHARS = 5
    assert error({"type": "send", "room": "r", "text": "123456"}).code == "text_too_long"


def test_frame_ref():
    assert protocol.frame_ref({"ref": "a"}) == "a"
    assert protocol.frame_ref({"ref": 1}) is None
    assert protocol.frame_ref({"ref": ""}) is None
    assert protocol.frame_ref({}) is None


# --- errors and encoding ----------------------------------------------------------------------

def test_error_frame_shape():
    err = ProtocolError("text_too_long", "too long", field="text", room="lobby", retry_after_ms=5)
    assert err.to_frame("r1") == {"type": "error", "code": "text_too_long", "message": "too long",
                                  "field": "text", "room": "lobby", "retry_after_ms": 5, "ref": "r1"}
    assert ProtocolError("bad_json", "nope").to_frame(None) == {"type": "error", "code": "bad_json", "message": "nope"}


def test_encode_is_compact_json():
    text = protocol.encode({"type": "pong", "ref": "é"})
    assert isinstance(text, str)
    assert text == '{"type":"pong","ref":"é"}'


def test_error_codes_match_the_documentation():
    documented = {"bad_json", "bad_frame", "binary_not_supported", "frame_too_large", "unknown_type",
                  "missing_field", "bad_field", "text_empty", "text_too_long", "room_not_found",
                  "not_joined", "commit_failed", "internal_error", "message_not_found", "message_deleted",
                  "forbidden", "too_many_reactions"}
    defined = {getattr(protocol, name) for name in dir(protocol) if name.isupper()
               and isinstance(getattr(protocol, name), str)}
    assert documented <= defined
    assert (protocol.CLOSE_CREDENTIALS_REVOKED, protocol.CLOSE_HEARTBEAT_TIMEOUT) == (4401, 4408)
    assert protocol.PROTOCOL_VERSIONS == (1, 2) and protocol.PROTOCOL_VERSION == 2
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert all(f"`{code}`" in doc for code in documented)


# --- rules a client needs from protocol.md §2-§3: null, ranges, limit, bad_frame's ref ---------

def test_null_is_the_same_as_absent(parley_settings):
    """protocol.md §2: a field whose value is null counts as absent, ref included."""
    page = parley_settings.HISTORY_PAGE_DEFAULT
    assert parse({"type": "join", "room": "r", "after_seq": None, "epoch": None, "limit": None,
                  "ref": None}) == Join("r", None, None, page)
    assert parse({"type": "history", "room": "r", "before": None, "limit": None}) == History("r", None, page)
    assert parse({"type": "send", "room": "r", "text": "x", "client_id": None}) == Send("r", "x", None)
    assert parse({"type": "ping", "ref": None}) == Ping()
    # a required field that is null is missing, as if absent
    assert (error({"type": "send", "room": None, "text": "x"}).code,
            error({"type": "send", "room": "r", "text": None}).code) == ("missing_field", "missing_field")


def test_seq_fields_range_up_to_2_to_the_53():
    assert parse({"type": "join", "room": "r", "after_seq": 2**53}).after_seq == 2**53
    assert parse({"type": "history", "room": "r", "before": 2**53}).before == 2**53
    assert parse({"type": "join", "room": "r", "after_seq": 0}).after_seq == 0
    for frame, field in [({"type": "join", "room": "r", "after_seq": 2**53 + 1}, "after_seq"),
                         ({"type": "history", "room": "r", "before": 2**53 + 1}, "before"),
                         ({"type": "history", "room": "r", "before": 0}, "before")]:
        err = error(frame)
        assert (err.code, err.field) == ("bad_field", field)


def test_a_limit_above_the_page_maximum_is_clamped(parley_settings):
    """One rule for the WebSocket and GET …/messages (security.md): above the max, clamped;
    below 1 or not an integer, bad_field."""
    parley_settings.HISTORY_PAGE_MAX = 100
    assert parse({"type": "join", "room": "r", "limit": 101}).limit == 100
    assert parse({"type": "history", "room": "r", "limit": 2**53}).limit == 100
    assert parse({"type": "history", "room": "r", "limit": 100}).limit == 100
    for bad in (0, -1, 2**53 + 1, 1.5, "5", True):
        err = error({"type": "history", "room": "r", "limit": bad})
        assert (err.code, err.field) == ("bad_field", "limit"), bad


@pytest.mark.parametrize("frame", [{"ref": "x1"}, {"type": None, "ref": "x1"}, {"type": 7, "ref": "x1"}])
def test_bad_frame_keeps_a_valid_ref(frame):
    import json

    with pytest.raises(ProtocolError) as caught:
        decode_frame(json.dumps(frame), None)
    assert caught.value.code == "bad_frame"
    assert caught.value.to_frame(None)["ref"] == "x1"


def test_peek_ref_never_raises():
    from parley.protocol import peek_ref

    assert peek_ref('{"type": "ping", "ref": "a"}') == "a"
    assert peek_ref('{"ref": "b"}') == "b"  # bad_frame, but its ref is readable
    assert peek_ref("{") is None and peek_ref(None) is None and peek_ref('{"ref": 5}') is None
