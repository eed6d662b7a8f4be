"""Pictures are never cut short: not by the idle flush while the source
thread is starved, nor (more than once) by a learned slice layout that doesn't hold.

The loop's idle timer measures quiet since the source thread's last push, not
since the camera's last packet. A thread starved of CPU (or of the GIL) leaves
the rest of a picture unread in the socket while the timer runs out; what the
timer flushes then is a picture cut short. These tests play a stream as
FFmpeg hands it over with its parser off (one NAL unit, or one FU-A/FU
fragment, per packet) and let the timer fire wherever a starved thread would
let it: between any two packets, up to ``STARVED_US`` after the last push.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrelay.fragments import _UNKNOWN_FRAGMENT_GUESS
from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.ingest import HOLD_MAX_US, HOLD_MIN_US, Ingest, IngestResult, StreamInfo
from tests.unit.test_assembler_properties import CODECS, H264, H265, Codec, access_units

# A thread that lost the CPU for this long between two reads: well past the
# old few-millisecond idle flush, short of the shortest hold.
STARVED_US = 15_000
# Between two fragments of a NAL unit it may be starved for longer.
STARVED_FRAGMENT_US = 200_000
assert STARVED_US < HOLD_MIN_US
# A payloader's fragment size (FU payload bytes): the test camera's at MTU 500.
# (Below _UNKNOWN_FRAGMENT_GUESS the joiner can't tell a first fragment from a
# whole NAL unit before it has seen one: no camera's MTU is that small.)
FRAGMENT = 450


def packets_of(codec: Codec, nals: list[bytes], fragment: int) -> list[bytes]:
    """What FFmpeg hands over with its parser off: one packet per NAL unit; one
    too big for ``fragment`` bytes is split the way a payloader does (FU-A/FU:
    full fragments but the last), the first with a start code and the NAL unit
    header, the rest bare bytes."""
    out = []
    head = codec.header_size
    for nal in nals:
        header, body = nal[:head], nal[head:]
        if len(body) <= fragment:
            out.append(to_annexb([nal]))
            continue
        out.append(to_annexb([header + body[:fragment]]))
        out += [body[i:i + fragment] for i in range(fragment, len(body), fragment)]
    return out


def info(codec: Codec) -> StreamInfo:
    return StreamInfo(b"", "tcp", whole_units=False, codec=codec.name)


def reference(codec: Codec, aus: list[tuple[int, list[bytes]]]) -> list[bytes]:
    """The pictures when each comes whole in one packet and nothing is flushed early."""
    ingest = Ingest(StreamInfo(b"", None, whole_units=True, codec=codec.name),
                    from_keyframe=False)
    results = [ingest.push(to_annexb(nals), pts, pts) for pts, nals in aus]
    results.append(ingest.flush())
    return [f.data for r in results for f in r.frames]


def play_starved(codec: Codec, aus: list[tuple[int, list[bytes]]], fragment: int,
                 gaps: list[int], pauses: list[int] | None = None
                 ) -> tuple[Ingest, list[tuple[int, int, IngestResult]]]:
    """Play the pictures packet by packet. Between two packets of a picture
    the thread is starved for ``gaps[i]`` µs and the idle timer fires at the
    end of it (as late as it can, the worst case); after a picture's last
    packet the camera is quiet for ``pauses[i]`` µs more (beyond the next
    picture's timestamp), and the timer fires then. Returns each result
    with (picture, packet) indexes."""
    ingest = Ingest(info(codec), from_keyframe=False)
    results: list[tuple[int, int, IngestResult]] = []
    now = 0
    step = 0
    for number, (pts, nals) in enumerate(aus):
        now = max(now, pts)
        packets = packets_of(codec, nals, fragment)
        for index, packet in enumerate(packets):
            results.append((number, index, ingest.push(packet, pts, now)))
            last = index == len(packets) - 1
            if last and pauses is not None:
                now += pauses[number % len(pauses)]
            else:
                now += gaps[step % len(gaps)]
                step += 1
            results.append((number, index, ingest.flush(now)))
    results.append((len(aus), 0, ingest.flush()))
    return ingest, results


def frames(results: list[tuple[int, int, IngestResult]]) -> list[bytes]:
    return [f.data for _, _, r in results for f in r.frames]


@CODECS
def test_a_starved_thread_never_gets_a_picture_cut(codec: Codec) -> None:
    """Every packet read late: the slices of the first pictures (layout not yet
    known) and every fragmented NAL unit wait for their rest."""
    aus = access_units(codec, codec.streams[1])[:12]  # four slices a picture
    _, results = play_starved(codec, aus, fragment=FRAGMENT, gaps=[STARVED_US])
    assert frames(results) == reference(codec, aus)
    assert not any(r.drops for _, _, r in results)


def test_a_fragment_cut_by_the_timer_is_not_sent() -> None:
    """The case found under load: the timer fires between two fragments of a
    slice, the rest of which the thread, starved for a good while (longer
    than a frame interval), reads after."""
    aus = access_units(H265, "h265_slices4")[:6]
    nals = aus[5][1]
    ingest = Ingest(info(H265), from_keyframe=False)
    out = []
    for pts, picture in aus[:5]:
        for packet in packets_of(H265, picture, FRAGMENT):
            out += ingest.push(packet, pts, pts).frames
    # The layout is known: each picture left with its last fragment.
    assert [f.data for f in out] == reference(H265, aus[:5])
    packets = packets_of(H265, nals, FRAGMENT)
    pts = aus[5][0]
    cut = next(i for i, p in enumerate(packets) if not p.startswith(b"\x00\x00"))
    for packet in packets[:cut]:
        out += ingest.push(packet, pts, pts).frames
    deadline = ingest.deadline_us
    assert deadline is not None  # a full-size fragment: it may go on
    assert not ingest.flush(pts + STARVED_FRAGMENT_US).frames
    for packet in packets[cut:]:
        out += ingest.push(packet, pts, pts + STARVED_FRAGMENT_US).frames
    out += ingest.flush().frames
    assert [f.data for f in out] == reference(H265, aus)


@CODECS
def test_a_picture_known_whole_goes_out_at_once(codec: Codec) -> None:
    """No frame of delay once the layout is known: a picture whose last
    fragment is short leaves with the packet that brought it."""
    aus = access_units(codec, codec.streams[1])[:12]
    _, results = play_starved(codec, aus, fragment=FRAGMENT, gaps=[0])
    last = {number: index for number, index, _ in results}
    out_with = {f.pts_us: (number, index) for number, index, r in results for f in r.frames}
    for number, (pts, nals) in enumerate(aus[2:], start=2):
        if len(packets_of(codec, nals, FRAGMENT)[-1]) != FRAGMENT:
            assert out_with[pts] == (number, last[number]), f"picture {number} waited"


@CODECS
def test_the_hold_is_bounded(codec: Codec) -> None:
    """A picture ingest can't tell is whole waits for the next packet, or about
    one frame interval (learned from the timestamps), whichever comes first."""
    aus = access_units(codec, codec.streams[1])[:8]
    ingest = Ingest(info(codec), from_keyframe=False)
    # The first picture: four slices may not be all of it; the frame interval
    # is not known yet either.
    pts, nals = aus[0]
    for packet in packets_of(codec, nals, 100_000):
        result = ingest.push(packet, pts, pts)
    assert result.deadline_us is not None
    assert HOLD_MIN_US <= result.deadline_us - pts <= HOLD_MAX_US
    assert not ingest.flush(result.deadline_us - 1).frames
    assert [f.data for f in ingest.flush(result.deadline_us).frames] == reference(codec, aus[:1])
    for pts, nals in aus[1:6]:
        for packet in packets_of(codec, nals, FRAGMENT):
            ingest.push(packet, pts, pts)
    interval = aus[1][0] - aus[0][0]
    assert ingest.hold_us == max(interval, HOLD_MIN_US)
    # A fragment that may go on waits longer for the rest: only a starved
    # thread keeps two fragments of a NAL unit apart.
    pts, nals = aus[6]
    packets = packets_of(codec, nals, FRAGMENT)
    cut = next(i for i, p in enumerate(packets) if not p.startswith(b"\x00\x00"))
    for packet in packets[:cut]:
        result = ingest.push(packet, pts, pts + 7)
    assert result.deadline_us == pts + 7 + HOLD_MAX_US


@CODECS
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.integers(0, 5), count=st.integers(1, 14),
       fragment=st.integers(_UNKNOWN_FRAGMENT_GUESS, 3000),
       gaps=st.lists(st.integers(0, STARVED_US), min_size=1, max_size=8),
       pauses=st.lists(st.integers(0, 2 * HOLD_MAX_US), min_size=1, max_size=4))
def test_any_split_and_any_flush_times_give_the_same_pictures(
        codec: Codec, stream: int, count: int, fragment: int, gaps: list[int],
        pauses: list[int]) -> None:
    """The same stream cut into packets at any fragment size, the thread
    starved for up to STARVED_US between any two packets of a picture, the
    camera quiet for any time between pictures, the timer firing at the end
    of every gap: the pictures are the camera's, whole and in order."""
    aus = access_units(codec, codec.streams[stream % len(codec.streams)])[:count]
    _, results = play_starved(codec, aus, fragment, gaps, pauses)
    assert frames(results) == reference(codec, aus)


def test_streams_used_have_several_slices() -> None:
    for codec in (H264, H265):
        nals = access_units(codec, codec.streams[1])[0][1]
        assert sum(codec.is_slice(n) for n in nals) == 4
        assert split_annexb(to_annexb(nals)) == nals


# --- a layout that doesn't hold ---------------------------------------------------------------


@CODECS
def test_a_camera_slicing_by_size_gets_one_picture_cut_at_most(codec: Codec) -> None:
    """Small pictures in one slice, keyframes in four (an encoder with a
    maximum slice size): the layout (0,) learned from the small ones cuts the
    next keyframe after its first slice, which only its other slices show.
    After that no layout is trusted: every later keyframe goes out whole."""
    aus = access_units(codec, codec.streams[1])
    stream = []
    for pts, nals in aus + [(pts + 2 * aus[-1][0], nals) for pts, nals in aus]:  # played twice
        slices = [n for n in nals if codec.is_slice(n)]
        if codec.nal_type(slices[0]) not in codec.keyframes:
            nals = [n for n in nals if not codec.is_slice(n)] + slices[:1]
        stream.append((pts, nals))
    keyframes = [i for i, (_, nals) in enumerate(stream) if len(nals) > 4]
    assert len(keyframes) >= 4
    _, results = play_starved(codec, stream, fragment=100_000, gaps=[0])
    out = [f for _, _, r in results for f in r.frames]
    whole = [to_annexb(nals) for _, nals in stream]  # its keyframes carry their parameter sets
    cut = [f.pts_us for f in out if f.data not in whole]
    assert len(cut) <= 1  # the first keyframe after the layout was learned
    later = [stream[i][0] for i in keyframes if stream[i][0] > (cut or [0])[0]]
    assert later and all(any(f.pts_us == pts and f.data in whole for f in out) for pts in later)
