"""H.264 bitstream handling: NAL units, parameter sets, slice headers, and
grouping NAL units into access units. Pure: stdlib only, no I/O.

This is the hot path (every NAL unit of every camera passes through it), so it
never walks slice payloads byte by byte: start codes are found with
``bytes.find`` and only headers are parsed.

References are to ITU-T H.264 (08/2021).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "NAL_AUD",
    "NAL_AUX_SLICE",
    "NAL_DPA",
    "NAL_DPB",
    "NAL_DPC",
    "NAL_END_SEQ",
    "NAL_END_STREAM",
    "NAL_FILLER",
    "NAL_IDR",
    "NAL_PPS",
    "NAL_PREFIX",
    "NAL_SEI",
    "NAL_SLICE",
    "NAL_SLICE_EXT",
    "NAL_SPS",
    "NAL_SPS_EXT",
    "NAL_SUBSET_SPS",
    "AccessUnit",
    "AccessUnitAssembler",
    "H264Error",
    "Pps",
    "SliceHeader",
    "Sps",
    "nal_type",
    "parse_extradata",
    "parse_pps",
    "parse_slice_header",
    "parse_sps",
    "split_annexb",
    "to_annexb",
    "unescape_rbsp",
]

NAL_SLICE = 1  # coded slice of a non-IDR picture
NAL_DPA = 2  # slice data partition A (carries the slice header)
NAL_DPB = 3
NAL_DPC = 4
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_SEQ = 10
NAL_END_STREAM = 11
NAL_FILLER = 12
NAL_SPS_EXT = 13
NAL_PREFIX = 14
NAL_SUBSET_SPS = 15
NAL_AUX_SLICE = 19
NAL_SLICE_EXT = 20

START_CODE = b"\x00\x00\x00\x01"
_SC3 = b"\x00\x00\x01"
_EPB = b"\x00\x00\x03"

# Largest picture side accepted; anything bigger is a corrupt SPS, not a camera.
MAX_SIDE = 8192
# Enough escaped bytes for the slice header fields up to redundant_pic_cnt in
# the worst case (about 43 bytes of RBSP), even with emulation prevention.
_SLICE_HEADER_BYTES = 80

# Bounds on what a broken stream can make the assembler hold: NAL units in one
# picture (cameras that slice per macroblock row stay far below), and NAL units
# waiting for a picture to join.
_MAX_UNIT_NALS = 4096
_MAX_TAIL_NALS = 256

# Profiles whose SPS carries chroma_format_idc, bit depths and scaling lists (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_VCL = frozenset({NAL_SLICE, NAL_DPA, NAL_DPB, NAL_DPC, NAL_IDR})
# After a VCL NAL unit, the first of these starts a new access unit (7.4.1.2.3).
_AU_STARTERS = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_SPS_EXT, 14, 15, 16, 17, 18})


class H264Error(ValueError):
    """Malformed or unsupported H.264 data."""


class _MissingParameterSet(H264Error):
    """A slice refers to a PPS or SPS that has not been seen."""


# --- NAL units ------------------------------------------------------------------------------------


def nal_type(nal: bytes) -> int:
    """nal_unit_type of a NAL unit (without start code)."""
    if not nal:
        raise H264Error("empty NAL unit")
    return nal[0] & 0x1F


def _split(data: bytes) -> tuple[list[bytes], bool]:
    """NAL units of an Annex B buffer, and whether non-zero bytes came before
    the first start code (bytes that belong to no NAL unit we can see)."""
    first = data.find(_SC3)
    if first < 0:
        return [], data.count(0) != len(data)
    stray = data.count(0, 0, first) != first
    nals: list[bytes] = []
    start = first + 3
    size = len(data)
    while start <= size:
        nxt = data.find(_SC3, start)
        end = size if nxt < 0 else nxt
        nal = data[start:end]
        # A NAL unit never ends in a zero byte: trailing zeros are the next
        # 4-byte start code's first byte, or trailing_zero_8bits.
        if nal[-1:] == b"\x00":
            nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
        if nxt < 0:
            break
        start = nxt + 3
    return nals, stray


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units (without start codes) of an Annex B buffer.

    Takes 3- and 4-byte start codes, ignores leading and trailing zero bytes
    and anything before the first start code. Never raises."""
    return _split(bytes(data))[0]


def to_annexb(nals: Iterable[bytes]) -> bytes:
    """NAL units joined with 4-byte start codes."""
    items = list(nals)
    return START_CODE + START_CODE.join(items) if items else b""


def unescape_rbsp(data: bytes) -> bytes:
    """Remove emulation-prevention bytes (the 03 of every 00 00 03)."""
    pos = data.find(_EPB)
    if pos < 0:
        return bytes(data)
    out = bytearray()
    start = 0
    while pos >= 0:
        out += data[start:pos + 2]
        start = pos + 3
        pos = data.find(_EPB, start)
    out += data[start:]
    return bytes(out)


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
    nals, stray = _split(data)
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


# --- bit reading ----------------------------------------------------------------------------------


class _Bits:
    """MSB-first reader over an RBSP, holding it as one Python int (headers
    are short, so this beats indexing bytes)."""

    __slots__ = ("pos", "size", "value")

    def __init__(self, rbsp: bytes) -> None:
        self.value = int.from_bytes(rbsp, "big")
        self.size = len(rbsp) * 8
        self.pos = 0

    def u(self, bits: int) -> int:
        end = self.pos + bits
        if end > self.size:
            raise H264Error("truncated")
        self.pos = end
        return (self.value >> (self.size - end)) & ((1 << bits) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self, limit: int = 0xFFFFFFFE) -> int:
        remaining = self.size - self.pos
        rest = self.value & ((1 << remaining) - 1)
        if rest == 0:
            raise H264Error("truncated")
        zeros = remaining - rest.bit_length()
        if zeros > 31:
            raise H264Error("Exp-Golomb code too long")
        width = 2 * zeros + 1
        if width > remaining:
            raise H264Error("truncated")
        self.pos += width
        value = (rest >> (remaining - width)) - 1
        if value > limit:
            raise H264Error(f"value {value} out of range")
        return value

    def se(self, low: int = -(2**31), high: int = 2**31 - 1) -> int:
        code = self.ue()
        value = (code + 1) // 2 if code & 1 else -(code // 2)
        if not low <= value <= high:
            raise H264Error(f"value {value} out of range")
        return value

    def more_rbsp_data(self) -> bool:
        """More syntax before rbsp_trailing_bits (7.2)."""
        value = self.value & ((1 << (self.size - self.pos)) - 1)
        if value == 0:
            return False
        stop_bit = (value & -value).bit_length() - 1  # from the LSB end
        return self.size - self.pos - 1 > stop_bit


def _rbsp(nal: bytes, expect: int) -> bytes:
    if not nal:
        raise H264Error("empty NAL unit")
    if nal[0] & 0x80:
        raise H264Error("forbidden_zero_bit set")
    if nal[0] & 0x1F != expect:
        raise H264Error(f"NAL unit type {nal[0] & 0x1F}, expected {expect}")
    return unescape_rbsp(nal[1:])


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se(-128, 127)) % 256
        last = nxt or last


def _skip_scaling_matrix(bits: _Bits, lists: int) -> None:
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
    rbsp = _rbsp(nal, NAL_SPS)
    bits = _Bits(rbsp)
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


def _parse_vui(bits: _Bits) -> tuple[float | None, tuple[int, int] | None, int | None]:
    fps: float | None = None
    sar: tuple[int, int] | None = None
    try:
        if bits.flag():  # aspect_ratio_info_present_flag
            idc = bits.u(8)
            if idc == 255:
                sar = (bits.u(16), bits.u(16))
            elif 1 <= idc <= len(_SAR):
                sar = _SAR[idc - 1]
        if bits.flag():  # overscan_info_present_flag
            bits.u(1)
        if bits.flag():  # video_signal_type_present_flag
            bits.u(4)  # video_format, video_full_range_flag
            if bits.flag():  # colour_description_present_flag
                bits.u(24)
        if bits.flag():  # chroma_loc_info_present_flag
            bits.ue()
            bits.ue()
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


def _skip_hrd(bits: _Bits) -> None:
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
    bits = _Bits(_rbsp(nal, NAL_PPS))
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


def _skip_slice_groups(bits: _Bits, groups: int) -> None:
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


def _slice_prefix(nal: bytes) -> tuple[_Bits, int, int, int]:
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
    bits = _Bits(unescape_rbsp(nal[1:_SLICE_HEADER_BYTES]))
    first_mb = bits.ue()
    slice_type = bits.ue(9)
    if kind == NAL_IDR and slice_type % 5 not in (2, 4):
        raise H264Error("IDR picture with a P or B slice")
    return bits, first_mb, slice_type, bits.ue(255)


def parse_slice_header(nal: bytes, sps: Mapping[int, Sps], pps: Mapping[int, Pps]) -> SliceHeader:
    """Parse a slice header (7.3.3) up to redundant_pic_cnt: the fields that
    tell pictures apart (7.4.1.2.4). Raises H264Error (also when the PPS or
    SPS it refers to is not in the mappings)."""
    bits, first_mb, slice_type, pps_id = _slice_prefix(nal)
    p = pps.get(pps_id)
    s = sps.get(p.sps_id) if p is not None else None
    if p is None or s is None:
        raise _MissingParameterSet(f"slice refers to unknown PPS {pps_id}")
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


# --- access units ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessUnit:
    data: bytes  # the whole picture, Annex B with 4-byte start codes, ready to send
    pts_us: int  # presentation timestamp, µs (as pushed)
    ingest_us: int  # wall clock (µs) of the push that delivered its last NAL unit
    keyframe: bool  # holds an IDR slice; then data always holds SPS and PPS
    sps: Sps | None  # the SPS active for its slices (None only if unknown)
    discontinuity: bool  # units were dropped (partial/corrupt) since the previous one emitted
    slices: int  # number of VCL NAL units


class _Slice:
    """What the assembler keeps of a slice header."""

    __slots__ = ("colour_plane", "first_mb", "key", "redundant")

    def __init__(self, first_mb: int, key: tuple[object, ...], colour_plane: int = 0,
                 redundant: bool = False) -> None:
        self.first_mb = first_mb
        # Equal keys <=> same primary coded picture (7.4.1.2.4), first_mb aside.
        self.key = key
        self.colour_plane = colour_plane
        self.redundant = redundant

    def continues(self, previous: _Slice) -> bool:
        """This slice belongs to the picture ``previous`` belongs to."""
        if self.redundant:
            return True
        if self.first_mb == 0 and self.colour_plane == 0:
            return False
        return self.key == previous.key


class _Picture:
    """The access unit being assembled."""

    __slots__ = (
        "corrupt",
        "first_mbs",
        "headless",
        "idr",
        "ingest",
        "last",
        "nals",
        "needs",
        "present",
        "pts",
        "slices",
        "sps",
        "unknown_params",
    )

    def __init__(self, pts: int, ingest: int, lead: list[bytes], present: set[tuple[int, int]],
                 corrupt: bool) -> None:
        self.nals = lead
        self.pts = pts
        self.ingest = ingest
        self.first_mbs: list[int] = []  # of the primary slices, in arrival order
        self.last: _Slice | None = None
        self.slices = 0
        self.idr = False
        self.sps: Sps | None = None
        self.corrupt = corrupt
        self.headless = False  # its first VCL NAL unit had no slice header
        self.unknown_params = False  # a slice refers to a PPS/SPS never seen
        # Parameter sets an IDR picture needs, as they were when its slices came,
        # keyed (nal type, id); and those it carries before its first slice.
        self.needs: dict[tuple[int, int], bytes] = {}
        self.present = present


class AccessUnitAssembler:
    """Groups NAL units into access units (7.4.1.2.3), one whole picture each.

    Feed it Annex B in arrival (decode) order: whole NAL units, one at a time,
    a few (STAP-A), or whole access units. A unit is complete when the next
    one starts (AUD, new timestamp, SPS/PPS/SEI then a slice of a new picture,
    or a slice of a new picture), when ``flush()`` is called, or, once the
    slice layout of the stream is known, as soon as its last slice arrives.

    Driving it from a live source: after each push, if ``pending and not
    slice_count_known``, arm an idle timer that calls ``flush()``; it must
    be longer than the gap between two slices of one picture, or pictures
    get cut (the cut-off slices are then dropped and counted). Whole-unit
    sources are driven the same way: FFmpeg's parser can cut one picture in
    two packets, and this rejoins them.

    ``push`` and ``flush`` never raise: bad input is dropped and counted, and
    the next unit out carries ``discontinuity``. The only edit to the NAL
    units is SPS/PPS put in front of an IDR unit that lacks them.
    """

    def __init__(self, extradata: bytes = b"") -> None:
        self._sps: dict[int, Sps] = {}
        self._pps: dict[int, Pps] = {}
        self._sps_nal: dict[int, bytes] = {}
        self._pps_nal: dict[int, bytes] = {}
        self._cur: _Picture | None = None
        # NAL units not yet in a picture: before its first slice, or after the
        # current picture's last slice while it is unclear whether they end
        # it (SPS/PPS/SEI with the same timestamp: the next slice decides).
        self._tail: list[bytes] = []
        self._tail_present: set[tuple[int, int]] = set()
        self._tail_corrupt = False
        self._layout: tuple[int, ...] | None = None  # first_mb of each slice, once confirmed
        self._last_layout: tuple[int, ...] | None = None
        # A unit with fewer slices than the layout: lost slices, or the camera
        # now sends fewer. Held until the next unit tells which (same slices: emit both).
        self._held: _Picture | None = None
        # The unit just emitted before the next one started: (pts, last slice).
        self._prev: tuple[int, _Slice | None] | None = None
        self._discontinuity = False
        self.units = 0
        self.dropped_partial = 0
        self.dropped_corrupt = 0
        self.dropped_no_parameter_sets = 0  # IDR units whose SPS/PPS were never seen
        self.injected_parameter_sets = 0  # IDR units that got SPS/PPS put in front
        self.internal_errors = 0  # bugs caught to keep the camera going; should stay 0
        # Why the constructor's extradata was ignored (in-band SPS/PPS may still come).
        self.extradata_error: str | None = None
        if extradata:
            try:
                self.set_extradata(extradata)
            except H264Error as exc:
                self.extradata_error = str(exc)

    # --- public -----------------------------------------------------------------------------------

    def set_extradata(self, extradata: bytes) -> None:
        """Adopt the SPS/PPS of the SDP or container (avcC or Annex B).

        Raises H264Error if any of it is malformed; nothing is adopted then,
        and in-band parameter sets still work. (The constructor doesn't
        raise: it notes the error in ``extradata_error``.)"""
        nals = parse_extradata(extradata)
        sps = dict(self._sps)
        parsed: list[tuple[bytes, Sps | Pps]] = []
        for nal in sorted(nals, key=lambda n: n[0] & 0x1F):  # SPS before PPS
            if nal[0] & 0x1F == NAL_SPS:
                s = parse_sps(nal)
                sps[s.sps_id] = s
                parsed.append((nal, s))
            else:
                parsed.append((nal, parse_pps(nal, sps)))
        for nal, item in parsed:
            self._adopt(nal, item)

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> list[AccessUnit]:
        """Take Annex B data (one or more NAL units, or a whole access unit);
        return the access units it completes, in decode order."""
        out: list[AccessUnit] = []
        try:
            nals, stray = _split(bytes(data))
            if stray:
                self._junk(pts_us, out)
            for nal in nals:
                self._nal(nal, pts_us, ingest_us, out)
        except Exception:  # a bug here must not take a camera down
            self._internal_error()
        return out

    def flush(self) -> list[AccessUnit]:
        """Emit the unit being assembled now (idle timer, whole-unit source, EOF)."""
        out: list[AccessUnit] = []
        try:
            self._close(out, "flush")
        except Exception:  # as in push()
            self._internal_error()
        return out

    @property
    def pending(self) -> bool:
        """A unit with at least one slice is being assembled."""
        return self._cur is not None

    @property
    def slice_count_known(self) -> bool:
        """The slice layout is known and the pending unit follows it, so push()
        will emit the unit when its last slice arrives: no idle timer needed."""
        layout = self._layout
        if layout is None:
            return False
        cur = self._cur
        if cur is None:
            return True
        n = len(cur.first_mbs)
        return 0 < n < len(layout) and tuple(cur.first_mbs) == layout[:n]

    @property
    def layout(self) -> tuple[int, ...] | None:
        """The learned slice layout: first_mb_in_slice of each slice of a picture."""
        return self._layout

    def reset(self) -> None:
        """Forget the stream (e.g. reconnect): drop the partial unit and the
        learned layout. Parameter sets are kept."""
        if self._cur is not None:
            self._drop_partial()
        if self._held is not None:
            self._drop_partial()
        self._cur = self._held = None
        self._clear_tail()
        self._layout = self._last_layout = None
        self._prev = None

    # --- NAL units --------------------------------------------------------------------------------

    def _nal(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        if self._cur is not None and len(self._cur.nals) >= _MAX_UNIT_NALS:
            self._cur.corrupt = True
            self._close(out, "boundary")
        if len(self._tail) >= _MAX_TAIL_NALS:
            self._clear_tail()
            self.dropped_corrupt += 1
            self._discontinuity = True
        header = nal[0]
        kind = header & 0x1F
        if header & 0x80:
            self._junk(pts, out)
        elif kind in (NAL_SLICE, NAL_IDR, NAL_DPA):
            self._slice(nal, kind, pts, ingest, out)
        elif kind in (NAL_DPB, NAL_DPC):
            self._add_vcl(nal, pts, ingest, out, corrupt=False)
        elif kind == NAL_AUD:
            self._close(out, "boundary")
            self._tail.append(nal)
        elif kind in _AU_STARTERS:
            cur = self._cur
            if cur is not None and pts != cur.pts:
                self._close(out, "boundary")
            self._tail.append(nal)
            if kind in (NAL_SPS, NAL_PPS):
                self._parameter_set(nal, kind)
        else:
            # End of sequence/stream, filler, extensions, reserved: they go
            # with the picture before them.
            cur = self._cur
            if cur is not None and pts == cur.pts and not self._tail:
                cur.nals.append(nal)
                cur.ingest = ingest
                return
            if cur is not None and pts != cur.pts:
                self._close(out, "boundary")
            self._tail.append(nal)

    def _parameter_set(self, nal: bytes, kind: int) -> None:
        try:
            item: Sps | Pps = parse_sps(nal) if kind == NAL_SPS else parse_pps(nal, self._sps)
        except H264Error:
            self._tail_corrupt = True  # not adopted, and the unit holding it is dropped
            return
        self._adopt(nal, item)
        self._tail_present.add((kind, item.sps_id if isinstance(item, Sps) else item.pps_id))

    def _adopt(self, nal: bytes, item: Sps | Pps) -> None:
        if isinstance(item, Sps):
            if self._sps_nal.get(item.sps_id) != nal:
                if item.sps_id in self._sps:
                    # A new sequence: the slice layout may have changed with it.
                    self._layout = self._last_layout = None
                self._sps[item.sps_id] = item
                self._sps_nal[item.sps_id] = nal
        else:
            self._pps[item.pps_id] = item
            self._pps_nal[item.pps_id] = nal

    def _slice(self, nal: bytes, kind: int, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        sps: Sps | None = None
        pps_id = sps_id = -1
        try:
            h = parse_slice_header(nal, self._sps, self._pps)
        except _MissingParameterSet:
            try:
                _, first_mb, _, pps_id = _slice_prefix(nal)
            except H264Error:
                self._add_vcl(nal, pts, ingest, out, corrupt=True)
                return
            info = _Slice(first_mb, (None, pps_id, kind, nal[0] & 0x60 == 0))
        except H264Error:
            self._add_vcl(nal, pts, ingest, out, corrupt=True)
            return
        else:
            pps_id = h.pps_id
            sps_id = self._pps[pps_id].sps_id
            sps = self._sps[sps_id]
            info = _Slice(
                h.first_mb_in_slice,
                (pps_id, h.frame_num, h.field_pic_flag, h.bottom_field_flag, h.nal_ref_idc == 0,
                 h.pic_order_cnt_lsb, h.delta_pic_order_cnt_bottom, h.delta_pic_order_cnt,
                 kind, h.idr_pic_id),
                h.colour_plane_id, h.redundant_pic_cnt > 0)
        cur = self._cur
        if cur is None:
            self._after_emitted(info, pts)
        elif pts != cur.pts or (cur.last is not None and not info.continues(cur.last)):
            self._close(out, "boundary")
            cur = None
        if cur is None:
            cur = self._start(pts, ingest)
        else:
            self._join_tail(cur, ingest)
        cur.nals.append(nal)
        cur.slices += 1
        if kind == NAL_IDR:
            cur.idr = True
        if sps is None:
            cur.unknown_params = True
        else:
            if cur.sps is None:
                cur.sps = sps
            if kind == NAL_IDR:
                needs = cur.needs
                needs[(NAL_PPS, pps_id)] = self._pps_nal[pps_id]
                needs[(NAL_SPS, sps_id)] = self._sps_nal[sps_id]
        if info.redundant:
            return
        if cur.last is None and cur.slices > 1:
            cur.headless = True  # it began with a slice whose header we could not read
        cur.last = info
        cur.first_mbs.append(info.first_mb)
        layout = self._layout
        if layout is not None and len(cur.first_mbs) == len(layout) \
                and tuple(cur.first_mbs) == layout:
            self._close(out, "layout")

    def _add_vcl(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit],
                 corrupt: bool) -> None:
        """A VCL NAL unit without a usable slice header: part of the current
        picture if it has the same timestamp, else the start of a broken one."""
        cur = self._cur
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
            cur = None
        if cur is None:
            self._prev = None
            cur = self._start(pts, ingest)
            cur.headless = True
        else:
            self._join_tail(cur, ingest)
        cur.nals.append(nal)
        cur.slices += 1
        cur.corrupt |= corrupt

    def _junk(self, pts: int, out: list[AccessUnit]) -> None:
        """Bytes that are no NAL unit (or one with forbidden_zero_bit set)
        spoil the unit they arrive in."""
        cur = self._cur
        if cur is not None and pts == cur.pts and not self._tail:
            cur.corrupt = True
            return
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
        self._tail_corrupt = True

    def _start(self, pts: int, ingest: int) -> _Picture:
        cur = _Picture(pts, ingest, self._tail, self._tail_present, self._tail_corrupt)
        self._tail = []
        self._tail_present = set()
        self._tail_corrupt = False
        self._cur = cur
        return cur

    def _join_tail(self, cur: _Picture, ingest: int) -> None:
        if self._tail or self._tail_corrupt:
            cur.nals.extend(self._tail)
            cur.corrupt |= self._tail_corrupt
            self._clear_tail()
        cur.ingest = ingest

    def _clear_tail(self) -> None:
        self._tail = []
        self._tail_present = set()
        self._tail_corrupt = False

    # --- completing units -------------------------------------------------------------------------

    def _after_emitted(self, info: _Slice, pts: int) -> None:
        """First slice after a unit went out before the next one started: is
        it more of that picture?"""
        prev = self._prev
        if prev is None:
            return
        self._prev = None
        prev_pts, prev_last = prev
        if pts == prev_pts and prev_last is not None and info.continues(prev_last):
            # The unit was cut short (idle timer too short, or the learned
            # layout is wrong): what was learned from it is wrong.
            self._layout = self._last_layout = None

    def _learn(self, layout: tuple[int, ...]) -> None:
        if layout == self._last_layout:
            self._layout = layout
        elif self._layout is not None and layout != self._layout:
            self._layout = None
        self._last_layout = layout

    def _close(self, out: list[AccessUnit], how: str) -> None:
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        units = self._finish(cur)
        if not units:
            self._prev = None
            return
        out.extend(units)
        self._learn(tuple(cur.first_mbs))
        # Closed by the next unit's start, it was whole; else the next slice will tell.
        self._prev = None if how == "boundary" else (cur.pts, cur.last)

    def _finish(self, cur: _Picture) -> list[AccessUnit]:
        """The units that closing ``cur`` lets out: none (dropped or held),
        ``cur``, or a held unit and ``cur``."""
        held, self._held = self._held, None
        mbs = tuple(cur.first_mbs)
        if cur.corrupt or cur.headless or not mbs or mbs[0] != 0:
            if held is not None:
                self._drop_partial()
            if cur.corrupt:
                self.dropped_corrupt += 1
                self._discontinuity = True
            else:
                self._drop_partial()
            return []
        if held is not None:
            if mbs == tuple(held.first_mbs):
                # The same slices twice: the camera sends fewer now. Both are whole.
                self._layout = self._last_layout = mbs
                return self._build(held) + self._build(cur)
            self._drop_partial()
        layout = self._layout
        if layout is not None and len(mbs) < len(layout) and set(mbs) <= set(layout):
            self._held = cur
            return []
        return self._build(cur)

    def _build(self, cur: _Picture) -> list[AccessUnit]:
        nals = cur.nals
        if cur.idr:
            if cur.unknown_params:
                self.dropped_no_parameter_sets += 1
                self._discontinuity = True
                return []
            nals = self._with_parameter_sets(cur)
        discontinuity = self._discontinuity
        self._discontinuity = False
        self.units += 1
        return [AccessUnit(
            data=START_CODE + START_CODE.join(nals), pts_us=cur.pts, ingest_us=cur.ingest,
            keyframe=cur.idr, sps=cur.sps, discontinuity=discontinuity, slices=cur.slices)]

    def _with_parameter_sets(self, cur: _Picture) -> list[bytes]:
        """The IDR unit's NAL units with the SPS/PPS it lacks put in front
        (after a leading AUD), SPS first."""
        missing = [(key, nal) for key, nal in cur.needs.items() if key not in cur.present]
        if not missing:
            return cur.nals
        self.injected_parameter_sets += 1
        nals = list(cur.nals)
        at = 1 if nals and nals[0][0] & 0x1F == NAL_AUD else 0
        nals[at:at] = [nal for (kind, _), nal in missing if kind == NAL_SPS]
        # A PPS goes after the SPS it may depend on, whether sent or injected.
        pos = at
        for index, nal in enumerate(nals):
            kind = nal[0] & 0x1F
            if kind in _VCL:
                break
            if kind == NAL_SPS:
                pos = index + 1
        nals[pos:pos] = [nal for (kind, _), nal in missing if kind == NAL_PPS]
        return nals

    def _drop_partial(self) -> None:
        self.dropped_partial += 1
        self._discontinuity = True

    def _internal_error(self) -> None:
        self.internal_errors += 1
        self._cur = self._held = None
        self._clear_tail()
        self._layout = self._last_layout = None
        self._prev = None
        self._discontinuity = True
