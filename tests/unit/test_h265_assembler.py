"""cxrelay.h265's assembler on real bitstreams (recorded by
tests/data/make_h265_bitstreams.py).

The truth for "one whole picture per unit" is the encoder's own packets
(checked against FFmpeg's hevc parser when recorded) and, for the RTSP
capture, FFmpeg's hevc parser itself: the assembler must rebuild exactly those
units from NAL units fed one at a time, in aggregation-packet-like groups, or
as whole units, and the ingest must do it from the raw RTP payloads (FU
fragments included).
"""

from __future__ import annotations

from collections.abc import Sequence

import av
import pytest

from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.h265 import (
    IRAP,
    NAL_AUD,
    NAL_CRA,
    NAL_EOS,
    NAL_PPS,
    NAL_PREFIX_SEI,
    NAL_SPS,
    NAL_VPS,
    AccessUnit,
    AccessUnitAssembler,
    layer_id,
    nal_type,
    parse_extradata,
    parse_sps,
)
from cxrelay.ingest import Ingest, StreamInfo, StreamParams
from tests.data.make_h265_bitstreams import parser_units
from tests.recordings import DATA, recording
from tests.unit import test_h264
from tests.unit.test_h264 import Fed, feed, local_joiner, stap_a, whole
from tests.unit.test_h265_syntax import Bits

ENCODES = ["h265_main", "h265_slices4", "h265_bframes", "h265_sei_aud", "h265_slice_change",
           "h265_variant_main10", "h265_variant_444", "h265_variant_422",
           "h265_variant_scaling"]
PARAMETER_SETS = (NAL_VPS, NAL_SPS, NAL_PPS)
# Units the assembler needs the idle timer for before it knows the slice
# layout: the first (nothing learned) and the second (one layout seen).
LEARNING = 2


class Au(test_h264.Au):
    """One true access unit."""

    @property
    def last_vcl(self) -> int:
        return max(i for i, nal in enumerate(self.nals) if nal_type(nal) < 32)


def truth(name: str) -> list[Au]:
    return [Au(pts, split_annexb(data), key)
            for pts, data, key in recording(name, suffix=".h265").packets]


def assert_units_match(units: Sequence[AccessUnit], aus: Sequence[Au]) -> None:
    assert [u.pts_us for u in units] == [au.pts for au in aus]
    assert [u.keyframe for u in units] == [au.keyframe for au in aus]
    for unit, au in zip(units, aus, strict=True):
        assert unit.data == au.data
        assert unit.slices == sum(nal_type(nal) < 32 and not layer_id(nal) for nal in au.nals)


def fed(aus: Sequence[Au], *args: object, extradata: bytes = b"", **kw: object
        ) -> tuple[AccessUnitAssembler, Fed]:
    asm = AccessUnitAssembler(extradata)
    return asm, feed(asm, aus, *args, **kw)  # type: ignore[arg-type]


# --- the recordings, fed as a camera would --------------------------------------------------------


@pytest.mark.parametrize("name", ENCODES)
def test_nal_by_nal_gives_the_true_units(name: str) -> None:
    aus = truth(name)
    asm, out = fed(aus)
    assert_units_match(out.units, aus)
    assert not any(u.discontinuity for u in out.units)
    assert asm.drops == {"partial": 0, "corrupt": 0, "internal_error": 0}
    assert asm.units == len(aus)
    meta = recording(name, suffix=".h265").meta
    assert {u.params for u in out.units} == {
        StreamParams(meta["codec"], meta["width"], meta["height"])}
    if name == "h265_slice_change":
        return  # see test_camera_changes_slice_count
    # Once the layout is known, every unit comes out of the push that
    # delivered its last slice; the idle timer is never needed again.
    assert out.flushes == list(range(LEARNING))
    for index, (where, au) in enumerate(zip(out.where, aus, strict=True)):
        if index >= LEARNING:
            assert where == (index, au.last_vcl)
            assert out.units[index].ingest_us == index * 1000 + au.last_vcl


@pytest.mark.parametrize("name", ["h265_slices4", "h265_sei_aud", "h265_bframes",
                                  "h265_slice_change"])
@pytest.mark.parametrize("seed", [1, 2])
def test_aggregated_groups_give_the_true_units(name: str, seed: int) -> None:
    aus = truth(name)
    _, out = fed(aus, stap_a(seed))  # RTP aggregation packets (AP) look the same
    assert_units_match(out.units, aus)
    if name != "h265_slice_change":
        assert out.flushes == list(range(LEARNING))


@pytest.mark.parametrize("name", ENCODES)
def test_whole_units_give_the_true_units(name: str) -> None:
    aus = truth(name)
    _, out = fed(aus, whole, whole_units=True)
    assert_units_match(out.units, aus)
    if name != "h265_slice_change":
        # Once the layout is known the unit is out before the caller's flush().
        assert all(where[1] >= 0 for where in out.where[LEARNING:])


@pytest.mark.parametrize("name", ["h265_slices4", "h265_sei_aud", "h265_bframes"])
def test_one_push_with_one_pts_splits_on_first_slice_segments(name: str) -> None:
    """No timestamps to go by (the whole file in one push): the first slice
    segment flags (and AUDs, parameter sets, SEI) alone find the boundaries."""
    aus = truth(name)
    asm = AccessUnitAssembler()
    units = asm.push(b"".join(au.data for au in aus), 7, 1) + asm.flush()
    assert [u.data for u in units] == [au.data for au in aus]
    assert {u.pts_us for u in units} == {7}


def test_prefix_sei_starts_the_next_unit() -> None:
    """Without AUDs and timestamps, the picture timing SEI in front of each
    picture is where the unit before it ends."""
    aus = strip(truth("h265_sei_aud"), (NAL_AUD,))
    asm = AccessUnitAssembler()
    units = asm.push(b"".join(au.data for au in aus), 7, 1) + asm.flush()
    assert [u.data for u in units] == [au.data for au in aus]
    assert all(nal_type(split_annexb(u.data)[0]) in (NAL_VPS, NAL_PREFIX_SEI) for u in units)


def test_open_gops_cra_keyframes_and_b_frames() -> None:
    aus = truth("h265_bframes")
    units = fed(aus)[1].units
    pts = [u.pts_us for u in units]
    assert pts == [au.pts for au in aus] and pts != sorted(pts)  # decode order
    kinds = [{nal_type(n) for n in split_annexb(u.data)} for u in units if u.keyframe]
    assert len(kinds) == 2 and NAL_CRA in kinds[1]  # an open-GOP CRA is a keyframe
    assert all(set(PARAMETER_SETS) <= k for k in kinds)
    # The RASL pictures after it (they need pictures before the CRA) go out as they are.
    assert any(8 in {nal_type(n) for n in split_annexb(u.data)} for u in units)


def test_aud_and_sei_go_out_unchanged() -> None:
    aus = truth("h265_sei_aud")
    units = fed(aus)[1].units
    for unit in units:
        kinds = [nal_type(n) for n in split_annexb(unit.data)]
        assert kinds[0] == NAL_AUD and NAL_PREFIX_SEI in kinds
    assert sum(u.keyframe for u in units) == 3


def test_camera_changes_slice_count() -> None:
    """4 slices, then 2 (a subset of the 4-slice layout: could be loss), then
    3. Nothing is lost: the first 2-slice IDR waits one unit for proof."""
    aus = truth("h265_slice_change")
    asm, out = fed(aus)
    assert_units_match(out.units, aus)
    assert asm.dropped_partial == 0 and not any(u.discontinuity for u in out.units)
    assert out.flushes == [0, 1, 20, 21, 40, 41]
    assert out.where[20] == out.where[21] == (21, -1)
    assert asm.layout is not None and len(asm.layout) == 3


# --- RTSP: raw payloads through the Ingest --------------------------------------------------------


def rtsp_truth() -> tuple[bytes, list[tuple[int, bytes]], list[Au]]:
    """(extradata, packets as PyAV gave them, the units FFmpeg's hevc parser finds)."""
    rec = recording("h265_rtsp_gst", suffix=".h265")
    joined = local_joiner(list(rec.packets))
    true_units = parser_units(b"".join(data for _, data in joined))
    starts, offset = {}, 0
    for pts, data in joined:
        starts[offset] = pts
        offset += len(data)
    aus, offset = [], 0
    for unit in true_units:
        nals = split_annexb(unit)
        aus.append(Au(starts[offset], nals, any(nal_type(n) in IRAP for n in nals)))
        offset += len(unit)
    assert len(aus) > 40 and sum(au.keyframe for au in aus) >= 2
    packets = [(pts, data) for pts, data, _ in rec.packets]
    return bytes.fromhex(rec.meta["extradata"]), packets, aus


def test_rtsp_capture_matches_ffmpeg_parser() -> None:
    """A real RTSP session (GStreamer x265enc, two slices, parameter sets in
    band and in the SDP, FU fragments) as PyAV delivers it with
    fflags=+noparse: the Ingest's frames are the ones FFmpeg's hevc parser
    finds, with the fragment joiner finding where each NAL unit ends."""
    extradata, packets, aus = rtsp_truth()
    ingest = Ingest(StreamInfo(extradata, "tcp", whole_units=False, codec="h265"),
                    from_keyframe=False)
    frames: list = []
    inits: list[StreamParams] = []
    for index, (pts, data) in enumerate(packets):
        results = [ingest.push(data, pts, index)]
        following = packets[index + 1][0] if index + 1 < len(packets) else None
        deadline = results[0].deadline_us
        if following != pts and deadline is not None:
            results.append(ingest.flush(deadline))  # the idle timer, between pictures
        for result in results:
            frames += result.frames
            inits += result.inits.values()
    frames += ingest.flush().frames
    # x265's periodic keyframes are CRA pictures, and rtph265pay repeats the
    # parameter sets before IDR pictures only: the SDP's go in front of those.
    params = parse_extradata(extradata)
    expected = [Au(au.pts, params + au.nals, True) if au.keyframe and nal_type(au.nals[0])
                not in PARAMETER_SETS else au for au in aus]
    assert expected != aus
    assert_units_match(frames, expected)
    assert inits == [StreamParams("hvc1.1.6.L63.90", 640, 360)]
    assert not any(f.discontinuity for f in frames)


# --- parameter sets: extradata only, injection ----------------------------------------------------


def mkv_stream() -> tuple[bytes, list[Au]]:
    """The hvcC record and access units (Annex B) of a stream whose parameter
    sets are in the container only."""
    aus = []
    with av.open(str(DATA / "h265_extradata_only.mkv")) as container:
        stream = container.streams.video[0]
        record = bytes(stream.codec_context.extradata)
        for packet in container.demux(stream):
            if packet.size:
                nals, data = [], bytes(packet)
                while data:
                    size = int.from_bytes(data[:4], "big")
                    nals.append(data[4:4 + size])
                    data = data[4 + size:]
                aus.append(Au(int(packet.pts * packet.time_base * 1_000_000), nals,
                              packet.is_keyframe))
    return record, aus


@pytest.mark.parametrize("form", ["hvcc", "annexb"])
def test_extradata_only_stream_gets_parameter_sets_injected(form: str) -> None:
    record, aus = mkv_stream()
    params = parse_extradata(record)
    extradata = record if form == "hvcc" else to_annexb(params)
    assert not any(nal_type(n) in PARAMETER_SETS for au in aus for n in au.nals)
    _, out = fed(aus, extradata=extradata)
    expected = [Au(au.pts, params + au.nals if au.keyframe else au.nals, au.keyframe)
                for au in aus]
    assert_units_match(out.units, expected)
    assert sum(au.keyframe for au in aus) == 2
    assert {u.params for u in out.units} == {StreamParams("hvc1.1.6.L63.90", 640, 360)}


def strip(aus: list[Au], kinds: tuple[int, ...]) -> list[Au]:
    return [Au(au.pts, [n for n in au.nals if nal_type(n) not in kinds], au.keyframe)
            for au in aus]


def params_of(au: Au) -> list[bytes]:
    return [n for n in au.nals if nal_type(n) in PARAMETER_SETS]


def test_injection_goes_after_a_leading_aud_in_order() -> None:
    aus = truth("h265_sei_aud")
    _, out = fed(strip(aus, PARAMETER_SETS), extradata=to_annexb(params_of(aus[0])))
    # Back where the encoder had them: AUD, VPS, SPS, PPS, SEI.
    assert_units_match(out.units, aus)


@pytest.mark.parametrize("kinds", [(NAL_PPS,), (NAL_VPS,), (NAL_SPS, NAL_PPS),
                                   (NAL_VPS, NAL_PPS)])
def test_injection_adds_only_what_is_missing(kinds: tuple[int, ...]) -> None:
    aus = truth("h265_sei_aud")
    _, out = fed(strip(aus, kinds), extradata=to_annexb(params_of(aus[0])))
    assert_units_match(out.units, aus)  # each after those it depends on


def test_irap_without_known_parameter_sets_is_dropped() -> None:
    aus = strip(truth("h265_main"), PARAMETER_SETS)
    asm, out = fed(aus)
    # Only the pictures between keyframes come out (the Ingest holds them back:
    # no decoder can use them), with no parameters to announce.
    assert [u.keyframe for u in out.units] == [False] * (len(aus) - 2)
    assert asm.dropped_no_parameter_sets == 2 and asm.drops["corrupt"] == 2
    assert all(u.params is None for u in out.units)


def test_irap_whose_vps_never_came_is_dropped() -> None:
    aus = truth("h265_main")
    vps = next(n for au in aus for n in au.nals if nal_type(n) == NAL_VPS)
    asm, out = fed(strip(aus, (NAL_VPS,)))
    assert not any(u.keyframe for u in out.units) and asm.dropped_no_parameter_sets == 2
    asm, out = fed(strip(aus, (NAL_VPS,)), extradata=to_annexb([vps]))
    assert sum(u.keyframe for u in out.units) == 2 and asm.dropped_no_parameter_sets == 0


def test_in_band_parameter_sets_replace_the_extradata() -> None:
    aus = truth("h265_main")
    stale = params_of(truth("h265_slice_change")[0])  # another size, same ids
    _asm, out = fed(aus, extradata=to_annexb(stale))
    assert_units_match(out.units, aus)
    assert {u.params for u in out.units} == {StreamParams("hvc1.1.6.L63.90", 640, 360)}


# --- damage: lost and broken NAL units ------------------------------------------------------------


def without(aus: list[Au], index: int, nal: int) -> list[Au]:
    out = list(aus)
    au = out[index]
    out[index] = Au(au.pts, au.nals[:nal] + au.nals[nal + 1:], au.keyframe)
    return out


def vcl_positions(au: Au) -> list[int]:
    return [i for i, n in enumerate(au.nals) if nal_type(n) < 32]


@pytest.mark.parametrize("lost", [0, 1, 3])
def test_lost_slice_drops_the_unit(lost: int) -> None:
    aus = truth("h265_slices4")
    damaged = without(aus, 5, vcl_positions(aus[5])[lost])
    asm, out = fed(damaged)
    assert_units_match(out.units, aus[:5] + aus[6:])
    assert asm.dropped_partial == 1
    assert [u.discontinuity for u in out.units].index(True) == 5


def test_lost_slice_of_a_keyframe() -> None:
    aus = truth("h265_slices4")
    asm, out = fed(without(aus, 25, vcl_positions(aus[25])[2]))
    assert_units_match(out.units, aus[:25] + aus[26:])
    assert asm.dropped_partial == 1


@pytest.mark.parametrize("kind", ["forbidden_bit", "temporal_id_zero", "truncated"])
def test_corrupt_slice_drops_the_unit(kind: str) -> None:
    aus = truth("h265_slices4")
    index = vcl_positions(aus[7])[1]
    nal = aus[7].nals[index]
    broken = {"forbidden_bit": bytes([nal[0] | 0x80]) + nal[1:],
              "temporal_id_zero": nal[:1] + bytes([nal[1] & 0xF8]) + nal[2:],
              "truncated": nal[:3]}[kind]
    damaged = list(aus)
    damaged[7] = Au(aus[7].pts, [*aus[7].nals[:index], broken, *aus[7].nals[index + 1:]], False)
    asm, out = fed(damaged)
    assert_units_match(out.units, aus[:7] + aus[8:])
    assert asm.dropped_corrupt == 1


def test_malformed_sps_in_band_drops_its_unit_and_is_not_adopted() -> None:
    aus = truth("h265_main")
    sps_at = [nal_type(n) for n in aus[25].nals].index(NAL_SPS)
    good = aus[25].nals[sps_at]
    damaged = list(aus)
    nals = aus[25].nals
    damaged[25] = Au(aus[25].pts, [*nals[:sps_at], good[:8], *nals[sps_at + 1:]], True)
    asm, out = fed(damaged)
    assert_units_match(out.units, aus[:25] + aus[26:])
    assert asm.dropped_corrupt == 1


def test_other_layers_ride_along_and_the_stream_keeps_its_order() -> None:
    aus = truth("h265_slices4")
    layer1 = bytes([0x02, 0x09]) + b"\x80\xaa\xbb"  # a TRAIL_R slice of layer 1
    suffix_sei = bytes([40 << 1, 1, 5, 1, 0xFF, 0x80])
    eos = bytes([NAL_EOS << 1, 1])
    changed = list(aus)
    for index in (3, 30):  # between a picture's slices: part of it
        nals = aus[index].nals
        changed[index] = Au(aus[index].pts, [*nals[:-1], layer1, suffix_sei, nals[-1]], False)
    changed[24] = Au(aus[24].pts, [*aus[24].nals, eos], False)  # before a keyframe
    asm, out = fed(changed)
    assert asm.drops["corrupt"] == asm.drops["partial"] == 0
    assert b"".join(u.data for u in out.units) == b"".join(au.data for au in changed)
    assert_units_match([u for i, u in enumerate(out.units) if i not in (24, 25)],
                       [au for i, au in enumerate(changed) if i not in (24, 25)])
    # Once the layout is known a picture leaves with its last slice; what
    # comes after it goes with the next one (here: in front of the keyframe).
    assert split_annexb(out.units[25].data)[0] == eos


def test_dependent_slice_segments_join_their_picture() -> None:
    """x265 never writes dependent slice segments: craft a picture's second
    segment as one (its header holds no POC to compare)."""
    aus = truth("h265_slices4")
    sps = parse_sps(params_of(aus[0])[1])
    pps = (Bits().ue(0).ue(0).u(1, 1).u(1, 0).u(3, 0).u(2, 0).ue(0).ue(0).se(0).u(2, 0)
           .u(1, 0).se(0).se(0).u(4, 0).u(1, 0).u(1, 0).nal(0x4401))  # dependent segments on
    bits = sps.slice_address_bits

    def segment(address: int, dependent: bool) -> bytes:
        b = Bits().u(1, 0).ue(0).u(1, dependent).u(bits, address)
        if not dependent:
            b.ue(1).u(8, 3)  # P slice, POC lsb 3
        return b.u(16, 0xABCD).nal(0x0201)

    first = Bits().u(1, 1).ue(0).ue(1).u(8, 3).u(16, 0x1234).nal(0x0201)
    picture = [first, segment(15, True), segment(30, False), segment(45, True)]
    asm = AccessUnitAssembler(to_annexb([*params_of(aus[0])[:2], pps]))
    units = []
    for pts in (0, 40_000, 80_000):
        for nal in picture:
            units += asm.push(to_annexb([nal]), pts, 0)
        if not asm.slice_count_known:
            units += asm.flush()
    units += asm.flush()
    assert [u.slices for u in units] == [4, 4, 4]
    assert asm.layout == (0, 15, 30, 45)
    assert asm.drops["partial"] == 0


def test_reset_drops_the_partial_unit_and_the_layout() -> None:
    aus = truth("h265_slices4")
    asm, _ = fed(aus[:5])
    assert asm.layout is not None and not asm.pending
    for nal in aus[5].nals[:vcl_positions(aus[5])[1] + 1]:
        asm.push(to_annexb([nal]), aus[5].pts, 0)
    assert asm.pending and asm.slice_count_known
    asm.reset()
    assert not asm.pending and asm.layout is None and asm.dropped_partial == 1
    assert not asm.flush()


def test_broken_streams_cannot_pile_up() -> None:
    asm = AccessUnitAssembler()
    sei = bytes([NAL_PREFIX_SEI << 1, 1, 5, 1, 0xFF, 0x80])
    for _ in range(1000):
        asm.push(to_annexb([sei]), 0, 0)
    assert len(asm._tail) <= 256 and asm.dropped_corrupt >= 3
    aus = truth("h265_main")
    slices = [n for n in aus[1].nals if nal_type(n) < 32] * 5000
    for start in range(0, len(slices), 100):
        asm.push(to_annexb(slices[start:start + 100]), 40_000, 0)
    assert asm._cur is None or len(asm._cur.nals) <= 4096
    assert asm.internal_errors == 0
