import json

import pytest

from cxrelay.protocol import (
    FLAG_CATCHUP,
    FLAG_DISCONTINUITY,
    FLAG_KEYFRAME,
    HEADER_SIZE,
    CameraState,
    decode_frame,
    encode_frame,
    init_message,
    status_message,
    with_flags,
)


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
