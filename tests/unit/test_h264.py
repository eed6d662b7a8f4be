"""cxrelay.h264 on real bitstreams (recorded by tests/data/make_bitstreams.py).

The truth for "one whole picture per unit" is the encoder's own packets
(checked against PyAV's H.264 parser) and, for the RTSP capture, PyAV's parser
itself: the assembler must rebuild exactly those units from NAL units fed one
at a time, in STAP-A-like groups, or as whole units.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import pytest

from cxrelay.h264 import (
    NAL_AUD,
    NAL_END_SEQ,
    NAL_FILLER,
    NAL_IDR,
    NAL_PPS,
    NAL_SEI,
    NAL_SLICE,
    NAL_SPS,
    VCL_TYPES,
    AccessUnit,
    AccessUnitAssembler,
    H264Error,
    Sps,
    nal_type,
    parse_extradata,
    parse_pps,
    parse_slice_header,
    parse_sps,
    split_annexb,
    to_annexb,
    unescape_rbsp,
)
from tests.camera.stamp import escape_rbsp as escape
from tests.recordings import DATA, recording

ENCODES = ["baseline", "slices4", "bframes", "sei_aud", "slice_change",
           "variant_cqm", "variant_444", "variant_interlaced"]


# --- recordings -----------------------------------------------------------------------------------


@dataclass
class Au:
    """One true access unit."""

    pts: int
    nals: list[bytes]
    keyframe: bool

    @property
    def data(self) -> bytes:
        return to_annexb(self.nals)

    @property
    def last_vcl(self) -> int:
        return max(i for i, nal in enumerate(self.nals) if nal_type(nal) in VCL_TYPES)


def truth(name: str) -> list[Au]:
    return [Au(pts, split_annexb(data), key) for pts, data, key in recording(name).packets]


def sps_of(aus: Sequence[Au]) -> dict[int, Sps]:
    found = {}
    for au in aus:
        for nal in au.nals:
            if nal_type(nal) == NAL_SPS:
                sps = parse_sps(nal)
                found[sps.sps_id] = sps
    return found


# --- feeding --------------------------------------------------------------------------------------

Grouping = Callable[[list[bytes]], list[list[bytes]]]


def one_by_one(nals: list[bytes]) -> list[list[bytes]]:
    return [[nal] for nal in nals]


def stap_a(seed: int) -> Grouping:
    """Random runs of consecutive NAL units, as an RTP payloader's STAP-A
    aggregation would deliver them (never across access units)."""
    rng = random.Random(seed)

    def group(nals: list[bytes]) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        i = 0
        while i < len(nals):
            n = rng.randint(1, 3)
            out.append(nals[i:i + n])
            i += n
        return out

    return group


def whole(nals: list[bytes]) -> list[list[bytes]]:
    return [nals]


@dataclass
class Fed:
    units: list[AccessUnit] = field(default_factory=list)
    # For each unit: (index of the access unit being pushed, index of the last
    # NAL unit of that push, or -1 when flush() gave it out).
    where: list[tuple[int, int]] = field(default_factory=list)
    flushes: list[int] = field(default_factory=list)  # after which AU the idle timer fired


def feed(asm: AccessUnitAssembler, aus: Sequence[Au], grouping: Grouping = one_by_one, *,
         timer: bool = True, whole_units: bool = False) -> Fed:
    """Push the units' NAL units as a camera would deliver them. ``timer``:
    the hub's idle timer fires between pictures when the assembler asks for
    it (pending, slice count unknown); ``whole_units``: push then flush()."""
    fed = Fed()
    for index, au in enumerate(aus):
        done = 0
        for number, group in enumerate(grouping(au.nals)):
            done += len(group)
            # Alternate 4- and 3-byte start codes: both occur in the wild.
            data = to_annexb(group) if number % 2 == 0 else b"".join(
                b"\x00\x00\x01" + nal for nal in group)
            for unit in asm.push(data, au.pts, index * 1000 + number):
                fed.units.append(unit)
                fed.where.append((index, done - 1))
        if whole_units or (timer and asm.pending and not asm.slice_count_known):
            fed.flushes.append(index)
            for unit in asm.flush():
                fed.units.append(unit)
                fed.where.append((index, -1))
    for unit in asm.flush():
        fed.units.append(unit)
        fed.where.append((len(aus), -1))
    assert asm.internal_errors == 0
    return fed


def assert_units_match(units: Sequence[AccessUnit], aus: Sequence[Au]) -> None:
    assert [u.pts_us for u in units] == [au.pts for au in aus]
    assert [u.keyframe for u in units] == [au.keyframe for au in aus]
    for unit, au in zip(units, aus, strict=True):
        assert unit.data == au.data
        assert unit.slices == sum(nal_type(nal) in VCL_TYPES for nal in au.nals)


# --- NAL units ------------------------------------------------------------------------------------


def test_split_annexb_start_codes_and_zero_padding() -> None:
    data = (b"\x00\x00\x00\x00\x01\x09\xf0"  # leading zeros, 4-byte start code
            b"\x00\x00\x01\x67\x42\x00"  # 3-byte start code; trailing zero is the next one's
            b"\x00\x00\x00\x01\x68\xce"
            b"\x00\x00\x01\x00\x00\x01"  # an empty NAL unit
            b"\x65\x88\x84\x00\x00\x00")  # trailing_zero_8bits
    assert split_annexb(data) == [b"\x09\xf0", b"\x67\x42", b"\x68\xce", b"\x65\x88\x84"]


def test_split_annexb_without_start_codes() -> None:
    assert split_annexb(b"") == []
    assert split_annexb(b"\x00\x00\x00") == []
    assert split_annexb(b"\x65\x88\x84") == []  # not Annex B: no NAL unit to be seen
    assert split_annexb(b"\xff\xff\x00\x00\x01\x09\xf0") == [b"\x09\xf0"]


def test_to_annexb() -> None:
    assert to_annexb([]) == b""
    assert to_annexb(iter([b"\x09\xf0", b"\x65\x88"])) == b"\0\0\0\x01\x09\xf0\0\0\0\x01\x65\x88"


def test_unescape_rbsp() -> None:
    assert unescape_rbsp(b"\x00\x00\x03\x01") == b"\x00\x00\x01"
    assert unescape_rbsp(b"\x00\x00\x03\x00\x00\x03") == b"\x00\x00\x00\x00"
    assert unescape_rbsp(b"\x12\x00\x00\x03\x03\x00\x00\x02") == b"\x12\x00\x00\x03\x00\x00\x02"
    assert unescape_rbsp(b"\x00\x03\x00") == b"\x00\x03\x00"


def test_nal_type() -> None:
    assert nal_type(b"\x67\x42") == NAL_SPS
    assert nal_type(b"\x65") == NAL_IDR
    with pytest.raises(H264Error):
        nal_type(b"")


# --- parameter sets and slice headers of real streams ---------------------------------------------


@pytest.mark.parametrize("name", ENCODES)
def test_sps_of_real_streams(name: str) -> None:
    meta = recording(name).meta
    sps = sps_of(truth(name))
    assert list(sps) == [0]
    assert sps[0].codec == meta["codec"]
    assert (sps[0].width, sps[0].height) == (meta["width"], meta["height"])
    assert sps[0].fps == 25.0


def test_sps_1080p_crops_coded_rows() -> None:
    sps = sps_of(truth("sei_aud"))[0]
    assert (sps.profile_idc, sps.constraint_flags, sps.level_idc) == (100, 0, 40)
    assert sps.pic_width_in_mbs * 16 == 1920
    assert sps.pic_height_in_map_units * 16 == 1088
    assert (sps.width, sps.height) == (1920, 1080)
    assert sps.max_num_reorder_frames == 2  # B-frames


def test_sps_details() -> None:
    baseline = sps_of(truth("baseline"))[0]
    assert (baseline.profile_idc, baseline.pic_order_cnt_type, baseline.frame_mbs_only_flag) == (
        66, 2, True)
    assert baseline.max_num_reorder_frames == 0
    i444 = sps_of(truth("variant_444"))[0]
    assert (i444.chroma_format_idc, i444.profile_idc) == (3, 244)
    assert (i444.width, i444.height) == (120, 90)  # 4:4:4 crops in single pixels
    interlaced = sps_of(truth("variant_interlaced"))[0]
    assert not interlaced.frame_mbs_only_flag and interlaced.mb_adaptive_frame_field_flag
    assert interlaced.pic_height_in_map_units == 3  # map units are MB pairs
    assert (interlaced.width, interlaced.height) == (120, 88)


def pps_nal(name: str) -> bytes:
    return next(nal for au in truth(name) for nal in au.nals if nal_type(nal) == NAL_PPS)


def test_pps_of_real_streams() -> None:
    assert not parse_pps(pps_nal("baseline")).entropy_coding_mode_flag
    main = parse_pps(pps_nal("slices4"))
    assert main.entropy_coding_mode_flag and not main.transform_8x8_mode_flag
    cqm = parse_pps(pps_nal("variant_cqm"))
    assert cqm.transform_8x8_mode_flag and cqm.pic_scaling_matrix_present_flag
    assert parse_pps(pps_nal("variant_interlaced")).bottom_field_pic_order_in_frame_present_flag


def test_pps_scaling_lists_of_444_need_the_sps() -> None:
    sps = sps_of(truth("variant_444"))
    pps = parse_pps(pps_nal("variant_444"), sps)
    assert pps.pic_scaling_matrix_present_flag and pps.chroma_qp_index_offset == 6
    # 4:4:4 has 12 lists, not 8: read as 4:2:0 the PPS makes no sense.
    with pytest.raises(H264Error):
        parse_pps(pps_nal("variant_444"))


def slice_headers(name: str) -> list[tuple[int, Any]]:
    aus = truth(name)
    sps = sps_of(aus)
    pps = {0: parse_pps(pps_nal(name), sps)}
    return [(index, parse_slice_header(nal, sps, pps)) for index, au in enumerate(aus)
            for nal in au.nals if nal_type(nal) in VCL_TYPES]


def test_slice_headers_with_b_frames() -> None:
    headers = slice_headers("bframes")
    aus = truth("bframes")
    # Decode order I P B b P ...: POC follows presentation order, frame_num decode order.
    first = [h for _, h in headers[:4]]
    assert [h.slice_type % 5 for h in first] == [2, 0, 1, 1]
    assert [h.pic_order_cnt_lsb for h in first] == [0, 6, 2, 4]
    assert [h.frame_num for h in first] == [0, 1, 2, 3]
    assert [h.nal_ref_idc > 0 for h in first] == [True, True, True, False]
    assert first[0].idr and first[0].idr_pic_id is not None
    assert all(h.idr_pic_id is None for h in first[1:])
    # POC lsb follows pts (presentation order, two per frame) from each IDR on.
    sps = sps_of(aus)[0]
    base = 0
    for index, h in headers:
        if h.idr:
            base = aus[index].pts
        poc = (aus[index].pts - base) // 20000
        assert h.pic_order_cnt_lsb == poc % (1 << sps.log2_max_pic_order_cnt_lsb)


def test_slice_headers_of_multi_slice_and_interlaced_streams() -> None:
    assert [h.first_mb_in_slice for _, h in slice_headers("slices4")[:8]] == [
        0, 240, 480, 680] * 2
    headers = [h for _, h in slice_headers("variant_interlaced")]
    assert not any(h.field_pic_flag for h in headers)  # MBAFF: frame pictures
    # Decode order I P B P, the bottom field's POC one below the top's (x264's
    # default field order); the non-reference B keeps the frame_num of the P after it.
    assert [h.pic_order_cnt_lsb for h in headers[:4]] == [1, 5, 3, 7]
    assert {h.delta_pic_order_cnt_bottom for h in headers} == {-1}
    assert [h.frame_num for h in headers[:4]] == [0, 1, 2, 2]


def test_slice_header_needs_its_parameter_sets() -> None:
    nal = truth("baseline")[0].nals[-1]
    with pytest.raises(H264Error):
        parse_slice_header(nal, {}, {})
    with pytest.raises(H264Error):
        parse_slice_header(b"\x65", sps_of(truth("baseline")), {0: parse_pps(pps_nal("baseline"))})


# --- extradata ------------------------------------------------------------------------------------


def mkv_stream() -> tuple[bytes, list[Au]]:
    """extradata_only.mkv: avcC extradata and its units (AVCC -> NAL units)."""
    with av.open(str(DATA / "extradata_only.mkv")) as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata)
        tb: Fraction = stream.time_base
        size = (extradata[4] & 3) + 1
        aus = []
        for packet in container.demux(stream):
            if not packet.size:
                continue
            data, nals, pos = bytes(packet), [], 0
            while pos < len(data):
                length = int.from_bytes(data[pos:pos + size], "big")
                nals.append(data[pos + size:pos + size + length])
                pos += size + length
            aus.append(Au(packet.pts * tb.numerator * 1_000_000 // tb.denominator, nals,
                          packet.is_keyframe))
    return extradata, aus


def test_parse_extradata_avcc_and_annexb() -> None:
    avcc, _aus = mkv_stream()
    nals = parse_extradata(avcc)
    assert [nal_type(n) for n in nals] == [NAL_SPS, NAL_PPS]
    assert parse_sps(nals[0]).codec == "avc1.4d401e"
    annexb = to_annexb(nals)
    assert parse_extradata(annexb) == nals
    # Annex B extradata may carry other NAL units (SEI, AUD): only SPS/PPS come out.
    assert parse_extradata(b"\x00\x00\x01\x09\xf0" + annexb) == nals
    rtsp = bytes.fromhex(recording("rtsp_gst").meta["extradata"])
    assert [nal_type(n) for n in parse_extradata(rtsp)] == [NAL_SPS, NAL_PPS]
    assert parse_extradata(b"") == []


@pytest.mark.parametrize("garbage", [
    b"\x02\x42\x00\x1e",  # neither form
    b"\x01\x42\xc0\x1e\xff",  # avcC too short
    b"\x01\x42\xc0\x1e\xff\xe1\x00\x40\x67\x42",  # avcC SPS length beyond the record
    b"\x01\x42\xc0\x1e\xff\xe1\x00\x02\x68\xce\x00",  # avcC "SPS" that is a PPS
    b"\x00\x00\x01\x65\x88\x84",  # Annex B without parameter sets
    b"\x00\x00\x01\xe7\x42",  # forbidden_zero_bit
    b"\x17\x00\x00\x01\x67\x42",  # bytes before the start code
])
def test_parse_extradata_garbage_raises(garbage: bytes) -> None:
    with pytest.raises(H264Error):
        parse_extradata(garbage)


# --- crafted parameter sets: rare syntax, malformed and absurd values -----------------------------


class Bits:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, width: int, value: int) -> Bits:
        if width:
            self.bits.append(format(value, f"0{width}b"))
        return self

    def ue(self, value: int) -> Bits:
        code = value + 1
        return self.u(code.bit_length() - 1, 0).u(code.bit_length(), code)

    def se(self, value: int) -> Bits:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: int) -> bytes:
        text = "".join(self.bits) + "1"  # rbsp_stop_one_bit
        text += "0" * (-len(text) % 8)
        return bytes([header]) + escape(int(text, 2).to_bytes(len(text) // 8, "big"))


def make_sps(*, profile: int = 66, sps_id: int = 0, width_mbs: int = 40, height_mbs: int = 23,
             crop: tuple[int, int, int, int] | None = (0, 0, 0, 4), poc_type: int = 0,
             scaling: bool = False, timing: tuple[int, int] | None = (1, 50),
             vui_tail: bool = True) -> bytes:
    b = Bits().u(8, profile).u(8, 0xC0 if profile == 66 else 0).u(8, 30).ue(sps_id)
    if profile == 100:
        b.ue(1).ue(0).ue(0).u(1, 0).u(1, int(scaling))  # 4:2:0, 8-bit
        if scaling:
            for index in range(8):
                b.u(1, 1)  # list present: deltas that make a real, non-flat list
                for j in range(16 if index < 6 else 64):
                    b.se(1 if j % 2 else -1)
    b.ue(0)  # log2_max_frame_num_minus4
    b.ue(poc_type)
    if poc_type == 0:
        b.ue(2)
    elif poc_type == 1:
        b.u(1, 0).se(-1).se(2).ue(3).se(4).se(-5).se(6)
    b.ue(1).u(1, 0).ue(width_mbs - 1).ue(height_mbs - 1).u(1, 1).u(1, 1)
    b.u(1, crop is not None)
    for value in crop or ():
        b.ue(value)
    b.u(1, 1)  # vui_parameters_present_flag
    b.u(1, 1).u(8, 255).u(16, 4).u(16, 3)  # SAR 4:3
    b.u(1, 0).u(1, 0).u(1, 0)
    b.u(1, timing is not None)
    if timing is not None:
        b.u(32, timing[0]).u(32, timing[1]).u(1, 1)
    if vui_tail:
        b.u(1, 0).u(1, 0).u(1, 0).u(1, 1).u(1, 1).ue(2).ue(1).ue(16).ue(16).ue(0).ue(1)
    return b.nal(0x67)


def test_crafted_sps() -> None:
    sps = parse_sps(make_sps())
    assert (sps.width, sps.height, sps.fps, sps.sar, sps.codec) == (640, 360, 25.0, (4, 3),
                                                                    "avc1.42c01e")
    assert sps.max_num_reorder_frames == 0
    # Scaling lists must be read exactly, or nothing after them makes sense.
    high = parse_sps(make_sps(profile=100, scaling=True, width_mbs=120, height_mbs=68))
    assert (high.width, high.height, high.fps, high.codec) == (1920, 1080, 25.0, "avc1.64001e")
    ntsc = parse_sps(make_sps(poc_type=1, timing=(1001, 60000), crop=None))
    assert (ntsc.pic_order_cnt_type, ntsc.fps, ntsc.height) == (1, 29.97, 368)
    assert parse_sps(make_sps(timing=(1, 90000))).fps is None  # 45000 fps: not believed
    assert parse_sps(make_sps(timing=(0, 50))).fps is None
    # A VUI cut short (cameras do that) costs the VUI, not the SPS.
    cut = make_sps(timing=None, vui_tail=False)
    assert parse_sps(cut).width == 640


@pytest.mark.parametrize("nal", [
    make_sps(width_mbs=513),  # 8208 px wide
    make_sps(height_mbs=600),
    make_sps(sps_id=32),
    make_sps(crop=(0, 0, 0, 200)),  # cropped to nothing
    make_sps()[:6],  # truncated
    bytes([0xE7]) + make_sps()[1:],  # forbidden_zero_bit
    b"\x68" + make_sps()[1:],  # not an SPS
    b"",
])
def test_malformed_or_absurd_sps_raises(nal: bytes) -> None:
    with pytest.raises(H264Error):
        parse_sps(nal)


def test_poc_type_1_slice_header() -> None:
    sps = parse_sps(make_sps(poc_type=1))
    pps = parse_pps(Bits().ue(0).ue(0).u(1, 0).u(1, 1).ue(0).ue(0).ue(0).u(1, 0).u(2, 0)
                    .se(0).se(0).se(0).u(1, 1).u(1, 0).u(1, 1).nal(0x68))
    assert pps.bottom_field_pic_order_in_frame_present_flag and pps.redundant_pic_cnt_present_flag
    nal = (Bits().ue(37).ue(5).ue(0).u(4, 9).se(-3).se(7).ue(1).u(16, 0xABCD).nal(0x41))
    h = parse_slice_header(nal, {0: sps}, {0: pps})
    assert (h.first_mb_in_slice, h.slice_type, h.frame_num) == (37, 5, 9)
    assert h.delta_pic_order_cnt == (-3, 7) and h.redundant_pic_cnt == 1
    assert (h.nal_ref_idc, h.nal_unit_type, h.idr_pic_id) == (2, NAL_SLICE, None)
    with pytest.raises(H264Error):  # beyond the picture's 920 macroblocks
        parse_slice_header(Bits().ue(920).ue(0).ue(0).u(4, 0).nal(0x41), {0: sps}, {0: pps})


# --- assembly: the recordings, fed as a camera would ----------------------------------------------

# Units the assembler needs the idle timer for before it knows the slice
# layout: the first (nothing learned) and the second (one layout seen).
LEARNING = 2


@pytest.mark.parametrize("name", ENCODES)
def test_nal_by_nal_gives_the_true_units(name: str) -> None:
    aus = truth(name)
    asm = AccessUnitAssembler()
    fed = feed(asm, aus)
    assert_units_match(fed.units, aus)
    assert not any(u.discontinuity for u in fed.units)
    assert asm.drops == {"partial": 0, "corrupt": 0, "internal_error": 0}
    assert asm.units == len(aus)
    sps = sps_of(aus)[0]
    assert all(u.sps == sps for u in fed.units)
    if name == "slice_change":
        return  # see test_camera_changes_slice_count
    # Once the layout is known, every unit comes out of the push that
    # delivered its last slice; the idle timer is never needed again.
    assert fed.flushes == list(range(LEARNING))
    for index, (where, au) in enumerate(zip(fed.where, aus, strict=True)):
        if index >= LEARNING:
            assert where == (index, au.last_vcl)
            assert fed.units[index].ingest_us == index * 1000 + au.last_vcl


@pytest.mark.parametrize("name", ["slices4", "sei_aud", "bframes", "slice_change"])
@pytest.mark.parametrize("seed", [1, 2])
def test_stap_a_groups_give_the_true_units(name: str, seed: int) -> None:
    aus = truth(name)
    fed = feed(AccessUnitAssembler(), aus, stap_a(seed))
    assert_units_match(fed.units, aus)
    if name != "slice_change":
        assert fed.flushes == list(range(LEARNING))


@pytest.mark.parametrize("name", ENCODES)
def test_whole_units_give_the_true_units(name: str) -> None:
    aus = truth(name)
    asm = AccessUnitAssembler()
    fed = feed(asm, aus, whole, whole_units=True)
    assert_units_match(fed.units, aus)
    if name != "slice_change":
        # Once the layout is known the unit is out before the caller's flush().
        assert all(where[1] >= 0 for where in fed.where[LEARNING:])


@pytest.mark.parametrize("name", ["slices4", "sei_aud", "bframes"])
def test_one_push_with_one_pts_splits_on_slice_headers(name: str) -> None:
    """No timestamps to go by (the whole file in one push): the slice header
    rules of 7.4.1.2.4 and AUDs alone find the boundaries."""
    aus = truth(name)
    asm = AccessUnitAssembler()
    units = asm.push(b"".join(data for _, data, _ in recording(name).packets), 7, 1)
    units += asm.flush()
    assert [u.data for u in units] == [au.data for au in aus]
    assert {u.pts_us for u in units} == {7}


def test_b_frames_keep_decode_order_and_pts() -> None:
    aus = truth("bframes")
    pts = [u.pts_us for u in feed(AccessUnitAssembler(), aus).units]
    assert pts == [au.pts for au in aus]
    assert pts != sorted(pts)  # decode order, not presentation order
    assert all(a != b for a, b in itertools.pairwise(pts))


def test_sei_and_aud_go_out_unchanged() -> None:
    aus = truth("sei_aud")
    units = feed(AccessUnitAssembler(), aus).units
    for unit in units:
        kinds = [nal_type(n) for n in split_annexb(unit.data)]
        assert kinds[0] == NAL_AUD
        assert NAL_SEI in kinds  # picture timing SEI in every unit
    assert sum(u.keyframe for u in units) == 2


def test_camera_changes_slice_count() -> None:
    """4 slices, then 2 (a subset of the 4-slice layout: could be loss), then
    3. Nothing is lost: the first 2-slice IDR waits one unit for proof."""
    aus = truth("slice_change")
    asm = AccessUnitAssembler()
    fed = feed(asm, aus)
    assert_units_match(fed.units, aus)
    assert asm.dropped_partial == 0 and not any(u.discontinuity for u in fed.units)
    # Two timer rounds to learn each layout: the IDR at 20 leaves with unit 21.
    assert fed.flushes == [0, 1, 20, 21, 40, 41]
    assert fed.where[20] == fed.where[21] == (21, -1)
    assert asm.layout == (0, 80, 160)


def local_joiner(packets: list[tuple[int, bytes, bool]]) -> list[tuple[int, bytes]]:
    """Undo FU-A exactly (the hub uses cxrelay.fragments; here we know every
    packet): continuation bytes go to the packet before them."""
    joined: list[tuple[int, bytes]] = []
    for pts, data, _ in packets:
        if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            joined.append((pts, data))
        else:
            joined[-1] = (joined[-1][0], joined[-1][1] + data)
    return joined


def test_rtsp_capture_matches_pyav_parser() -> None:
    """A real RTSP session (GStreamer x264enc, two slices, AUD, FU-A) as PyAV
    delivers it with fflags=+noparse: the assembler's units are the ones
    FFmpeg's own H.264 parser finds."""
    rec = recording("rtsp_gst")
    packets = local_joiner(rec.packets)
    stream = b"".join(data for _, data in packets)
    parser = av.CodecContext.create("h264", "r")
    true_units = [bytes(p) for p in parser.parse(stream)] + [bytes(p) for p in parser.parse(b"")]
    assert b"".join(true_units) == stream
    starts, offset = {}, 0
    for pts, data in packets:
        starts[offset] = pts
        offset += len(data)
    aus, offset = [], 0
    for unit in true_units:
        nals = split_annexb(unit)
        aus.append(Au(starts[offset], nals, any(nal_type(n) == NAL_IDR for n in nals)))
        offset += len(unit)
    assert len(aus) > 30 and sum(au.keyframe for au in aus) >= 2

    asm = AccessUnitAssembler(bytes.fromhex(rec.meta["extradata"]))
    units: list[AccessUnit] = []
    for index, (pts, data) in enumerate(packets):
        units += asm.push(data, pts, index)
        following = packets[index + 1][0] if index + 1 < len(packets) else None
        if following != pts and asm.pending and not asm.slice_count_known:
            units += asm.flush()  # the idle timer, between pictures
    units += asm.flush()
    assert_units_match(units, aus)
    assert asm.layout is not None and len(asm.layout) == 2
    assert {(u.sps.codec, u.sps.width, u.sps.height) for u in units if u.sps} == {
        ("avc1.42c01e", 640, 360)}


# --- parameter sets: extradata only, injection ----------------------------------------------------


@pytest.mark.parametrize("form", ["avcc", "annexb"])
def test_extradata_only_stream_gets_parameter_sets_injected(form: str) -> None:
    avcc, aus = mkv_stream()
    params = parse_extradata(avcc)
    extradata = avcc if form == "avcc" else to_annexb(params)
    assert not any(nal_type(n) in (NAL_SPS, NAL_PPS) for au in aus for n in au.nals)
    asm = AccessUnitAssembler(extradata)
    fed = feed(asm, aus)
    expected = [Au(au.pts, params + au.nals if au.keyframe else au.nals, au.keyframe)
                for au in aus]
    assert_units_match(fed.units, expected)
    assert sum(au.keyframe for au in aus) == 2  # both got the extradata's SPS and PPS
    assert all(u.sps is not None and u.sps.codec == "avc1.4d401e" for u in fed.units)


def strip(aus: list[Au], kinds: tuple[int, ...]) -> list[Au]:
    return [Au(au.pts, [n for n in au.nals if nal_type(n) not in kinds], au.keyframe) for au in aus]


def test_injection_goes_after_a_leading_aud() -> None:
    aus = truth("sei_aud")
    params = [n for n in aus[0].nals if nal_type(n) in (NAL_SPS, NAL_PPS)]
    asm = AccessUnitAssembler()
    asm.set_extradata(to_annexb(params))
    fed = feed(asm, strip(aus, (NAL_SPS, NAL_PPS)))
    assert_units_match(fed.units, aus)  # back where the encoder had them: AUD, SPS, PPS, SEI
    assert sum(u.keyframe for u in fed.units) == 2


def test_injection_adds_only_what_is_missing() -> None:
    aus = truth("sei_aud")
    asm = AccessUnitAssembler(
        to_annexb(n for n in aus[0].nals if nal_type(n) in (NAL_SPS, NAL_PPS)))
    fed = feed(asm, strip(aus, (NAL_PPS,)))
    assert_units_match(fed.units, aus)  # the PPS goes after the unit's own SPS
    assert sum(u.keyframe for u in fed.units) == 2


def test_in_band_parameter_sets_are_tracked() -> None:
    """SPS/PPS seen in the first IDR are put into later IDRs that lack them."""
    aus = truth("baseline")
    stripped = [aus[0], *strip(aus[1:], (NAL_SPS, NAL_PPS))]
    asm = AccessUnitAssembler()
    units = feed(asm, stripped).units
    assert_units_match(units, aus)
    assert sum(u.keyframe for u in units[1:]) == 2


def test_idr_without_known_parameter_sets_is_dropped() -> None:
    aus = strip(truth("baseline"), (NAL_SPS, NAL_PPS))
    asm = AccessUnitAssembler()
    units = feed(asm, aus).units
    # Nothing can decode them, and a keyframe must be self-contained.
    assert not any(u.keyframe for u in units)
    assert asm.dropped_no_parameter_sets == 3
    assert len(units) == 57 and all(u.sps is None for u in units)


def test_parameter_sets_between_slices_stay_in_the_picture() -> None:
    """GStreamer's rtph264pay config-interval=-1 repeats SPS/PPS before every
    IDR slice. Strictly they would start a new access unit; they don't here."""
    aus = truth("slices4")
    params = [n for n in aus[0].nals if nal_type(n) in (NAL_SPS, NAL_PPS)]
    repeated = []
    for au in aus:
        if not au.keyframe:
            repeated.append(au)
            continue
        nals = []
        for nal in au.nals:
            if nal_type(nal) == NAL_IDR:
                nals += params
            if nal_type(nal) not in (NAL_SPS, NAL_PPS):
                nals.append(nal)
        repeated.append(Au(au.pts, nals, True))
    asm = AccessUnitAssembler()
    fed = feed(asm, repeated)
    assert_units_match(fed.units, repeated)
    assert fed.flushes == list(range(LEARNING))


def test_trailing_nal_units_keep_their_order() -> None:
    """End of sequence and filler after the last slice: with the layout known
    the unit is already out, so they lead the next one. Nothing is lost or
    reordered on the wire."""
    aus = truth("baseline")
    filler = b"\x0c\xff\xff\x80"
    aus[0].nals.append(filler)
    aus[10].nals.append(filler)
    aus[24].nals.append(b"\x0a")  # end of sequence, before the IDR at 25
    asm = AccessUnitAssembler()
    units = feed(asm, aus).units
    assert len(units) == 60 and asm.dropped_partial == asm.dropped_corrupt == 0
    assert b"".join(u.data for u in units) == b"".join(au.data for au in aus)
    assert units[0].data == aus[0].data  # layout unknown yet: the unit waited for the timer
    assert next(nal_type(n) for n in split_annexb(units[11].data)) == NAL_FILLER
    assert [nal_type(n) for n in split_annexb(units[25].data)][:3] == [
        NAL_END_SEQ, NAL_SPS, NAL_PPS]
    assert units[25].keyframe


# --- loss and damage ------------------------------------------------------------------------------


def without(aus: list[Au], index: int, nal: int) -> list[Au]:
    out = [Au(au.pts, list(au.nals), au.keyframe) for au in aus]
    del out[index].nals[nal]
    return out


@pytest.mark.parametrize("lost", [0, 1, 2, 3], ids=["first", "second", "third", "last"])
def test_lost_slice_drops_the_unit(lost: int) -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    fed = feed(asm, without(aus, 7, lost))
    assert_units_match(fed.units, aus[:7] + aus[8:])
    assert asm.dropped_partial == 1
    assert [u.discontinuity for u in fed.units].index(True) == 7  # the unit after the gap
    assert sum(u.discontinuity for u in fed.units) == 1
    assert asm.layout == (0, 240, 480, 680)


def test_lost_slice_of_an_idr() -> None:
    aus = truth("slices4")
    assert aus[25].keyframe and [nal_type(n) for n in aus[25].nals] == [7, 8, 5, 5, 5, 5]
    asm = AccessUnitAssembler()
    fed = feed(asm, without(aus, 25, 4))
    assert_units_match(fed.units, aus[:25] + aus[26:])
    assert fed.units[25].discontinuity and asm.dropped_partial == 1


def test_losses_in_consecutive_units() -> None:
    aus = truth("slices4")
    damaged = without(without(aus, 7, 1), 8, 2)
    asm = AccessUnitAssembler()
    fed = feed(asm, damaged)
    assert_units_match(fed.units, aus[:7] + aus[9:])
    assert asm.dropped_partial == 2 and fed.units[7].discontinuity


def damaged(aus: list[Au], index: int, nal: int, replace: bytes) -> list[Au]:
    out = [Au(au.pts, list(au.nals), au.keyframe) for au in aus]
    out[index].nals[nal] = replace
    return out


@pytest.mark.parametrize("kind", ["forbidden_bit", "truncated_header"])
def test_corrupt_slice_drops_the_unit(kind: str) -> None:
    aus = truth("slices4")
    nal = aus[7].nals[2]
    bad = bytes([nal[0] | 0x80]) + nal[1:] if kind == "forbidden_bit" else nal[:2]
    asm = AccessUnitAssembler()
    fed = feed(asm, damaged(aus, 7, 2, bad))
    assert_units_match(fed.units, aus[:7] + aus[8:])
    assert asm.dropped_corrupt == 1 and fed.units[7].discontinuity


@pytest.mark.parametrize("bad_sps", [make_sps(width_mbs=600), make_sps()[:7]],
                         ids=["absurd", "truncated"])
def test_unit_with_malformed_sps_is_dropped_and_the_sps_not_adopted(bad_sps: bytes) -> None:
    aus = truth("baseline")
    assert nal_type(aus[25].nals[0]) == NAL_SPS
    asm = AccessUnitAssembler()
    fed = feed(asm, damaged(aus, 25, 0, bad_sps))
    assert_units_match(fed.units, aus[:25] + aus[26:])
    assert asm.dropped_corrupt == 1 and fed.units[25].discontinuity
    assert fed.units[25].sps == sps_of(aus)[0]  # the old SPS still rules


def test_malformed_extradata_raises_and_changes_nothing() -> None:
    aus = truth("baseline")
    good = to_annexb(n for n in aus[0].nals if nal_type(n) in (NAL_SPS, NAL_PPS))
    asm = AccessUnitAssembler(good)
    with pytest.raises(H264Error):
        asm.set_extradata(to_annexb([make_sps(width_mbs=600), aus[0].nals[1]]))
    assert_units_match(feed(asm, strip(aus, (NAL_SPS, NAL_PPS))).units, aus)
    # The constructor (Ingest builds one per connection) never raises: the
    # garbage is ignored, and in-band parameter sets still work.
    assert_units_match(feed(AccessUnitAssembler(b"\x02garbage"), aus).units, aus)


def test_stray_bytes_spoil_the_unit_they_land_in() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    units: list[AccessUnit] = []
    for index, au in enumerate(aus[:12]):
        for number, nal in enumerate(au.nals):
            junk = b"\x17\x2a" if (index, number) == (6, 2) else b""
            units += asm.push(junk + to_annexb([nal]), au.pts, index)
    units += asm.flush()
    assert_units_match(units, aus[:6] + aus[7:12])
    assert asm.dropped_corrupt == 1


def test_reset_drops_the_partial_unit_and_the_layout() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    feed(asm, aus[:10])
    assert asm.layout == (0, 240, 480, 680)
    for nal in aus[10].nals[:2]:
        assert asm.push(to_annexb([nal]), aus[10].pts, 0) == []
    assert asm.pending
    asm.reset()
    assert not asm.pending and asm.layout is None and asm.dropped_partial == 1
    fed = feed(asm, aus[11:])
    assert_units_match(fed.units, aus[11:])
    assert fed.units[0].discontinuity and not any(u.discontinuity for u in fed.units[1:])
    assert fed.flushes == [0, 1]  # learning again


def test_pending_and_slice_count_known() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    assert not asm.pending and not asm.slice_count_known
    for nal in aus[0].nals:
        asm.push(to_annexb([nal]), aus[0].pts, 0)
    assert asm.pending and not asm.slice_count_known  # arm the idle timer
    assert len(asm.flush()) == 1 and not asm.pending
    feed(asm, aus[1:3])
    assert asm.slice_count_known
    states = []
    for nal in aus[3].nals:
        out = asm.push(to_annexb([nal]), aus[3].pts, 0)
        states.append((len(out), asm.pending, asm.slice_count_known))
    assert states == [(0, True, True)] * 3 + [(1, False, True)]
    assert asm.flush() == []


def test_early_flush_before_the_layout_is_known() -> None:
    """The idle timer fired mid-picture (a slow link): the first slices went
    out alone and the rest is dropped. The cut unit teaches no layout."""
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    units: list[AccessUnit] = []
    assert [nal_type(n) for n in aus[0].nals] == [7, 8, 6, 5, 5, 5, 5]
    for nal in aus[0].nals[:5]:  # SPS, PPS, SEI and two slices
        units += asm.push(to_annexb([nal]), aus[0].pts, 0)
    units += asm.flush()
    assert len(units) == 1 and units[0].slices == 2
    fed = feed(asm, [Au(aus[0].pts, aus[0].nals[5:], True), *aus[1:]])
    assert asm.dropped_partial == 1
    assert_units_match(fed.units, aus[1:])
    assert fed.units[0].discontinuity
    assert fed.flushes == [0, 1, 2]  # the straggler, then two units to learn from


def test_early_flush_with_a_known_layout_holds_the_unit() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    feed(asm, aus[:10])
    for nal in aus[10].nals[:2]:
        asm.push(to_annexb([nal]), aus[10].pts, 0)
    assert asm.flush() == []  # fewer slices than the layout: maybe lost ones
    fed = feed(asm, [Au(aus[10].pts, aus[10].nals[2:], False), *aus[11:]])
    assert_units_match(fed.units, aus[11:])
    assert fed.units[0].discontinuity and asm.dropped_partial == 2
    assert asm.layout == (0, 240, 480, 680)


# --- where units end ------------------------------------------------------------------------------


def test_unit_ends_at_the_next_aud() -> None:
    """No idle timer, no layout yet: the unit comes out as soon as the next
    one visibly starts, here with its AUD (before its SEI and slices)."""
    aus = truth("sei_aud")
    fed = feed(AccessUnitAssembler(), aus, timer=False)
    assert_units_match(fed.units, aus)
    assert [nal_type(n) for n in aus[1].nals[:3]] == [NAL_AUD, NAL_SEI, NAL_SLICE]
    assert fed.where[:2] == [(1, 0), (2, 0)]


def test_new_timestamp_ends_the_unit() -> None:
    aus = truth("slices4")
    sei = aus[0].nals[2]
    assert nal_type(sei) == NAL_SEI
    asm = AccessUnitAssembler()
    for nal in aus[0].nals:
        assert asm.push(to_annexb([nal]), 0, 0) == []
    # An SEI with the same timestamp may belong to either picture: wait.
    assert asm.push(to_annexb([sei]), 0, 1) == []
    # One with a new timestamp can only start the next unit: this one is done.
    units = asm.push(to_annexb([sei]), 40000, 2)
    assert [u.data for u in units] == [aus[0].data]
    # The first SEI came after the last slice: it starts the next unit (7.4.1.2.3).
    for nal in aus[1].nals:
        asm.push(to_annexb([nal]), 40000, 3)
    assert [u.data for u in asm.flush()] == [to_annexb([sei, sei, *aus[1].nals])]


def test_new_timestamp_splits_slices_of_one_picture() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    for nal in aus[0].nals[:5]:  # SPS, PPS, SEI, slices 0 and 240
        assert asm.push(to_annexb([nal]), 0, 0) == []
    units = asm.push(to_annexb([aus[0].nals[5]]), 40000, 1)
    assert [u.slices for u in units] == [2]  # the timestamp says: another picture
    assert asm.push(to_annexb([aus[0].nals[6]]), 40000, 1) == []
    assert asm.flush() == [] and asm.dropped_partial == 1  # no first slice


def test_first_slice_lost_with_one_timestamp() -> None:
    """Only the slice headers tell the pictures apart: the next picture's
    slices have another frame_num, so they don't join the one before."""
    aus = truth("slices4")
    damaged = without(aus, 1, 0)
    asm = AccessUnitAssembler()
    units = asm.push(b"".join(au.data for au in damaged), 0, 0) + asm.flush()
    assert [u.data for u in units] == [au.data for au in aus[:1] + aus[2:]]
    assert asm.dropped_partial == 1 and units[1].discontinuity


def test_without_parameter_sets_first_mb_zero_splits_pictures() -> None:
    """With no SPS/PPS the headers can't be read past pps_id; a slice with
    first_mb_in_slice 0 still starts a new picture."""
    aus = strip(truth("slices4"), (NAL_SPS, NAL_PPS))
    asm = AccessUnitAssembler()
    units = asm.push(b"".join(au.data for au in aus), 0, 0) + asm.flush()
    p_frames = [au for au in aus if not au.keyframe]
    assert [u.data for u in units] == [au.data for au in p_frames]
    assert all(u.sps is None and u.slices == 4 for u in units)
    assert asm.dropped_no_parameter_sets == 3


def test_new_sps_forgets_the_layout() -> None:
    aus = truth("slices4")
    asm = AccessUnitAssembler()
    feed(asm, aus[:5])
    assert asm.layout == (0, 240, 480, 680)
    same = aus[0].nals[0]
    asm.push(to_annexb([same]), 200000, 0)
    assert asm.layout == (0, 240, 480, 680)
    other = truth("baseline")[0].nals[0]  # another SPS with id 0: a new sequence
    asm.push(to_annexb([other]), 200000, 0)
    assert asm.layout is None and not asm.slice_count_known


def test_wrong_layout_is_unlearned_when_more_slices_come() -> None:
    """Two-slice pictures taught the layout (0, 240); then the camera sends
    four slices again. The first of them goes out cut at 240 (nothing could
    tell), its other slices show the layout wrong, and no layout is trusted
    again: a camera whose pictures change their slices would be cut again
    (one slicing by size: every keyframe)."""
    aus = truth("slices4")
    two = [Au(au.pts, au.nals[:-2], au.keyframe) if 5 <= index < 10 else au
           for index, au in enumerate(aus)]
    asm = AccessUnitAssembler()
    fed = feed(asm, two)
    assert_units_match(fed.units[:10], two[:10])
    assert fed.units[10].data == to_annexb(aus[10].nals[:2])  # cut short
    assert_units_match(fed.units[11:], aus[11:])
    assert asm.dropped_partial == 1 and fed.units[11].discontinuity
    assert asm.layout is None
    # 5 and 6 follow the old layout as far as they go: they wait for the next
    # unit, not for the timer; from 10 on, every unit waits for the timer.
    assert fed.flushes == [0, 1, *range(10, len(aus))]
    # A new sequence (another SPS) may learn a layout again.
    other = truth("baseline")
    fed = feed(asm, other)
    assert_units_match(fed.units, other)
    assert asm.layout is not None and fed.flushes == [0, 1]


def test_broken_streams_cannot_pile_up() -> None:
    aus = truth("baseline")
    asm = AccessUnitAssembler()
    for _ in range(512):  # NAL units that never get a picture
        asm.push(b"\x00\x00\x01\x0c\xff\x80", 0, 0)
    fed = feed(asm, aus)
    assert_units_match(fed.units, aus)
    assert asm.dropped_corrupt == 2 and fed.units[0].discontinuity
    # A picture that never ends (its slices keep coming, never a new one).
    slices = truth("slices4")
    feed(asm, slices[:3])
    for nal in slices[3].nals[:2]:
        asm.push(to_annexb([nal]), 1, 0)
    for _ in range(5000):
        asm.push(to_annexb([slices[3].nals[1]]), 1, 0)
    assert asm.dropped_corrupt == 3
    assert asm.flush() == [] and asm.dropped_partial == 1  # the rest: no first slice
    assert asm.internal_errors == 0
