"""The client's pure pieces: URLs, error messages, which frames it hands out
across reconnects, and which frames pictures() decodes when."""

from __future__ import annotations

import av
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from cxrelay import client
from cxrelay.client import (
    Busy,
    Camera,
    Frame,
    Init,
    ProtocolError,
    TokenExpired,
    Unauthorized,
    _Continuity,
    _Pending,
    _split_url,
)
from cxrelay.decoding import decoder_name, fit, packed_bytes

INIT = Init("lobby", "avc1.42c01e", 640, 360)


def frame(n: int, *, key: bool = False, catchup: bool = False, disc: bool = False,
          init: Init = INIT, size: int = 10) -> Frame:
    return Frame(data=bytes(size), pts=n * 40_000, received=1_700_000_000 + n * 0.04,
                 keyframe=key, catchup=catchup, discontinuity=disc, init=init)


# --- URLs and errors -------------------------------------------------------------------------


def test_url_token_is_taken_out_of_the_url() -> None:
    url, token, name = _split_url("http://user:pw@edge:8080/ws/lobby%20a?token=SECRET&x=1")
    assert url == "ws://edge:8080/ws/lobby%20a?x=1"
    assert token == "SECRET"
    assert name == "lobby a"
    assert _split_url("wss://edge/ws/door")[0] == "wss://edge/ws/door"


@pytest.mark.parametrize("bad", ["edge:8080/ws/x", "ftp://edge/ws/x", "ws://edge/x",
                                 "ws://edge/ws/", "ws:///ws/x"])
def test_bad_urls_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*ws://edge:8080/ws/lobby$"):
        _split_url(bad)


def test_the_token_never_shows() -> None:
    cam = Camera("ws://edge:8080/ws/lobby?token=SECRET-TOKEN")
    assert "SECRET" not in repr(cam) and "SECRET" not in cam.url
    cam = Camera("ws://edge:8080/ws/lobby", token="SECRET-TOKEN")
    error = Unauthorized(cam.url, "token expired", status=401)
    for text in (repr(cam), str(error), repr(error)):
        assert "SECRET" not in text
    assert str(error) == "ws://edge:8080/ws/lobby: unauthorized (401): token expired"
    assert str(Busy("ws://e/ws/a")) == "ws://e/ws/a: busy"


def closed(code: int, reason: str = "") -> ConnectionClosedError:
    return ConnectionClosedError(Close(code, reason), None)


def test_close_codes_map_to_errors() -> None:
    cam = Camera("ws://edge/ws/lobby", token="t")
    with pytest.raises(TokenExpired, match=r"token expired \(1008\): token expired$"):
        cam._dropped(closed(1008, "token expired"))
    with pytest.raises(ProtocolError, match=r"\(1003\)"):
        cam._dropped(closed(1003, "binary messages are not accepted"))
    with pytest.raises(ProtocolError, match=r"\(1008\): too many pings$"):
        cam._dropped(closed(1008, "too many pings"))
    cam._dropped(closed(1008, "not reading"))  # too slow a consumer: reconnect
    assert (cam.state, cam.reason) == ("offline", "not reading")
    cam._dropped(closed(1001, "server shutting down"))  # retried, not raised
    assert (cam.state, cam.reason) == ("offline", "server shutting down")
    cam._dropped(ConnectionClosedError(None, None))  # no close frame: 1006
    assert (cam.state, cam.reason) == ("offline", "relay unreachable")


def test_an_expired_token_from_a_function_is_fetched_again() -> None:
    cam = Camera("ws://edge/ws/lobby", token=lambda: "fresh")
    cam._dropped(closed(1008, "token expired"))
    assert cam._fresh_token and cam.state == "offline"


# --- continuity across reconnects --------------------------------------------------------------


def deliver(c: _Continuity, frames: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
    """(ingest, keyframe) in; (ingest, gap) of the frames handed out."""
    out = []
    for ingest, key in frames:
        gap = c.admit(ingest, ingest * 10, key)
        if gap is not None:
            out.append((ingest, gap))
    return out


def test_first_connection_hands_out_everything() -> None:
    c = _Continuity()
    c.new_connection()
    c.new_init(False)
    assert deliver(c, [(1, True), (2, False), (3, False)]) == [(1, False), (2, False), (3, False)]


def test_reconnect_to_the_same_stream_skips_what_was_given() -> None:
    c = _Continuity()
    c.new_connection()
    c.new_init(False)
    deliver(c, [(1, True), (2, False), (3, False)])
    c.new_connection()
    c.new_init(True)  # the relay's catch-up from the keyframe, then live frames
    assert deliver(c, [(1, True), (2, False), (3, False), (4, False), (5, False)]) == \
        [(4, False), (5, False)]


def test_reconnect_after_the_gop_moved_on_restarts_at_a_keyframe_marked_gap() -> None:
    c = _Continuity()
    c.new_connection()
    c.new_init(False)
    deliver(c, [(1, True), (2, False)])
    c.new_connection()
    c.new_init(True)
    assert deliver(c, [(7, True), (8, False)]) == [(7, True), (8, False)]


def test_a_new_stream_is_a_gap_even_with_the_same_parameters() -> None:
    c = _Continuity()
    c.new_connection()
    c.new_init(False)
    deliver(c, [(1, True), (2, False)])
    c.new_init(True)  # second init on one connection: the camera restarted
    assert deliver(c, [(9, True), (10, False)]) == [(9, True), (10, False)]
    c.new_connection()
    c.new_init(False)  # other parameters after a reconnect: no resync
    assert deliver(c, [(9, False), (11, True)]) == [(11, True)]


# --- pictures(): what to decode when -----------------------------------------------------------


def test_catchup_is_decoded_at_once_and_only_a_live_frame_makes_a_picture() -> None:
    p = _Pending(10_000)
    for n in range(5):
        p.add(frame(n, key=n == 0, catchup=True))
    job = p.next_job(None)
    assert job is not None and not job.picture and job.restart
    assert [f.pts for f in job.frames] == [n * 40_000 for n in range(5)]
    p.add(frame(5))
    job = p.next_job(None)
    assert job is not None and job.picture and not job.restart
    assert [f.pts for f in job.frames] == [200_000]


def test_frames_wait_until_a_picture_is_due_and_a_keyframe_drops_the_old_ones() -> None:
    p = _Pending(10_000)
    p.add(frame(0, key=True))
    due = frame(10).received
    assert p.next_job(due) is None
    for n in range(1, 5):
        p.add(frame(n))
    assert p.next_job(due) is None
    p.add(frame(5, key=True))  # nothing before it is needed any more
    p.add(frame(6))
    assert p.skipped == 5 and p.next_job(due) is None
    for n in range(7, 11):
        p.add(frame(n))
    job = p.next_job(due)
    assert job is not None and job.picture
    assert [f.pts // 40_000 for f in job.frames] == [5, 6, 7, 8, 9, 10]


def test_delta_frames_without_their_keyframe_are_never_decoded() -> None:
    p = _Pending(10_000)
    p.add(frame(1))
    assert p.next_job(None) is None
    p.add(frame(2, key=True))
    p.add(frame(3))
    assert p.next_job(None) is not None
    p.add(frame(4, disc=True))  # the relay dropped frames before this one
    p.add(frame(5))
    assert p.next_job(None) is None
    p.add(frame(6, key=True, disc=True))
    job = p.next_job(None)
    assert job is not None and job.restart and [f.pts // 40_000 for f in job.frames] == [6]


def test_the_decoder_continues_where_it_stopped() -> None:
    p = _Pending(10_000)
    p.add(frame(0, key=True))
    assert p.next_job(None) is not None
    p.add(frame(1))
    job = p.next_job(None)
    assert job is not None and not job.restart and len(job.frames) == 1
    p.decoder_failed()
    p.add(frame(2))
    assert p.next_job(None) is None
    p.add(frame(3, key=True))
    job = p.next_job(None)
    assert job is not None and job.restart


def test_pending_bytes_are_bounded() -> None:
    p = _Pending(100)
    p.add(frame(0, key=True, size=60))
    p.add(frame(1, size=60))  # 120 > 100: give up until the next keyframe
    p.add(frame(2, size=10))
    assert p.next_job(None) is None and p.skipped == 3


def test_a_new_init_restarts_the_decoder() -> None:
    p = _Pending(10_000)
    p.add(frame(0, key=True))
    assert p.next_job(None) is not None
    p.add(frame(1, key=True, init=Init("lobby", "avc1.64001f", 1280, 720)))
    job = p.next_job(None)
    assert job is not None and job.restart


# --- decoding helpers ------------------------------------------------------------------------


def test_sizes_keep_the_aspect_ratio_and_stay_even() -> None:
    assert fit(1920, 1080, 640, None) == (640, 360)
    assert fit(1920, 1080, None, 101) == (180, 100)
    assert fit(640, 360, 99, 99) == (98, 98)
    assert fit(640, 360, None, None) == (640, 360)


def test_packed_bytes_drop_the_row_padding() -> None:
    picture = av.VideoFrame(33, 7, "rgb24")  # rows padded to a multiple of 32 bytes
    assert picture.planes[0].line_size > 33 * 3
    assert len(packed_bytes(picture)) == 33 * 7 * 3
    yuv = picture.reformat(format="yuv420p")
    assert len(packed_bytes(yuv)) == 33 * 7 + 2 * 17 * 4


def test_codec_names() -> None:
    assert decoder_name("avc1.42c01e") == "h264"
    assert decoder_name("hvc1.1.6.L93.B0") == "hevc"
    with pytest.raises(ValueError, match="no decoder for codec 'vp09"):
        decoder_name("vp09.00.10.08")


def test_module_exports_exist() -> None:
    for name in client.__all__:
        assert hasattr(client, name), name
