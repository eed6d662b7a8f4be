"""cxrelay.h265's parsing on real bitstreams (recorded by
tests/data/make_h265_bitstreams.py) and crafted ones.

The truth for the codec string and the hvcC record is GStreamer's (h265parse
and its codec utils, kept in each recording's sidecar); for sizes and picture
boundaries it is the encoder's packets, checked against FFmpeg's hevc parser
when they were recorded.
"""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.h265 import (
    IRAP,
    NAL_AUD,
    NAL_PPS,
    NAL_SPS,
    NAL_VPS,
    SLICES,
    H265Error,
    ProfileTierLevel,
    build_hvcc,
    first_slice_segment_in_pic,
    layer_id,
    nal_type,
    parse_extradata,
    parse_hvcc,
    parse_pps,
    parse_slice_segment_header,
    parse_sps,
    parse_vps,
    split_extradata,
)
from cxrelay.h265.syntax import MissingParameterSet
from tests.recordings import DATA, Recording, recording
from tests.unit.test_h264 import Bits as Bits264

ENCODES = ["h265_main", "h265_slices4", "h265_bframes", "h265_sei_aud", "h265_slice_change",
           "h265_variant_main10", "h265_variant_444", "h265_variant_422",
           "h265_variant_scaling"]


def load(name: str) -> Recording:
    return recording(name, suffix=".h265")


def nals_of(name: str) -> list[bytes]:
    return [nal for unit in load(name).units for nal in split_annexb(unit)]


def first_of(name: str, kind: int) -> bytes:
    return next(nal for nal in nals_of(name) if nal_type(nal) == kind)


# --- NAL unit headers -----------------------------------------------------------------------------


def test_nal_header_fields() -> None:
    assert nal_type(b"\x40\x01") == NAL_VPS
    assert nal_type(b"\x46\x01\x50") == NAL_AUD
    assert nal_type(b"\x26\x01\xaf") == 19  # IDR_W_RADL
    assert layer_id(b"\x40\x01") == 0
    assert layer_id(b"\x41\x09") == 33  # the layer's top bit sits in the first byte
    assert first_slice_segment_in_pic(b"\x02\x01\x80")
    assert not first_slice_segment_in_pic(b"\x02\x01\x7f")
    for short in (b"", b"\x40"):
        with pytest.raises(H265Error):
            nal_type(short)
    with pytest.raises(H265Error):
        first_slice_segment_in_pic(b"\x02\x01")


# --- parameter sets of real streams ---------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODES)
def test_parameter_sets_of_real_streams(name: str) -> None:
    meta = load(name).meta
    sps = parse_sps(first_of(name, NAL_SPS))
    vps = parse_vps(first_of(name, NAL_VPS))
    pps = parse_pps(first_of(name, NAL_PPS))
    assert (sps.width, sps.height) == (meta["width"], meta["height"])
    assert sps.codec == meta["codec"]  # GStreamer's codec utils say the same
    assert sps.ptl == vps.ptl and sps.vps_id == vps.vps_id and pps.sps_id == sps.sps_id
    assert sps.fps == 25.0
    # The hvcC record GStreamer's h265parse builds (it marks no array complete).
    params = [first_of(name, kind) for kind in (NAL_VPS, NAL_SPS, NAL_PPS)]
    assert build_hvcc(params, complete=False).hex() == meta["hvcc"]


def test_sps_details() -> None:
    main10 = parse_sps(first_of("h265_variant_main10", NAL_SPS))
    assert (main10.bit_depth_luma, main10.bit_depth_chroma, main10.profile_idc) == (10, 10, 2)
    # 4:4:4 crops in luma samples, 4:2:2 in two columns but single rows.
    s444 = parse_sps(first_of("h265_variant_444", NAL_SPS))
    assert (s444.chroma_format_idc, s444.coded_width, s444.coded_height) == (3, 128, 96)
    s422 = parse_sps(first_of("h265_variant_422", NAL_SPS))
    assert (s422.chroma_format_idc, s422.coded_width, s422.coded_height) == (2, 128, 96)
    cropped = parse_sps(first_of("h265_sei_aud", NAL_SPS))
    assert (cropped.coded_width, cropped.coded_height) == (632, 360)
    assert cropped.max_sub_layers == 3  # sub-layer profile/level flags read right
    bframes = parse_sps(first_of("h265_bframes", NAL_SPS))
    assert bframes.max_num_reorder_pics > 0
    assert parse_sps(first_of("h265_main", NAL_SPS)).max_num_reorder_pics == 0


def test_hvcc_round_trip() -> None:
    params = [first_of("h265_main", kind) for kind in (NAL_VPS, NAL_SPS, NAL_PPS)]
    sei = next(n for n in nals_of("h265_sei_aud") if nal_type(n) == 39)
    record = build_hvcc([*params, sei])
    hvcc = parse_hvcc(record)
    assert hvcc.nals == [*params, sei]
    assert (hvcc.chroma_format_idc, hvcc.bit_depth_luma, hvcc.length_size) == (1, 8, 4)
    assert hvcc.profile_tier_level == parse_sps(params[1]).ptl.to_bytes()
    # hvc1: the parameter set arrays are complete; SEI arrays never are.
    assert [record[i] >> 7 for i in array_offsets(record)] == [1, 1, 1, 0]
    assert [b >> 7 for b in (build_hvcc(params, complete=False)[i]
                             for i in array_offsets(record)[:3])] == [0, 0, 0]
    assert parse_extradata(record) == params
    with pytest.raises(H265Error):
        build_hvcc([params[0], params[2]])  # no SPS


def array_offsets(record: bytes) -> list[int]:
    offsets, pos = [], 23
    for _ in range(record[22]):
        offsets.append(pos)
        count = int.from_bytes(record[pos + 1:pos + 3], "big")
        pos += 3
        for _ in range(count):
            pos += 2 + int.from_bytes(record[pos:pos + 2], "big")
    return offsets


# --- extradata ------------------------------------------------------------------------------------


def test_extradata_from_rtsp_sdp_and_from_mkv() -> None:
    # RTSP: FFmpeg turns sprop-vps/sps/pps into Annex B.
    rtsp = bytes.fromhex(load("h265_rtsp_gst").meta["extradata"])
    assert [nal_type(n) for n in parse_extradata(rtsp)] == [NAL_VPS, NAL_SPS, NAL_PPS]
    assert parse_sps(parse_extradata(rtsp)[1]).codec == "hvc1.1.6.L63.90"
    # Matroska: an hvcC record; the stream itself then has no parameter sets.
    with av.open(str(DATA / "h265_extradata_only.mkv")) as container:
        record = bytes(container.streams.video[0].codec_context.extradata)
        packets = [bytes(p) for p in container.demux(video=0) if p.size]
    params = parse_extradata(record)
    assert [nal_type(n) for n in params] == [NAL_VPS, NAL_SPS, NAL_PPS]
    assert not any(nal_type(n) in (NAL_VPS, NAL_SPS, NAL_PPS) for p in packets
                   for n in length_prefixed(p))
    assert parse_hvcc(record).nals[:3] == params  # x265's SEI follows them
    assert split_extradata(b"") == [] and parse_extradata(b"") == []
    assert parse_extradata(to_annexb(params)) == params


def length_prefixed(sample: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(sample):
        size = int.from_bytes(sample[pos:pos + 4], "big")
        out.append(sample[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00",  # no NAL unit
    b"\x55\x00\x00\x01\x40\x01",  # bytes before the start code
    b"\x00\x00\x01\xc0\x01",  # forbidden_zero_bit
    b"\x00\x00\x01\x40\x00",  # nuh_temporal_id_plus1 0
    b"\x00\x00\x01\x4e\x01\x05",  # SEI only
    b"\x01\x01\x60",  # hvcC cut short
    bytes([1]) + bytes(21) + b"\x01\xa0\x00\x01\x00\x10\x40",  # array cut short
    b"\x02" + bytes(30),  # neither
])
def test_malformed_extradata_raises(garbage: bytes) -> None:
    with pytest.raises(H265Error):
        parse_extradata(garbage)


# --- slice segment headers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h265_slices4", "h265_bframes", "h265_sei_aud",
                                  "h265_slice_change"])
def test_slice_segment_headers_of_real_streams(name: str) -> None:
    sps: dict = {}
    pps: dict = {}
    for packet in load(name).packets:
        headers = []
        for nal in split_annexb(packet.data):
            kind = nal_type(nal)
            if kind == NAL_SPS:
                s = parse_sps(nal)
                sps[s.sps_id] = s
            elif kind == NAL_PPS:
                p = parse_pps(nal)
                pps[p.pps_id] = p
            elif kind in SLICES:
                headers.append(parse_slice_segment_header(nal, sps, pps))
        # The first segment of each picture, and only it, says so.
        assert [h.first_slice_segment_in_pic_flag for h in headers] == \
            [True] + [False] * (len(headers) - 1)
        addresses = [h.slice_segment_address for h in headers]
        assert addresses == sorted(set(addresses)) and addresses[0] == 0
        assert len({(h.nal_unit_type, h.pic_order_cnt_lsb, h.pps_id) for h in headers}) == 1
        assert packet.keyframe == headers[0].irap
        if headers[0].irap:
            assert {h.slice_type for h in headers} == {2}


def test_slice_segment_header_needs_its_parameter_sets() -> None:
    nals = nals_of("h265_slices4")
    second = next(n for n in nals if nal_type(n) in SLICES and not first_slice_segment_in_pic(n))
    with pytest.raises(MissingParameterSet):
        parse_slice_segment_header(second, {}, {})
    sps = parse_sps(first_of("h265_slices4", NAL_SPS))
    pps = parse_pps(first_of("h265_slices4", NAL_PPS))
    header = parse_slice_segment_header(second, {0: sps}, {0: pps})
    assert 0 < header.slice_segment_address < sps.pic_size_in_ctbs
    small = parse_sps(make_sps(width=64, height=64))  # one CTB: no slice but the first
    with pytest.raises(H265Error):
        parse_slice_segment_header(second, {0: small}, {0: pps})
    for not_a_slice in (first_of("h265_main", NAL_SPS), b"\x4e\x01\x05\x80"):
        with pytest.raises(H265Error):
            parse_slice_segment_header(not_a_slice, {0: sps}, {0: pps})


# --- the codec string -----------------------------------------------------------------------------


@pytest.mark.parametrize(("ptl", "codec"), [
    # x265 Main at level 3.1: progressive, non-packed and frame-only constraint flags.
    (ProfileTierLevel(0, False, 1, 0x60000000, 0xB0 << 40, 93), "hvc1.1.6.L93.B0"),
    (ProfileTierLevel(0, False, 2, 0x20000000, 0x90 << 40, 120), "hvc1.2.4.L120.90"),
    (ProfileTierLevel(0, True, 1, 0x60000000, 0xB0 << 40, 150), "hvc1.1.6.H150.B0"),
    # A zero byte before a non-zero one stays; trailing zero bytes go.
    (ProfileTierLevel(0, False, 4, 0x08000000, 0x980008 << 24, 90), "hvc1.4.10.L90.98.00.08"),
    (ProfileTierLevel(1, False, 1, 0x40000000, 0, 60), "hvc1.A1.2.L60"),
    (ProfileTierLevel(3, True, 31, 0xFFFFFFFF, (1 << 48) - 1, 255),
     "hvc1.C31.FFFFFFFF.H255.FF.FF.FF.FF.FF.FF"),
])
def test_codec_string(ptl: ProfileTierLevel, codec: str) -> None:
    assert ptl.codec() == codec
    assert ptl.codec("hev1") == "hev1" + codec[4:]


# --- crafted parameter sets: rare syntax, malformed and absurd values -----------------------------


class Bits(Bits264):
    def nal(self, header: int) -> bytes:
        """With H.265's two-byte header (``header`` holds both bytes)."""
        return bytes([header >> 8]) + super().nal(header & 0xFF)


def ptl_bits(b: Bits, sub_layers_minus1: int = 0) -> Bits:
    b.u(2, 0).u(1, 0).u(5, 1).u(32, 0x60000000).u(48, 0xB0 << 40).u(8, 93)
    for _ in range(sub_layers_minus1):
        b.u(1, 1).u(1, 1)  # sub-layer profile and level present
    if sub_layers_minus1:
        b.u(2 * (8 - sub_layers_minus1), 0)
    for _ in range(sub_layers_minus1):
        b.u(88, 0x0160000000B00000000000).u(8, 90)
    return b


def make_sps(*, width: int = 1280, height: int = 720, crop: tuple[int, ...] | None = None,
             chroma: int = 1, sps_id: int = 0, sub_layers_minus1: int = 0, log2_min_cb: int = 3,
             log2_diff_cb: int = 3, rps: bool = True, long_term: bool = True, pcm: bool = True,
             timing: tuple[int, int] | None = (1001, 30000), vui_tail: bool = True) -> bytes:
    b = Bits().u(4, 0).u(3, sub_layers_minus1).u(1, 1)
    ptl_bits(b, sub_layers_minus1)
    b.ue(sps_id).ue(chroma)
    if chroma == 3:
        b.u(1, 0)
    b.ue(width).ue(height).u(1, crop is not None)
    for value in crop or ():
        b.ue(value)
    b.ue(0).ue(0).ue(4)  # 8-bit, log2_max_pic_order_cnt_lsb 8
    b.u(1, 1)  # sub-layer ordering info for each sub-layer
    for _ in range(sub_layers_minus1 + 1):
        b.ue(4).ue(2).ue(0)
    b.ue(log2_min_cb - 3).ue(log2_diff_cb).ue(0).ue(3).ue(1).ue(1)
    b.u(1, 0)  # scaling_list_enabled_flag
    b.u(1, 1).u(1, 1)  # amp, sample adaptive offset
    b.u(1, pcm)
    if pcm:
        b.u(4, 7).u(4, 7).ue(0).ue(1).u(1, 0)
    if rps:
        b.ue(4)  # num_short_term_ref_pic_sets
        b.ue(2).ue(1).ue(0).u(1, 1).ue(1).u(1, 1).ue(3).u(1, 0)  # S0 {-1, -3}, S1 {4}
        # Predicted from the set before: delta_rps -1 gives {-2, -4, 3} and the
        # reference itself (-1); use all but the first (used_by_curr 0, use_delta 0).
        b.u(1, 1).u(1, 1).ue(0).u(1, 0).u(1, 0).u(1, 1).u(1, 1).u(1, 1)
        # Predicted again, delta_rps +1: three entries plus the reference, so
        # four flag pairs (used_by_curr_pic 0, use_delta 1). -1 + 1 = 0 is no
        # picture: {-3} and {1, 4}. And once more with delta_rps -1: {-1, -4} and {3}.
        for sign in (0, 1):
            b.u(1, 1).u(1, sign).ue(0)
            for _ in range(4):
                b.u(1, 0).u(1, 1)
    else:
        b.ue(0)
    b.u(1, long_term)
    if long_term:
        b.ue(2).u(8, 5).u(1, 1).u(8, 9).u(1, 0)
    b.u(1, 1).u(1, 1)  # temporal MVP, strong intra smoothing
    b.u(1, 1)  # vui_parameters_present_flag
    b.u(1, 1).u(8, 255).u(16, 4).u(16, 3)  # SAR 4:3
    b.u(1, 0).u(1, 1).u(4, 5).u(1, 0).u(1, 0)  # video signal type, no colour description
    b.u(3, 0).u(1, 0)  # neutral chroma, field_seq, frame_field_info; no display window
    b.u(1, timing is not None)
    if timing is not None:
        b.u(32, timing[0]).u(32, timing[1]).u(1, 0).u(1, 0)
    if vui_tail:
        b.u(1, 0)  # bitstream_restriction_flag
        b.u(1, 0)  # sps_extension_present_flag
    return b.nal(0x4201)


def test_crafted_sps() -> None:
    sps = parse_sps(make_sps())
    assert (sps.width, sps.height, sps.fps, sps.sar) == (1280, 720, 29.97, (4, 3))
    assert (sps.log2_ctb_size, sps.pic_size_in_ctbs, sps.codec) == (6, 20 * 12, "hvc1.1.6.L93.B0")
    # Reference picture sets and long-term pictures must be read bit-exact,
    # or the VUI after them makes no sense.
    assert parse_sps(make_sps(rps=False, long_term=False, pcm=False)).fps == 29.97
    layered = parse_sps(make_sps(sub_layers_minus1=2))
    assert (layered.max_sub_layers, layered.fps) == (3, 29.97)
    # The conformance window counts chroma samples: two luma ones in 4:2:0.
    cropped = parse_sps(make_sps(width=1920, height=1088, crop=(0, 0, 0, 4)))
    assert (cropped.width, cropped.height) == (1920, 1080)
    s444 = parse_sps(make_sps(width=1920, height=1088, crop=(1, 2, 3, 4), chroma=3))
    assert (s444.width, s444.height) == (1917, 1081)
    mono = parse_sps(make_sps(width=1920, height=1088, crop=(1, 0, 0, 8), chroma=0))
    assert (mono.width, mono.height) == (1919, 1080)
    assert parse_sps(make_sps(timing=(1, 90000))).fps is None  # 90000 fps: not believed
    assert parse_sps(make_sps(timing=(0, 50))).fps is None
    # A VUI cut short (cameras do that) costs the VUI, not the SPS.
    assert parse_sps(make_sps(timing=None, vui_tail=False)).width == 1280


@pytest.mark.parametrize("nal", [
    make_sps(width=0),
    make_sps(width=16896),  # over the level 6.2 limit
    make_sps(width=1284),  # not a multiple of the 8x8 minimum coding block
    make_sps(log2_diff_cb=4),  # 128x128 coding tree blocks
    make_sps(sps_id=16),
    make_sps(chroma=4),
    make_sps(crop=(0, 0, 0, 360)),  # cropped to nothing
    make_sps()[:12],  # truncated
    bytes([0xC2]) + make_sps()[1:],  # forbidden_zero_bit
    bytes([0x42, 0x00]) + make_sps()[2:],  # nuh_temporal_id_plus1 0
    bytes([0x42, 0x09]) + make_sps()[2:],  # another layer's SPS
    b"\x44\x01" + make_sps()[2:],  # not an SPS
    b"",
])
def test_malformed_or_absurd_sps_raises(nal: bytes) -> None:
    with pytest.raises(H265Error):
        parse_sps(nal)


def test_malformed_vps_and_pps_raise() -> None:
    vps = first_of("h265_main", NAL_VPS)
    pps = first_of("h265_main", NAL_PPS)
    assert parse_vps(vps).vps_id == 0 and parse_pps(pps).pps_id == 0
    for bad in (vps[:8], vps[:4] + b"\x00\x00" + vps[6:], b"\x42" + vps[1:]):
        with pytest.raises(H265Error):
            parse_vps(bad)
    big_id = Bits().ue(64).ue(0).nal(0x4401)
    for bad in (pps[:2], big_id, b"\x40" + pps[1:]):
        with pytest.raises(H265Error):
            parse_pps(bad)


def test_irap_types() -> None:
    assert sorted(IRAP) == [16, 17, 18, 19, 20, 21]
    assert IRAP < SLICES and not {10, 15, 22, 31} & SLICES


def test_recordings_are_here() -> None:
    # A missing recording must fail the suite, not skip it.
    for name in [*ENCODES, "h265_rtsp_gst"]:
        assert Path(DATA / f"{name}.h265").stat().st_size > 1000
