"""H.265 parameter sets and slice segment headers: what a relay needs of them
(picture size, the codec string, where each slice segment sits), never the
slice data. Pure.

References are to ITU-T H.265 (V8, 08/2021), clause numbers in comments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cxrelay.h264.bits import BitReader, unescape_rbsp
from cxrelay.h264.syntax import skip_vui_signal, vui_sample_aspect_ratio
from cxrelay.h265.nal import (
    IRAP,
    NAL_IDR_N_LP,
    NAL_IDR_W_RADL,
    NAL_PPS,
    NAL_SPS,
    NAL_VPS,
    SLICES,
    H265Error,
    check_header,
)

__all__ = [
    "MAX_SIDE",
    "Pps",
    "ProfileTierLevel",
    "SliceSegmentHeader",
    "Sps",
    "Vps",
    "parse_pps",
    "parse_slice_segment_header",
    "parse_sps",
    "parse_vps",
    "slice_pps_id",
]

# Largest picture side: level 6.2 allows sqrt(8 * MaxLumaPs) = 16888 (A.4.1).
MAX_SIDE = 16888
# Escaped bytes enough for a slice segment header up to slice_pic_order_cnt_lsb:
# at most about 16 bytes of RBSP, with room for emulation prevention.
_SLICE_HEADER_BYTES = 48
# More short-term reference picture sets or entries than this is garbage
# (7.4.3.2.1: at most 64 sets; a set holds at most sps_max_dec_pic_buffering).
_MAX_RPS = 64
_MAX_RPS_PICS = 16


class _Bits(BitReader):
    """The shared bit reader, raising H265Error."""

    __slots__ = ()
    error = H265Error


def _rbsp(nal: bytes, expect: int) -> bytes:
    kind = check_header(nal)
    if kind != expect:
        raise H265Error(f"NAL unit type {kind}, expected {expect}")
    if nal[0] & 1 or nal[1] >> 3:
        raise H265Error("parameter set of a layer other than the base layer")
    return unescape_rbsp(nal[2:])


# --- profile, tier and level (7.3.3) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileTierLevel:
    """The general profile, tier and level: what a decoder must support."""

    profile_space: int
    tier_flag: bool  # True: High tier
    profile_idc: int
    compatibility_flags: int  # 32 bits, general_profile_compatibility_flag[j] at bit 31 - j
    constraint_flags: int  # 48 bits from general_progressive_source_flag (the MSB) on
    level_idc: int  # 30 times the level number

    def codec(self, sample_entry: str = "hvc1") -> str:
        """RFC 6381 codec string as ISO/IEC 14496-15 Annex E spells it, e.g.
        ``hvc1.1.6.L93.B0``: profile space (none, A, B, C) and profile, the
        compatibility flags in reverse bit order (hex), tier and level, then
        the constraint bytes in hex with trailing zero bytes left out."""
        space = "" if not self.profile_space else "ABC"[self.profile_space - 1]
        compatibility = int(f"{self.compatibility_flags:032b}"[::-1], 2)
        constraints = self.constraint_flags.to_bytes(6, "big").rstrip(b"\x00")
        parts = [
            sample_entry,
            f"{space}{self.profile_idc}",
            f"{compatibility:X}",
            f"{'H' if self.tier_flag else 'L'}{self.level_idc}",
            *(f"{byte:02X}" for byte in constraints),
        ]
        return ".".join(parts)

    def to_bytes(self) -> bytes:
        """The 12 bytes an hvcC record starts its profile, tier and level with."""
        return (bytes([self.profile_space << 6 | self.tier_flag << 5 | self.profile_idc])
                + self.compatibility_flags.to_bytes(4, "big")
                + self.constraint_flags.to_bytes(6, "big")
                + bytes([self.level_idc]))


def _profile_tier_level(bits: _Bits, max_sub_layers_minus1: int) -> ProfileTierLevel:
    space = bits.u(2)
    tier = bits.flag()
    profile_idc = bits.u(5)
    compatibility = bits.u(32)
    constraints = bits.u(48)
    level_idc = bits.u(8)
    present = [(bits.flag(), bits.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1:
        bits.u(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.u(88 * profile_present + 8 * level_present)
    return ProfileTierLevel(space, tier, profile_idc, compatibility, constraints, level_idc)


# --- VPS (7.3.2.1) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vps:
    vps_id: int
    max_sub_layers: int
    ptl: ProfileTierLevel


def parse_vps(nal: bytes) -> Vps:
    """Parse a video parameter set up to its profile, tier and level. Raises H265Error."""
    bits = _Bits(_rbsp(nal, NAL_VPS))
    vps_id = bits.u(4)
    bits.u(8)  # base layer internal/available flags, vps_max_layers_minus1
    max_sub_layers_minus1 = bits.u(3)
    if max_sub_layers_minus1 > 6:
        raise H265Error("vps_max_sub_layers_minus1 out of range")
    bits.u(1)  # vps_temporal_id_nesting_flag
    if bits.u(16) != 0xFFFF:
        raise H265Error("vps_reserved_0xffff_16bits is not 0xffff")
    return Vps(vps_id, max_sub_layers_minus1 + 1, _profile_tier_level(bits, max_sub_layers_minus1))


# --- SPS (7.3.2.2) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sps:
    sps_id: int
    vps_id: int
    max_sub_layers: int
    temporal_id_nesting_flag: bool
    ptl: ProfileTierLevel
    chroma_format_idc: int
    separate_colour_plane_flag: bool
    width: int  # conformance window applied
    height: int
    coded_width: int  # pic_width_in_luma_samples
    coded_height: int
    bit_depth_luma: int
    bit_depth_chroma: int
    log2_max_pic_order_cnt_lsb: int
    max_num_reorder_pics: int  # of the highest sub-layer; 0: no B-frame reordering
    log2_ctb_size: int
    pic_size_in_ctbs: int
    fps: float | None = None  # from VUI timing info, when present and sane
    sar: tuple[int, int] | None = None  # sample aspect ratio from the VUI

    @property
    def codec(self) -> str:
        """RFC 6381 codec string with the ``hvc1`` sample entry, e.g. ``hvc1.1.6.L93.B0``."""
        return self.ptl.codec("hvc1")

    @property
    def profile_idc(self) -> int:
        return self.ptl.profile_idc

    @property
    def level_idc(self) -> int:
        return self.ptl.level_idc

    @property
    def slice_address_bits(self) -> int:
        """Length of slice_segment_address: Ceil(Log2(PicSizeInCtbsY))."""
        return (self.pic_size_in_ctbs - 1).bit_length()


def parse_sps(nal: bytes) -> Sps:
    """Parse a sequence parameter set up to the VUI's timing info.

    Raises H265Error on malformed or absurd values. A broken VUI is tolerated
    (cameras get it wrong): its fields are then left unknown."""
    bits = _Bits(_rbsp(nal, NAL_SPS))
    vps_id = bits.u(4)
    max_sub_layers_minus1 = bits.u(3)
    if max_sub_layers_minus1 > 6:
        raise H265Error("sps_max_sub_layers_minus1 out of range")
    nesting = bits.flag()
    ptl = _profile_tier_level(bits, max_sub_layers_minus1)
    sps_id = bits.ue(15)
    chroma_format_idc = bits.ue(3)
    separate_planes = bits.flag() if chroma_format_idc == 3 else False
    coded_width = bits.ue(MAX_SIDE)
    coded_height = bits.ue(MAX_SIDE)
    if not coded_width or not coded_height:
        raise H265Error("picture size is zero")
    crop = (0, 0, 0, 0)
    if bits.flag():  # conformance_window_flag
        crop = (bits.ue(MAX_SIDE), bits.ue(MAX_SIDE), bits.ue(MAX_SIDE), bits.ue(MAX_SIDE))
    depth_luma = bits.ue(8) + 8
    depth_chroma = bits.ue(8) + 8
    log2_max_poc_lsb = bits.ue(12) + 4
    reorder = 0
    first = 0 if bits.flag() else max_sub_layers_minus1  # sub_layer_ordering_info_present
    for _ in range(first, max_sub_layers_minus1 + 1):
        bits.ue(15)  # sps_max_dec_pic_buffering_minus1
        reorder = bits.ue(15)
        bits.ue()  # sps_max_latency_increase_plus1
    log2_min_cb = bits.ue(3) + 3
    log2_ctb = log2_min_cb + bits.ue(3)
    if log2_ctb > 6:
        raise H265Error(f"coding tree block of 2^{log2_ctb} samples")
    if coded_width % (1 << log2_min_cb) or coded_height % (1 << log2_min_cb):
        raise H265Error("picture size is not a multiple of the minimum coding block")
    # SubWidthC, SubHeightC (Table 6-1): the conformance window counts in chroma samples.
    sub_w, sub_h = (1, 1) if separate_planes else ((1, 1), (2, 2), (2, 1), (1, 1))[
        chroma_format_idc]
    left, right, top, bottom = crop
    width = coded_width - sub_w * (left + right)
    height = coded_height - sub_h * (top + bottom)
    if width <= 0 or height <= 0:
        raise H265Error("conformance window leaves no picture")
    ctb = 1 << log2_ctb
    ctbs = -(-coded_width // ctb) * -(-coded_height // ctb)
    fps, sar = _after_block_sizes(bits, chroma_format_idc, log2_max_poc_lsb)
    return Sps(
        sps_id=sps_id, vps_id=vps_id, max_sub_layers=max_sub_layers_minus1 + 1,
        temporal_id_nesting_flag=nesting, ptl=ptl, chroma_format_idc=chroma_format_idc,
        separate_colour_plane_flag=separate_planes, width=width, height=height,
        coded_width=coded_width, coded_height=coded_height, bit_depth_luma=depth_luma,
        bit_depth_chroma=depth_chroma, log2_max_pic_order_cnt_lsb=log2_max_poc_lsb,
        max_num_reorder_pics=reorder, log2_ctb_size=log2_ctb, pic_size_in_ctbs=ctbs,
        fps=fps, sar=sar,
    )


def _after_block_sizes(bits: _Bits, chroma_format_idc: int, log2_max_poc_lsb: int
                       ) -> tuple[float | None, tuple[int, int] | None]:
    """The rest of the SPS up to the VUI's timing info: (fps, sar)."""
    bits.ue(3)  # log2_min_luma_transform_block_size_minus2
    bits.ue(3)  # log2_diff_max_min_luma_transform_block_size
    bits.ue(4)  # max_transform_hierarchy_depth_inter
    bits.ue(4)  # max_transform_hierarchy_depth_intra
    if bits.flag() and bits.flag():  # scaling_list_enabled, sps_scaling_list_data_present
        _skip_scaling_list_data(bits)
    bits.u(2)  # amp_enabled_flag, sample_adaptive_offset_enabled_flag
    if bits.flag():  # pcm_enabled_flag
        bits.u(8)  # pcm sample bit depths
        bits.ue(2)  # log2_min_pcm_luma_coding_block_size_minus3
        bits.ue(2)  # log2_diff_max_min_pcm_luma_coding_block_size
        bits.u(1)  # pcm_loop_filter_disabled_flag
    _skip_short_term_ref_pic_sets(bits, bits.ue(_MAX_RPS))
    if bits.flag():  # long_term_ref_pics_present_flag
        for _ in range(bits.ue(32)):
            bits.u(log2_max_poc_lsb + 1)  # lt_ref_pic_poc_lsb_sps, used_by_curr_pic_lt_sps_flag
    bits.u(2)  # sps_temporal_mvp_enabled_flag, strong_intra_smoothing_enabled_flag
    if not bits.flag():  # vui_parameters_present_flag
        return None, None
    return _parse_vui(bits)


def _skip_scaling_list_data(bits: _Bits) -> None:
    """scaling_list_data() (7.3.4)."""
    for size_id in range(4):
        step = 3 if size_id == 3 else 1
        for matrix_id in range(0, 6, step):
            if not bits.flag():  # scaling_list_pred_mode_flag
                bits.ue(matrix_id // step)  # scaling_list_pred_matrix_id_delta
                continue
            if size_id > 1:
                bits.se(-7, 247)  # scaling_list_dc_coef_minus8
            for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                bits.se(-128, 127)  # scaling_list_delta_coef


def _skip_short_term_ref_pic_sets(bits: _Bits, count: int) -> None:
    """st_ref_pic_set(i) for i < count (7.3.7). Inter-set prediction needs the
    delta POCs of the set before, so they are derived as in (7-61) and (7-62)."""
    sets: list[tuple[list[int], list[int]]] = []  # (DeltaPocS0, DeltaPocS1) of each set
    for index in range(count):
        if index and bits.flag():  # inter_ref_pic_set_prediction_flag
            s0_ref, s1_ref = sets[index - 1]  # delta_idx_minus1 is 0 in an SPS
            sign = bits.u(1)
            delta = (bits.ue(0x7FFF) + 1) * (-1 if sign else 1)
            used = []
            for _ in range(len(s0_ref) + len(s1_ref) + 1):
                used.append(bits.flag() or bits.flag())  # used_by_curr_pic, use_delta
            refs = [*s0_ref, *s1_ref, 0]  # the reference set itself is the last entry
            pocs = [poc + delta for poc, use in zip(refs, used, strict=True) if use]
            s0 = sorted((p for p in pocs if p < 0), reverse=True)
            s1 = sorted(p for p in pocs if p > 0)
        else:
            negatives = bits.ue(_MAX_RPS_PICS)
            positives = bits.ue(_MAX_RPS_PICS)
            s0, s1, poc = [], [], 0
            for _ in range(negatives):
                poc -= bits.ue(0x7FFF) + 1
                bits.u(1)  # used_by_curr_pic_s0_flag
                s0.append(poc)
            poc = 0
            for _ in range(positives):
                poc += bits.ue(0x7FFF) + 1
                bits.u(1)  # used_by_curr_pic_s1_flag
                s1.append(poc)
        if len(s0) + len(s1) > _MAX_RPS_PICS:
            raise H265Error("short-term reference picture set too large")
        sets.append((s0, s1))


def _parse_vui(bits: _Bits) -> tuple[float | None, tuple[int, int] | None]:
    """vui_parameters() (E.2.1) up to the timing info."""
    fps: float | None = None
    sar: tuple[int, int] | None = None
    try:
        sar = vui_sample_aspect_ratio(bits)
        skip_vui_signal(bits)
        bits.u(3)  # neutral_chroma_indication, field_seq, frame_field_info_present
        if bits.flag():  # default_display_window_flag
            for _ in range(4):
                bits.ue()
        if bits.flag():  # vui_timing_info_present_flag
            units_in_tick = bits.u(32)
            time_scale = bits.u(32)
            if units_in_tick and time_scale:
                rate = time_scale / units_in_tick
                fps = round(rate, 3) if 0 < rate <= 1000 else None
    except H265Error:
        pass
    return fps, sar


# --- PPS (7.3.2.3) --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pps:
    pps_id: int
    sps_id: int
    dependent_slice_segments_enabled_flag: bool
    output_flag_present_flag: bool
    num_extra_slice_header_bits: int
    tiles_enabled_flag: bool
    entropy_coding_sync_enabled_flag: bool


def parse_pps(nal: bytes) -> Pps:
    """Parse a picture parameter set up to its tile and wavefront flags. Raises H265Error."""
    bits = _Bits(_rbsp(nal, NAL_PPS))
    pps_id = bits.ue(63)
    sps_id = bits.ue(15)
    dependent = bits.flag()
    output_flag = bits.flag()
    extra_bits = bits.u(3)
    bits.u(2)  # sign_data_hiding_enabled_flag, cabac_init_present_flag
    bits.ue(14)  # num_ref_idx_l0_default_active_minus1
    bits.ue(14)  # num_ref_idx_l1_default_active_minus1
    bits.se(-26 - 48, 25)  # init_qp_minus26, down to -QpBdOffsetY of 16-bit video
    bits.u(2)  # constrained_intra_pred_flag, transform_skip_enabled_flag
    if bits.flag():  # cu_qp_delta_enabled_flag
        bits.ue(3)  # diff_cu_qp_delta_depth
    bits.se(-12, 12)  # pps_cb_qp_offset
    bits.se(-12, 12)  # pps_cr_qp_offset
    bits.u(4)  # slice chroma QP offsets present, weighted pred, weighted bipred, transquant bypass
    tiles = bits.flag()
    wavefronts = bits.flag()
    return Pps(pps_id, sps_id, dependent, output_flag, extra_bits, tiles, wavefronts)


# --- slice segment header (7.3.6.1) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SliceSegmentHeader:
    nal_unit_type: int
    first_slice_segment_in_pic_flag: bool
    pps_id: int
    dependent_slice_segment_flag: bool
    slice_segment_address: int  # in coding tree blocks, raster scan
    # None in a dependent slice segment (it takes them from the slice it continues):
    slice_type: int | None  # 0 B, 1 P, 2 I
    colour_plane_id: int | None
    pic_order_cnt_lsb: int | None  # 0 in IDR pictures

    @property
    def irap(self) -> bool:
        return self.nal_unit_type in IRAP


def _slice_prefix(nal: bytes) -> tuple[_Bits, int, bool, int]:
    """Reader after slice_pic_parameter_set_id, nal_unit_type,
    first_slice_segment_in_pic_flag and the PPS id: the part that needs no
    parameter set."""
    kind = check_header(nal)
    if kind not in SLICES:
        raise H265Error(f"NAL unit type {kind} has no slice segment header")
    bits = _Bits(unescape_rbsp(nal[2:_SLICE_HEADER_BYTES]))
    first = bits.flag()
    if kind in IRAP:
        bits.u(1)  # no_output_of_prior_pics_flag
    return bits, kind, first, bits.ue(63)


def slice_pps_id(nal: bytes) -> tuple[bool, int]:
    """(first_slice_segment_in_pic_flag, slice_pic_parameter_set_id) of a
    slice segment, without its parameter sets. Raises H265Error."""
    _, _, first, pps_id = _slice_prefix(nal)
    return first, pps_id


class MissingParameterSet(H265Error):
    """A slice segment refers to a PPS or SPS that has not been seen."""


def parse_slice_segment_header(nal: bytes, sps: Mapping[int, Sps], pps: Mapping[int, Pps]
                               ) -> SliceSegmentHeader:
    """Parse a slice segment header up to slice_pic_order_cnt_lsb: where the
    segment sits and which picture it belongs to. Raises H265Error
    (MissingParameterSet when its PPS or SPS is not in the mappings)."""
    bits, kind, first, pps_id = _slice_prefix(nal)
    p = pps.get(pps_id)
    s = sps.get(p.sps_id) if p is not None else None
    if p is None or s is None:
        raise MissingParameterSet(f"slice segment refers to unknown PPS {pps_id}")
    dependent = False
    address = 0
    if not first:
        if p.dependent_slice_segments_enabled_flag:
            dependent = bits.flag()
        address = bits.u(s.slice_address_bits)
        if not 0 < address < s.pic_size_in_ctbs:
            raise H265Error(f"slice_segment_address {address} outside the picture")
    if dependent:
        return SliceSegmentHeader(kind, first, pps_id, True, address, None, None, None)
    bits.u(p.num_extra_slice_header_bits)  # slice_reserved_flag[i]
    slice_type = bits.ue(2)
    if kind in IRAP and slice_type != 2 and s.ptl.profile_idc <= 4:
        # Screen content coding (profile 9) may predict an IRAP picture from
        # itself; Main, Main 10, Main Still Picture and RExt never.
        raise H265Error("IRAP picture with a P or B slice")
    if p.output_flag_present_flag:
        bits.u(1)  # pic_output_flag
    plane = bits.u(2) if s.separate_colour_plane_flag else 0
    poc_lsb = 0
    if kind not in (NAL_IDR_W_RADL, NAL_IDR_N_LP):
        poc_lsb = bits.u(s.log2_max_pic_order_cnt_lsb)
    return SliceSegmentHeader(kind, first, pps_id, False, address, slice_type, plane, poc_lsb)
