import json

import pytest

from cxrelay.protocol import (
    FLAG_CATCHUP,
    FLAG_DISCONTINUITY,
    FLAG_KEYFRAME,
    HEADER_SIZE,
    MAX_STATS_SAMPLES,
    CameraState,
    Ping,
    ProtocolError,
    Select,
    Stats,
    decode_frame,
    encode_frame,
    init_message,
    parse_client_message,
    pong_message,
    status_message,
    watch_options,
    with_flags,
)
from cxrelay.ratelimit import TokenBucket


def test_header_layout_is_17_bytes_big_endian() -> None:
    msg = encode_frame(FLAG_KEYFRAME, -2, 1_700_000_000_000_000, b"\x00\x00\x00\x01\x65")
    assert HEADER_SIZE == 17
    assert msg[0] == 0x01
    assert msg[1:9] == (-2).to_bytes(8, "big", signed=True)
    assert msg[9:17] == (1_700_000_000_000_000).to_bytes(8, "big")
    assert msg[17:] == b"\x00\x00\x00\x01\x65"


def test_round_trip() -> None:
    frame = decode_frame(encode_frame(FLAG_KEYFRAME | FLAG_CATCHUP, 40_000, 123, b"au"))
    assert (frame.flags, frame.pts_us, frame.ingest_us, frame.payload) == (3, 40_000, 123, b"au")
    assert frame.keyframe


def test_short_message_is_rejected() -> None:
    with pytest.raises(ValueError, match="shorter than the header"):
        decode_frame(b"\x01" * 16)


def test_with_flags_copies_only_when_needed() -> None:
    msg = encode_frame(FLAG_KEYFRAME, 0, 0, b"x")
    assert with_flags(msg, 0) is msg
    assert with_flags(msg, FLAG_KEYFRAME) is msg
    flagged = with_flags(msg, FLAG_DISCONTINUITY)
    assert flagged[0] == FLAG_KEYFRAME | FLAG_DISCONTINUITY and flagged[1:] == msg[1:]
    assert msg[0] == FLAG_KEYFRAME  # the shared original is untouched


def test_init_and_status_messages() -> None:
    init = json.loads(init_message("lobby", "avc1.42c01e", 640, 360))
    assert init == {"type": "init", "protocol": 1, "camera": "lobby", "codec": "avc1.42c01e",
                    "width": 640, "height": 360}
    assert json.loads(status_message(CameraState.LIVE)) == {"type": "status", "state": "live"}
    assert json.loads(status_message(CameraState.OFFLINE, "401 Unauthorized"))["reason"] == \
        "401 Unauthorized"


def test_camera_states_keep_their_wire_strings() -> None:
    assert [str(s) for s in CameraState] == ["idle", "connecting", "live", "offline"]
    assert json.dumps({"state": CameraState.CONNECTING}) == '{"state": "connecting"}'


def test_init_tells_the_stream_its_siblings_and_the_relay_clock() -> None:
    init = json.loads(init_message(
        "lobby", "avc1.42c01e", 640, 360, stream="sub", frames="all", time_us=12,
        streams=[{"name": "main", "width": None, "height": None},
                 {"name": "sub", "width": 640, "height": 360}]))
    assert (init["stream"], init["frames"], init["time"]) == ("sub", "all", 12)
    assert init["streams"][1] == {"name": "sub", "width": 640, "height": 360}
    assert json.loads(pong_message(7, 99)) == {"type": "pong", "time": 99, "id": 7}


def test_watch_options_from_the_query() -> None:
    assert watch_options("/ws/a") == ("main", False)
    assert watch_options("/ws/a?token=x&stream=sub&frames=keyframes") == ("sub", True)
    for bad in ("/ws/a?stream=hd", "/ws/a?frames=some", "/ws/a?stream=" + "x" * 5000):
        with pytest.raises(ProtocolError):
            watch_options(bad)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"type":"select","stream":"sub"}', Select("sub", None)),
    ('{"type":"select","frames":"keyframes"}', Select(None, "keyframes")),
    ('{"type":"ping","id":3}', Ping(3)),
    ('{"type":"ping","id":-1}', Ping(None)),
    ('{"type":"ping","id":1e308}', Ping(None)),
    ('{"type":"stats","latency":[40, 51.5],"dropped":2}', Stats((40.0, 51.5), 2)),
    # Out of bounds is left out, never trusted: negative, huge, NaN-like, wrong types.
    ('{"type":"stats","latency":[-1, 1e300, 60001, "9", true, null, 7],"dropped":1e9}',
     Stats((7.0,), 0)),
    ('{"type":"stats","latency":"fast","dropped":true}', Stats((), 0)),
    ('{"type":"stats","dropped":' + "9" * 4000 + "}", Stats((), 0)),
    # Ignored: unknown types, not objects, not JSON, nested to blow the parser's stack.
    ('{"type":"hello"}', None),
    ("[1,2]", None),
    ("not json", None),
    ("[" * 4000, None),
    ('{"a":' * 2000 + "1" + "}" * 2000, None),
])
def test_client_messages(text: str, expected: object) -> None:
    assert parse_client_message(text) == expected


def test_stats_samples_are_bounded() -> None:
    stats = parse_client_message(json.dumps({"type": "stats", "latency": [30] * 1000}))
    assert isinstance(stats, Stats) and len(stats.latency_ms) == MAX_STATS_SAMPLES


@pytest.mark.parametrize("text", [
    '{"type":"select","stream":"4k"}', '{"type":"select","stream":["sub"]}',
    '{"type":"select","frames":"odd"}', '{"type":"select","stream":"' + "s" * 3000 + '"}',
])
def test_a_select_for_what_does_not_exist_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError, match=r"^select: (stream|frames) must be"):
        parse_client_message(text)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=3)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.5)
    assert bucket.take(101.6) and not bucket.take(101.6)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]  # burst, not more
