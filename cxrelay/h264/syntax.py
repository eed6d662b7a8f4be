"""H.264 syntax: parameter sets (SPS with its VUI, PPS), slice headers up to
the fields that tell pictures apart, and codec extradata (avcC or Annex B).
Pure: stdlib only. References are to ITU-T H.264 (08/2021).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cxrelay.h264.bits import (
    NAL_DPA,
    NAL_IDR,
    NAL_PPS,
    NAL_SLICE,
    NAL_SPS,
    BitReader,
    H264Error,
    rbsp_of,
    split_nals,
    unescape_rbsp,
)

# Largest picture side accepted; anything bigger is a corrupt SPS, not a camera.
MAX_SIDE = 8192
# Enough escaped bytes for the slice header fields up to redundant_pic_cnt in
# the worst case (about 43 bytes of RBSP), even with emulation prevention.
_SLICE_HEADER_BYTES = 80

# Profiles whose SPS carries chroma_format_idc, bit depths and scaling lists (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class MissingParameterSet(H264Error):
    """A slice refers to a PPS or SPS that has not been seen."""


# --- extradata ------------------------------------------------------------------------------------


def parse_extradata(extradata: bytes) -> list[bytes]:
    """SPS and PPS NAL units from codec extradata: an avcC record
    (AVCDecoderConfigurationRecord, MP4/MKV) or Annex B (RTSP's SDP).

    Other NAL units in Annex B extradata (SEI, AUD) are left out. Raises
    H264Error on anything else."""
    data = bytes(extradata)
    if not data:
        return []
    if data[0] == 1:
        return _parse_avcc(data)
    nals, stray = split_nals(data)
    if stray or not nals:
        raise H264Error("extradata is neither avcC nor Annex B")
    out = []
    for nal in nals:
        if nal[0] & 0x80:
            raise H264Error("forbidden_zero_bit set in extradata")
        if nal[0] & 0x1F in (NAL_SPS, NAL_PPS):
            out.append(nal)
    if not out:
        raise H264Error("no SPS or PPS in extradata")
    return out


def _parse_avcc(data: bytes) -> list[bytes]:
    if len(data) < 7:
        raise H264Error("avcC record too short")
    out: list[bytes] = []
    pos = 6
    count = data[5] & 0x1F
    for want in (NAL_SPS, NAL_PPS):
        for _ in range(count):
            if pos + 2 > len(data):
                raise H264Error("avcC record truncated")
            size = int.from_bytes(data[pos:pos + 2], "big")
            nal = data[pos + 2:pos + 2 + size]
            pos += 2 + size
            if size == 0 or len(nal) != size:
                raise H264Error("avcC record truncated")
            if nal[0] & 0x80 or nal[0] & 0x1F != want:
                raise H264Error(f"avcC record: expected NAL unit type {want}")
            out.append(nal)
        if want == NAL_SPS:
            if pos >= len(data):
                raise H264Error("avcC record truncated")
            count = data[pos]
            pos += 1
    return out


# --- scaling lists ------------------------------------------------------------------------------


def _skip_scaling_list(bits: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se(-128, 127)) % 256
        last = nxt or last


def _skip_scaling_matrix(bits: BitReader, lists: int) -> None:
    for index in range(lists):
        if bits.flag():
            _skip_scaling_list(bits, 16 if index < 6 else 64)


# --- SPS ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sps:
    sps_id: int
    profile_idc: int
    constraint_flags: int  # the whole byte after profile_idc (constraint_set0..5 + reserved)
    level_idc: int
    width: int  # frame cropping applied
    height: int
    fps: float | None  # from VUI timing info, when present and sane
    chroma_format_idc: int
    separate_colour_plane_flag: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    log2_max_frame_num: int
    pic_order_cnt_type: int
    log2_max_pic_order_cnt_lsb: int
    delta_pic_order_always_zero_flag: bool
    max_num_ref_frames: int
    frame_mbs_only_flag: bool
    mb_adaptive_frame_field_flag: bool
    pic_width_in_mbs: int
    pic_height_in_map_units: int
    sar: tuple[int, int] | None = None  # sample aspect ratio from the VUI
    max_num_reorder_frames: int | None = None  # VUI bitstream restriction; 0: no B-frames

    @property
    def codec(self) -> str:
        """RFC 6381 codec string, e.g. ``avc1.42c01e``."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"

    @property
    def frame_size_in_mbs(self) -> int:
        return self.pic_width_in_mbs * self.pic_height_in_map_units * (
            1 if self.frame_mbs_only_flag else 2)


# Table E-1, aspect_ratio_idc 1..16.
_SAR = [(1, 1), (12, 11), (10, 11), (16, 11), (40, 33), (24, 11), (20, 11), (32, 11),
        (80, 33), (18, 11), (15, 11), (64, 33), (160, 99), (4, 3), (3, 2), (2, 1)]


def parse_sps(nal: bytes) -> Sps:
    """Parse a sequence parameter set NAL unit (7.3.2.1.1 and the VUI, E.1.1).

    Raises H264Error on malformed or absurd values. A broken VUI is
    tolerated (cameras get it wrong): its fields are then left unknown."""
    rbsp = rbsp_of(nal, NAL_SPS)
    bits = BitReader(rbsp)
    profile_idc = bits.u(8)
    constraint_flags = bits.u(8)
    level_idc = bits.u(8)
    sps_id = bits.ue(31)
    chroma_format_idc = 1
    separate_colour_plane = False
    depth_luma = depth_chroma = 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue(3)
        if chroma_format_idc == 3:
            separate_colour_plane = bits.flag()
        depth_luma = bits.ue(6) + 8
        depth_chroma = bits.ue(6) + 8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.flag():  # seq_scaling_matrix_present_flag
            _skip_scaling_matrix(bits, 8 if chroma_format_idc != 3 else 12)
    log2_max_frame_num = bits.ue(12) + 4
    poc_type = bits.ue(2)
    log2_max_poc_lsb = 0
    delta_always_zero = False
    if poc_type == 0:
        log2_max_poc_lsb = bits.ue(12) + 4
    elif poc_type == 1:
        delta_always_zero = bits.flag()
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue(255)):
            bits.se()  # offset_for_ref_frame[i]
    max_num_ref_frames = bits.ue(16)
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue(MAX_SIDE // 16 - 1) + 1
    height_map_units = bits.ue(MAX_SIDE // 16 - 1) + 1
    frame_mbs_only = bits.flag()
    mbaff = False if frame_mbs_only else bits.flag()
    bits.u(1)  # direct_8x8_inference_flag
    coded_width = width_mbs * 16
    coded_height = height_map_units * 16 * (1 if frame_mbs_only else 2)
    if coded_height > MAX_SIDE:
        raise H264Error(f"picture height {coded_height} out of range")
    width, height = coded_width, coded_height
    if bits.flag():  # frame_cropping_flag
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        sub_w, sub_h = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_array_type]
        unit_x = sub_w
        unit_y = sub_h * (1 if frame_mbs_only else 2)
        left, right, top, bottom = (bits.ue(MAX_SIDE) for _ in range(4))
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise H264Error("frame cropping leaves no picture")
    fps, sar, reorder = _parse_vui(bits) if bits.flag() else (None, None, None)
    return Sps(
        sps_id=sps_id, profile_idc=profile_idc, constraint_flags=constraint_flags,
        level_idc=level_idc, width=width, height=height, fps=fps,
        chroma_format_idc=chroma_format_idc, separate_colour_plane_flag=separate_colour_plane,
        bit_depth_luma=depth_luma, bit_depth_chroma=depth_chroma,
        log2_max_frame_num=log2_max_frame_num, pic_order_cnt_type=poc_type,
        log2_max_pic_order_cnt_lsb=log2_max_poc_lsb,
        delta_pic_order_always_zero_flag=delta_always_zero, max_num_ref_frames=max_num_ref_frames,
        frame_mbs_only_flag=frame_mbs_only, mb_adaptive_frame_field_flag=mbaff,
        pic_width_in_mbs=width_mbs, pic_height_in_map_units=height_map_units,
        sar=sar, max_num_reorder_frames=reorder,
    )


def vui_sample_aspect_ratio(bits: BitReader) -> tuple[int, int] | None:
    """The VUI's aspect ratio info, the same in H.264 (E.1.1) and H.265 (E.2.1)."""
    if not bits.flag():  # aspect_ratio_info_present_flag
        return None
    idc = bits.u(8)
    if idc == 255:
        return (bits.u(16), bits.u(16))
    return _SAR[idc - 1] if 1 <= idc <= len(_SAR) else None


def skip_vui_signal(bits: BitReader) -> None:
    """The VUI's overscan, video signal type and chroma location info, the same
    in H.264 and H.265."""
    if bits.flag():  # overscan_info_present_flag
        bits.u(1)
    if bits.flag():  # video_signal_type_present_flag
        bits.u(4)  # video_format, video_full_range_flag
        if bits.flag():  # colour_description_present_flag
            bits.u(24)
    if bits.flag():  # chroma_loc_info_present_flag
        bits.ue()
        bits.ue()


def _parse_vui(bits: BitReader) -> tuple[float | None, tuple[int, int] | None, int | None]:
    fps: float | None = None
    sar: tuple[int, int] | None = None
    try:
        sar = vui_sample_aspect_ratio(bits)
        skip_vui_signal(bits)
        if bits.flag():  # timing_info_present_flag
            units_in_tick = bits.u(32)
            time_scale = bits.u(32)
            bits.u(1)  # fixed_frame_rate_flag
            if units_in_tick and time_scale:
                rate = time_scale / (2 * units_in_tick)
                fps = round(rate, 3) if 0 < rate <= 1000 else None
        nal_hrd = bits.flag()
        if nal_hrd:
            _skip_hrd(bits)
        vcl_hrd = bits.flag()
        if vcl_hrd:
            _skip_hrd(bits)
        if nal_hrd or vcl_hrd:
            bits.u(1)  # low_delay_hrd_flag
        bits.u(1)  # pic_struct_present_flag
        if not bits.flag():  # bitstream_restriction_flag
            return fps, sar, None
        bits.u(1)  # motion_vectors_over_pic_boundaries_flag
        for _ in range(4):
            bits.ue()  # max_bytes_per_pic_denom .. log2_max_mv_length_vertical
        reorder = bits.ue(16)
        bits.ue(16)  # max_dec_frame_buffering
        return fps, sar, reorder
    except H264Error:
        return fps, sar, None


def _skip_hrd(bits: BitReader) -> None:
    count = bits.ue(31) + 1
    bits.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        bits.ue()
        bits.ue()
        bits.u(1)
    bits.u(20)  # four 5-bit lengths


# --- PPS ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pps:
    pps_id: int
    sps_id: int
    entropy_coding_mode_flag: bool
    bottom_field_pic_order_in_frame_present_flag: bool
    num_slice_groups: int
    num_ref_idx_l0_default_active: int
    num_ref_idx_l1_default_active: int
    weighted_pred_flag: bool
    weighted_bipred_idc: int
    pic_init_qp: int
    chroma_qp_index_offset: int
    deblocking_filter_control_present_flag: bool
    constrained_intra_pred_flag: bool
    redundant_pic_cnt_present_flag: bool
    transform_8x8_mode_flag: bool = False
    pic_scaling_matrix_present_flag: bool = False


def parse_pps(nal: bytes, sps: Mapping[int, Sps] | None = None) -> Pps:
    """Parse a picture parameter set NAL unit (7.3.2.2).

    ``sps`` (by id) is only needed for the rare 4:4:4 stream with a PPS
    scaling matrix; without it 4:2:0 is assumed. Raises H264Error."""
    bits = BitReader(rbsp_of(nal, NAL_PPS))
    pps_id = bits.ue(255)
    sps_id = bits.ue(31)
    cabac = bits.flag()
    bottom_field_poc = bits.flag()
    groups = bits.ue(7) + 1
    if groups > 1:
        _skip_slice_groups(bits, groups)
    l0 = bits.ue(31) + 1
    l1 = bits.ue(31) + 1
    weighted_pred = bits.flag()
    weighted_bipred = bits.u(2)
    if weighted_bipred > 2:
        raise H264Error("weighted_bipred_idc out of range")
    qp = 26 + bits.se(-26 - 36, 25)  # down to -QpBdOffset for 14-bit video
    bits.se(-26 - 36, 25)  # pic_init_qs_minus26
    chroma_qp = bits.se(-12, 12)
    deblocking = bits.flag()
    constrained_intra = bits.flag()
    redundant = bits.flag()
    t8x8 = matrix = False
    if bits.more_rbsp_data():
        t8x8 = bits.flag()
        matrix = bits.flag()
        if matrix:
            ref = (sps or {}).get(sps_id)
            chroma_444 = ref is not None and ref.chroma_format_idc == 3
            _skip_scaling_matrix(bits, 6 + (6 if chroma_444 else 2) * t8x8)
        bits.se(-12, 12)  # second_chroma_qp_index_offset
    return Pps(
        pps_id=pps_id, sps_id=sps_id, entropy_coding_mode_flag=cabac,
        bottom_field_pic_order_in_frame_present_flag=bottom_field_poc,
        num_slice_groups=groups, num_ref_idx_l0_default_active=l0,
        num_ref_idx_l1_default_active=l1, weighted_pred_flag=weighted_pred,
        weighted_bipred_idc=weighted_bipred, pic_init_qp=qp, chroma_qp_index_offset=chroma_qp,
        deblocking_filter_control_present_flag=deblocking,
        constrained_intra_pred_flag=constrained_intra, redundant_pic_cnt_present_flag=redundant,
        transform_8x8_mode_flag=t8x8, pic_scaling_matrix_present_flag=matrix,
    )


def _skip_slice_groups(bits: BitReader, groups: int) -> None:
    map_type = bits.ue(6)
    if map_type == 0:
        for _ in range(groups):
            bits.ue()  # run_length_minus1
    elif map_type == 2:
        for _ in range(groups - 1):
            bits.ue()  # top_left
            bits.ue()  # bottom_right
    elif map_type in (3, 4, 5):
        bits.u(1)
        bits.ue()
    elif map_type == 6:
        units = bits.ue((MAX_SIDE // 16) ** 2 - 1) + 1
        width = (groups - 1).bit_length()
        bits.u(width * units)  # slice_group_id[i], fixed width


# --- slice header ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SliceHeader:
    first_mb_in_slice: int
    slice_type: int  # 0..9 (P, B, I, SP, SI; +5: all slices of the picture share it)
    pps_id: int
    frame_num: int
    field_pic_flag: bool
    bottom_field_flag: bool
    idr_pic_id: int | None  # None unless IDR
    pic_order_cnt_lsb: int
    delta_pic_order_cnt_bottom: int
    delta_pic_order_cnt: tuple[int, int]
    nal_ref_idc: int
    nal_unit_type: int
    colour_plane_id: int = 0
    redundant_pic_cnt: int = 0

    @property
    def idr(self) -> bool:
        return self.nal_unit_type == NAL_IDR


def slice_prefix(nal: bytes) -> tuple[BitReader, int, int, int]:
    """Reader and (first_mb_in_slice, slice_type, pps_id): the part of a slice
    header that needs no parameter set."""
    if not nal:
        raise H264Error("empty NAL unit")
    header = nal[0]
    if header & 0x80:
        raise H264Error("forbidden_zero_bit set")
    kind = header & 0x1F
    if kind not in (NAL_SLICE, NAL_DPA, NAL_IDR):
        raise H264Error(f"NAL unit type {kind} has no slice header")
    if kind == NAL_IDR and not header & 0x60:
        raise H264Error("IDR picture with nal_ref_idc 0")
    bits = BitReader(unescape_rbsp(nal[1:_SLICE_HEADER_BYTES]))
    first_mb = bits.ue()
    slice_type = bits.ue(9)
    if kind == NAL_IDR and slice_type % 5 not in (2, 4):
        raise H264Error("IDR picture with a P or B slice")
    return bits, first_mb, slice_type, bits.ue(255)


def parse_slice_header(nal: bytes, sps: Mapping[int, Sps], pps: Mapping[int, Pps]) -> SliceHeader:
    """Parse a slice header (7.3.3) up to redundant_pic_cnt: the fields that
    tell pictures apart (7.4.1.2.4). Raises H264Error (also when the PPS or
    SPS it refers to is not in the mappings)."""
    bits, first_mb, slice_type, pps_id = slice_prefix(nal)
    p = pps.get(pps_id)
    s = sps.get(p.sps_id) if p is not None else None
    if p is None or s is None:
        raise MissingParameterSet(f"slice refers to unknown PPS {pps_id}")
    header = nal[0]
    idr = header & 0x1F == NAL_IDR
    colour_plane = bits.u(2) if s.separate_colour_plane_flag else 0
    frame_num = bits.u(s.log2_max_frame_num)
    if idr and frame_num:
        raise H264Error("IDR picture with frame_num != 0")
    field = bottom = False
    if not s.frame_mbs_only_flag:
        field = bits.flag()
        if field:
            bottom = bits.flag()
    mbs = s.frame_size_in_mbs >> field
    mbaff = s.mb_adaptive_frame_field_flag and not field
    if first_mb * (1 + mbaff) >= mbs:
        raise H264Error(f"first_mb_in_slice {first_mb} outside the picture")
    idr_pic_id = bits.ue(65535) if idr else None
    poc_lsb = delta_bottom = delta0 = delta1 = 0
    both_fields = p.bottom_field_pic_order_in_frame_present_flag and not field
    if s.pic_order_cnt_type == 0:
        poc_lsb = bits.u(s.log2_max_pic_order_cnt_lsb)
        if both_fields:
            delta_bottom = bits.se()
    elif s.pic_order_cnt_type == 1 and not s.delta_pic_order_always_zero_flag:
        delta0 = bits.se()
        if both_fields:
            delta1 = bits.se()
    redundant = bits.ue(127) if p.redundant_pic_cnt_present_flag else 0
    return SliceHeader(
        first_mb_in_slice=first_mb, slice_type=slice_type, pps_id=pps_id, frame_num=frame_num,
        field_pic_flag=field, bottom_field_flag=bottom, idr_pic_id=idr_pic_id,
        pic_order_cnt_lsb=poc_lsb, delta_pic_order_cnt_bottom=delta_bottom,
        delta_pic_order_cnt=(delta0, delta1), nal_ref_idc=(header >> 5) & 3,
        nal_unit_type=header & 0x1F, colour_plane_id=colour_plane, redundant_pic_cnt=redundant,
    )
