"""cxrelay.ingest: packets of one stream in, whole pictures, inits, drops and
the idle deadline out. Fed recorded H.264 (tests/data) and a fake codec."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest

from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.ingest import HOLD_MAX_US, Ingest, IngestResult, StreamInfo, StreamParams
from tests.recordings import DATA, Packet, recording

WHOLE = StreamInfo(b"", None, whole_units=True)
NALS = StreamInfo(b"", "tcp", whole_units=False)
SMALL = StreamParams("avc1.42c01e", 640, 360)
BIG = StreamParams("avc1.64001f", 1280, 720)


def units(name: str) -> list[Packet]:
    """The recording's access units, with the 4-byte start codes the assembler writes."""
    return [Packet(p.pts, to_annexb(split_annexb(p.data)), p.keyframe)
            for p in recording(name).packets]


def push_units(ingest: Ingest, aus: Sequence[Packet], start_us: int = 0) -> list[IngestResult]:
    return [ingest.push(au.data, au.pts + start_us, au.pts + start_us) for au in aus]


def frames_of(results: Sequence[IngestResult]) -> list[bytes]:
    return [f.data for r in results for f in r.frames]


def test_whole_units_come_out_whole_after_one_init() -> None:
    aus = units("baseline")
    ingest = Ingest(WHOLE)
    results = [*push_units(ingest, aus), ingest.flush()]
    assert frames_of(results) == [au.data for au in aus]
    inits = [(i, r.inits) for i, r in enumerate(results) if r.inits]
    # A whole unit is out when the next one starts: the keyframe with the second push.
    assert inits == [(1, {0: SMALL})]
    assert ingest.params == SMALL
    assert not any(r.drops for r in results)


def test_nothing_before_the_first_keyframe() -> None:
    aus = units("baseline")  # keyframes at 0, 25, 50
    ingest = Ingest(WHOLE)
    results = [*push_units(ingest, aus[10:]), ingest.flush()]
    frames = [f for r in results for f in r.frames]
    assert frames[0].keyframe and frames[0].pts_us == aus[25].pts
    assert len(frames) == len(aus) - 25


def test_new_parameters_are_announced_before_their_keyframe() -> None:
    small, big = units("baseline"), units("bframes")
    ingest = Ingest(WHOLE)
    # All of it in one push: two streams, their init at the index of each one's first keyframe.
    result = ingest.push(b"".join(au.data for au in small[:3] + big), 0, 0)
    result.frames += ingest.flush().frames
    assert result.inits == {0: SMALL, 3: BIG}
    assert [f.keyframe for f in result.frames][:4] == [True, False, False, True]
    # The same parameters again (a reconnect, a repeated SPS) are no news.
    again = ingest.push(big[0].data, 0, 0)
    assert not again.inits and not ingest.flush().inits


def test_drops_are_reported_once_each_by_reason() -> None:
    aus = units("slices4")
    ingest = Ingest(NALS)
    results = push_units(ingest, aus[:5])
    nals = split_annexb(aus[5].data)
    lost = to_annexb(nals[:-2] + nals[-1:])  # a slice lost on the way
    results.append(ingest.push(lost, aus[5].pts, aus[5].pts))
    # Garbage (forbidden_zero_bit set) spoils the picture it lands in.
    results.append(ingest.push(b"\x00\x00\x01\xff garbage", aus[6].pts, aus[6].pts))
    results += push_units(ingest, aus[6:])
    results.append(ingest.flush())
    drops = [r.drops for r in results if r.drops]
    assert drops == [{"partial": 1, "corrupt": 1}]  # reported once, when they are known
    frames = [f for r in results for f in r.frames]
    assert [f.pts_us for f in frames] == [au.pts for au in aus[:5] + aus[7:]]
    assert [f.discontinuity for f in frames].index(True) == 5


def test_idle_deadline_while_the_slice_layout_is_unknown() -> None:
    aus = units("slices4")
    ingest = Ingest(NALS)
    first = aus[0]
    nals = split_annexb(first.data)
    results = [ingest.push(to_annexb([nal]), first.pts, 1_000 + i) for i, nal in enumerate(nals)]
    last = results[-1]
    # Four slices in, but four could be fewer than the picture has: wait for
    # the next packet, or at most a while.
    assert last.deadline_us == 1_000 + len(nals) - 1 + ingest.hold_us
    assert ingest.hold_us <= HOLD_MAX_US
    assert not last.frames
    early = ingest.flush(last.deadline_us - 1)
    assert not early.frames and ingest.deadline_us == last.deadline_us
    due = ingest.flush(last.deadline_us)
    assert [f.data for f in due.frames] == [first.data] and due.deadline_us is None
    assert ingest.flush(last.deadline_us + 10 * HOLD_MAX_US).frames == []


def test_no_deadline_once_the_slice_layout_is_known() -> None:
    aus = units("slices4")
    ingest = Ingest(NALS)
    out: list[bytes] = []
    deadlines = []
    for number, au in enumerate(aus[:10]):
        for nal in split_annexb(au.data):
            result = ingest.push(to_annexb([nal]), au.pts, au.pts)
            out += [f.data for f in result.frames]
            deadlines.append((number, result.deadline_us))
        out += [f.data for f in ingest.flush(au.pts + ingest.hold_us).frames]
    assert out == [au.data for au in aus[:10]]
    # Two pictures teach the layout; from then on each leaves with its last slice.
    assert [n for n, d in deadlines if d is not None and n >= 2] == []


def test_fu_a_fragments_are_rejoined() -> None:
    aus = units("slices4")[:4]
    ingest = Ingest(NALS)
    out: list[bytes] = []
    for au in aus:
        for nal in split_annexb(au.data):
            body = nal[1:]
            packets = [b"\x00\x00\x00\x01" + nal[:1] + body[:1386]]
            packets += [body[i:i + 1386] for i in range(1386, len(body), 1386)]
            for packet in packets:
                out += [f.data for f in ingest.push(packet, au.pts, au.pts).frames]
        out += [f.data for f in ingest.flush(au.pts + ingest.hold_us).frames]
    assert out == [au.data for au in aus]


# --- the seam for other codecs ----------------------------------------------------------------


@dataclass(frozen=True)
class FakeUnit:
    data: bytes
    pts_us: int
    ingest_us: int
    keyframe: bool
    discontinuity: bool
    params: StreamParams | None


class FakeAssembler:
    """One unit per push; b"K" starts a keyframe, b"X" is dropped as corrupt."""

    def __init__(self) -> None:
        self.dropped = 0
        self.pending = False
        self.slice_count_known = True

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> list[FakeUnit]:
        if data.startswith(b"X"):
            self.dropped += 1
            return []
        params = StreamParams("hvc1.1.6.L93.B0", 640, 360) if data.startswith(b"K") else None
        return [FakeUnit(data, pts_us, ingest_us, params is not None, False, params)]

    def flush(self) -> list[FakeUnit]:
        return []

    def reset(self) -> None:
        pass

    @property
    def drops(self) -> dict[str, int]:
        return {"corrupt": self.dropped}


def test_any_assembler_behind_the_protocol() -> None:
    ingest = Ingest(StreamInfo(b"", None, whole_units=True, codec="fake"),
                    assembler=FakeAssembler())
    results = [ingest.push(data, i, i) for i, data in enumerate([b"P", b"K", b"X", b"P"])]
    assert [[f.data for f in r.frames] for r in results] == [[], [b"K"], [], [b"P"]]
    assert results[1].inits == {0: StreamParams("hvc1.1.6.L93.B0", 640, 360)}
    assert [r.drops for r in results] == [{}, {}, {"corrupt": 1}, {}]


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="no assembler for codec 'vp8'"):
        Ingest(StreamInfo(b"", None, whole_units=True, codec="vp8"))


def sliced_by_size(pictures: int = 12) -> list[tuple[int, bytes]]:
    """(pts µs, access unit) of a stream whose encoder cuts slices by size
    (x264's slice-max-size): the number and place of slices change from
    picture to picture, so no layout is ever learned."""
    import av

    encoder = av.VideoCodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "50",
                       "x264-params": "slice-max-size=400:sliced-threads=0:scenecut=0"}
    pattern = av.open("testsrc2=size=320x240:rate=25,noise=alls=20:allf=t+u", format="lavfi")
    out: list[tuple[int, bytes]] = []
    try:
        for index, frame in enumerate(pattern.decode(video=0)):
            if index == pictures:
                break
            frame.pts = index
            out += [(p.pts * 40_000, bytes(p)) for p in encoder.encode(frame)]
        out += [(p.pts * 40_000, bytes(p)) for p in encoder.encode(None)]
    finally:
        pattern.close()
    return out


def test_whole_pictures_leave_with_their_packet_whatever_their_slices() -> None:
    # A file camera (MP4/MKV) hands over one picture a packet. Sliced by size,
    # its pictures have no layout to learn: each must still leave with its own
    # packet, with no idle-flush deadline (a loop timer a picture) and no frame
    # of delay waiting for the next picture.
    aus = sliced_by_size()
    assert len({len(split_annexb(au)) for _, au in aus}) > 2  # the slices vary
    assert len(aus) == 12
    ingest = Ingest(StreamInfo(b"", None, whole_units=True, whole_pictures=True))
    for pts, au in aus:
        result = ingest.push(au, pts, pts)
        assert [f.pts_us for f in result.frames] == [pts]
        slices = [nal for nal in split_annexb(au) if nal[0] & 0x1F in (1, 5)]
        assert result.frames[0].slices == len(slices)
        assert result.deadline_us is None
    assert not ingest.flush().frames


def test_whole_pictures_only_for_packets_stored_one_picture_each() -> None:
    import av

    from cxrelay.sources.pyav import whole_pictures

    with av.open(str(DATA / "extradata_only.mkv")) as mkv:
        assert whole_pictures(mkv.streams.video[0])
    with av.open(str(DATA / "baseline.h264")) as raw:  # through FFmpeg's parser
        assert not whole_pictures(raw.streams.video[0])
