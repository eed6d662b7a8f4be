"""H.265 NAL units: the two-byte header, and the types that matter to a relay. Pure.

References are to ITU-T H.265 (V8, 08/2021) and ISO/IEC 14496-15.
"""

from __future__ import annotations

__all__ = [
    "IRAP",
    "KEYFRAMES",
    "NAL_AUD",
    "NAL_BLA_N_LP",
    "NAL_BLA_W_LP",
    "NAL_BLA_W_RADL",
    "NAL_CRA",
    "NAL_EOB",
    "NAL_EOS",
    "NAL_FD",
    "NAL_IDR_N_LP",
    "NAL_IDR_W_RADL",
    "NAL_PPS",
    "NAL_PREFIX_SEI",
    "NAL_RTP_AP",
    "NAL_RTP_FU",
    "NAL_SPS",
    "NAL_SUFFIX_SEI",
    "NAL_TRAIL_R",
    "NAL_VPS",
    "PARAMETER_SETS",
    "SLICES",
    "H265Error",
    "check_header",
    "first_slice_segment_in_pic",
    "layer_id",
    "nal_type",
]

# nal_unit_type (Table 7-1).
NAL_TRAIL_N = 0
NAL_TRAIL_R = 1
NAL_RASL_R = 9
NAL_BLA_W_LP = 16
NAL_BLA_W_RADL = 17
NAL_BLA_N_LP = 18
NAL_IDR_W_RADL = 19
NAL_IDR_N_LP = 20
NAL_CRA = 21
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_EOS = 36
NAL_EOB = 37
NAL_FD = 38
NAL_PREFIX_SEI = 39
NAL_SUFFIX_SEI = 40
# RFC 7798 payload types: never in a bitstream, only in RTP packets.
NAL_RTP_AP = 48
NAL_RTP_FU = 49

# Slices whose syntax is known: the sub-layer pictures 0..9 and the IRAP ones
# 16..21. The reserved VCL types (10..15, 22..31) are ignored by decoders.
SLICES = frozenset([*range(NAL_TRAIL_N, NAL_RASL_R + 1), *range(NAL_BLA_W_LP, NAL_CRA + 1)])
# Intra random access points: a decoder can start here (with the parameter sets).
IRAP = frozenset(range(NAL_BLA_W_LP, NAL_CRA + 1))
KEYFRAMES = IRAP
PARAMETER_SETS = frozenset({NAL_VPS, NAL_SPS, NAL_PPS})


class H265Error(ValueError):
    """Malformed or unsupported H.265 data."""


def nal_type(nal: bytes) -> int:
    """nal_unit_type of a NAL unit (without start code)."""
    if len(nal) < 2:
        raise H265Error("NAL unit shorter than its header")
    return (nal[0] >> 1) & 0x3F


def layer_id(nal: bytes) -> int:
    """nuh_layer_id: 0 for the base layer, the only one a relay looks into."""
    if len(nal) < 2:
        raise H265Error("NAL unit shorter than its header")
    return ((nal[0] & 1) << 5) | (nal[1] >> 3)


def check_header(nal: bytes) -> int:
    """The type of a NAL unit whose header is valid (7.4.2.2); raises otherwise."""
    kind = nal_type(nal)
    if nal[0] & 0x80:
        raise H265Error("forbidden_zero_bit set")
    if not nal[1] & 0x07:
        raise H265Error("nuh_temporal_id_plus1 is 0")
    return kind


def first_slice_segment_in_pic(nal: bytes) -> bool:
    """first_slice_segment_in_pic_flag of a slice segment: the first bit after
    the NAL unit header, so no emulation prevention can stand before it."""
    if len(nal) < 3:
        raise H265Error("slice segment shorter than its header")
    return bool(nal[2] & 0x80)
