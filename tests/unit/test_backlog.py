from cxrelay.backlog import Backlog
from cxrelay.protocol import FLAG_DISCONTINUITY, FLAG_KEYFRAME, encode_frame


def frame(n: int, key: bool = False, size: int = 100) -> bytes:
    return encode_frame(FLAG_KEYFRAME if key else 0, n, n, bytes(size))


def drain(b: Backlog) -> list[bytes | str]:
    out = []
    while (item := b.pop()) is not None:
        out.append(item)
    return out


def test_frames_and_text_come_out_in_order() -> None:
    b = Backlog(max_delay_us=1_000_000, max_bytes=10_000)
    b.put_text("init", 0)
    b.put_frame(frame(1, key=True), keyframe=True, now_us=0)
    b.put_frame(frame(2), keyframe=False, now_us=40_000)
    assert drain(b) == ["init", frame(1, key=True), frame(2)]
    assert b.frame_bytes == 0 and len(b) == 0


def test_age_bound_drops_everything_and_resumes_at_keyframe_flagged() -> None:
    b = Backlog(max_delay_us=1_000_000, max_bytes=10**9)
    b.put_frame(frame(0, key=True), keyframe=True, now_us=0)
    for i in range(1, 25):
        assert b.put_frame(frame(i), keyframe=False, now_us=i * 40_000) == 0
    b.put_text("status", 990_000)
    # Past one second of backlog: the queued frames go, and so does this delta.
    assert b.put_frame(frame(26), keyframe=False, now_us=1_040_000) == 26
    assert b.put_frame(frame(27), keyframe=False, now_us=1_080_000) == 1
    b.put_frame(frame(28, key=True), keyframe=True, now_us=1_120_000)
    out = drain(b)
    assert out[0] == "status"  # control messages survive
    assert len(out) == 2
    resumed = out[1]
    assert isinstance(resumed, bytes)
    assert resumed[0] == FLAG_KEYFRAME | FLAG_DISCONTINUITY
    assert resumed[1:] == frame(28, key=True)[1:]
    assert b.dropped == 27 and b.overflows == 1


def test_byte_bound() -> None:
    b = Backlog(max_delay_us=10**9, max_bytes=1000)
    b.put_frame(frame(0, key=True, size=400), keyframe=True, now_us=0)
    b.put_frame(frame(1, size=400), keyframe=False, now_us=1)
    assert b.put_frame(frame(2, size=400), keyframe=False, now_us=2) == 3
    assert b.frame_bytes == 0
    assert b.put_frame(frame(3, key=True, size=400), keyframe=True, now_us=3) == 0
    assert b.frame_bytes == len(frame(3, key=True, size=400))


def test_memory_stays_bounded_for_a_viewer_that_never_reads() -> None:
    b = Backlog(max_delay_us=1_000_000, max_bytes=50_000)
    for i in range(10_000):
        b.put_frame(frame(i, key=i % 50 == 0, size=1000), keyframe=i % 50 == 0,
                    now_us=i * 40_000)
        assert b.frame_bytes <= 50_000 + 1017
    assert b.overflows > 0


def test_overflow_with_a_keyframe_in_hand_keeps_it() -> None:
    b = Backlog(max_delay_us=100, max_bytes=10**9)
    b.put_frame(frame(0, key=True), keyframe=True, now_us=0)
    b.put_frame(frame(1), keyframe=False, now_us=50)
    assert b.put_frame(frame(2, key=True), keyframe=True, now_us=500) == 2
    out = drain(b)
    assert len(out) == 1 and out[0][0] == FLAG_KEYFRAME | FLAG_DISCONTINUITY


def test_wait_for_keyframe() -> None:
    b = Backlog()
    b.wait_for_keyframe()
    assert b.put_frame(frame(1), keyframe=False, now_us=0) == 1
    b.put_frame(frame(2, key=True), keyframe=True, now_us=0)
    assert drain(b)[0][0] & FLAG_DISCONTINUITY
