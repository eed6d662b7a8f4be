from cxrelay.backlog import Backlog
from cxrelay.protocol import FLAG_KEYFRAME, encode_frame


def frame(n: int, key: bool = False, size: int = 100) -> bytes:
    return encode_frame(FLAG_KEYFRAME if key else 0, n, n, bytes(size))


def put(b: Backlog[bytes | str], message: bytes, now_us: int, buffered: int = 0) -> int:
    return b.put_frame(message, len(message), keyframe=bool(message[0] & FLAG_KEYFRAME),
                       now_us=now_us, buffered=buffered)


def drain(b: Backlog[bytes | str]) -> list[tuple[bytes | str, bool]]:
    """(item, discontinuity) as they come out."""
    out = []
    while (entry := b.pop()) is not None:
        out.append((entry.item, entry.discontinuity))
    return out


def test_frames_and_text_come_out_in_order() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=1_000_000, max_bytes=10_000)
    b.put_text("init", 0)
    put(b, frame(1, key=True), 0)
    put(b, frame(2), 40_000)
    assert drain(b) == [("init", False), (frame(1, key=True), False), (frame(2), False)]
    assert b.frame_bytes == 0 and len(b) == 0


def test_age_bound_drops_everything_and_resumes_at_keyframe_flagged() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=1_000_000, max_bytes=10**9)
    put(b, frame(0, key=True), 0)
    for i in range(1, 25):
        assert put(b, frame(i), i * 40_000) == 0
    b.put_text("status", 990_000)
    # Past one second of backlog: the queued frames go, and so does this delta.
    assert put(b, frame(26), 1_040_000) == 26
    assert put(b, frame(27), 1_080_000) == 1
    assert b.waiting_for_keyframe
    put(b, frame(28, key=True), 1_120_000)
    assert drain(b) == [("status", False),  # control messages survive
                        (frame(28, key=True), True)]
    assert b.dropped == 27 and b.overflows == 1


def test_byte_bound() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=10**9, max_bytes=1000)
    put(b, frame(0, key=True, size=400), 0)
    put(b, frame(1, size=400), 1)
    assert put(b, frame(2, size=400), 2) == 3
    assert b.frame_bytes == 0
    assert put(b, frame(3, key=True, size=400), 3) == 0
    assert b.frame_bytes == len(frame(3, key=True, size=400))


def test_byte_bound_counts_what_waits_in_the_socket() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=10**9, max_bytes=1000)
    put(b, frame(0, key=True, size=100), 0, buffered=600)
    assert put(b, frame(1, size=100), 1, buffered=600) == 0  # 117 + 117 + 600 fit
    assert put(b, frame(2, size=100), 2, buffered=800) == 3  # 234 + 117 + 800 do not


def test_memory_stays_bounded_for_a_viewer_that_never_reads() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=1_000_000, max_bytes=50_000)
    for i in range(10_000):
        put(b, frame(i, key=i % 50 == 0, size=1000), i * 40_000)
        assert b.frame_bytes <= 50_000 + 1017
    assert b.overflows > 0


def test_overflow_with_a_keyframe_in_hand_keeps_it() -> None:
    b: Backlog[bytes | str] = Backlog(max_delay_us=100, max_bytes=10**9)
    put(b, frame(0, key=True), 0)
    put(b, frame(1), 50)
    assert put(b, frame(2, key=True), 500) == 2
    assert drain(b) == [(frame(2, key=True), True)]


def test_wait_for_keyframe() -> None:
    b: Backlog[bytes | str] = Backlog()
    b.wait_for_keyframe()
    assert put(b, frame(1), 0) == 1
    put(b, frame(2, key=True), 0)
    assert drain(b)[0] == (frame(2, key=True), True)


def test_starting_over_forgets_frames_but_not_control_messages() -> None:
    b: Backlog[bytes | str] = Backlog()
    put(b, frame(0, key=True), 0)
    b.put_text("status", 1)
    put(b, frame(1), 2)
    b.clear_frames()
    assert drain(b) == [("status", False)] and b.dropped == 0 and b.frame_bytes == 0
