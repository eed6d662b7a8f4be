"""H.265 (HEVC) bitstream handling: NAL units, parameter sets, slice segment
headers, the codec string and hvcC record (``nal``, ``syntax``, ``hvcc``), and
grouping NAL units into access units (``assembler``). Pure: stdlib only, no I/O.

The Annex B splitter, RBSP unescaper and bit reader are shared with H.264.
"""

from cxrelay.h265.assembler import AccessUnit, AccessUnitAssembler
from cxrelay.h265.hvcc import Hvcc, build_hvcc, parse_extradata, parse_hvcc, split_extradata
from cxrelay.h265.nal import (
    IRAP,
    KEYFRAMES,
    NAL_AUD,
    NAL_CRA,
    NAL_EOB,
    NAL_EOS,
    NAL_IDR_N_LP,
    NAL_IDR_W_RADL,
    NAL_PPS,
    NAL_PREFIX_SEI,
    NAL_RTP_FU,
    NAL_SPS,
    NAL_SUFFIX_SEI,
    NAL_VPS,
    PARAMETER_SETS,
    SLICES,
    H265Error,
    first_slice_segment_in_pic,
    layer_id,
    nal_type,
)
from cxrelay.h265.syntax import (
    Pps,
    ProfileTierLevel,
    SliceSegmentHeader,
    Sps,
    Vps,
    parse_pps,
    parse_slice_segment_header,
    parse_sps,
    parse_vps,
)

__all__ = [
    "IRAP",
    "KEYFRAMES",
    "NAL_AUD",
    "NAL_CRA",
    "NAL_EOB",
    "NAL_EOS",
    "NAL_IDR_N_LP",
    "NAL_IDR_W_RADL",
    "NAL_PPS",
    "NAL_PREFIX_SEI",
    "NAL_RTP_FU",
    "NAL_SPS",
    "NAL_SUFFIX_SEI",
    "NAL_VPS",
    "PARAMETER_SETS",
    "SLICES",
    "AccessUnit",
    "AccessUnitAssembler",
    "H265Error",
    "Hvcc",
    "Pps",
    "ProfileTierLevel",
    "SliceSegmentHeader",
    "Sps",
    "Vps",
    "build_hvcc",
    "first_slice_segment_in_pic",
    "layer_id",
    "nal_type",
    "parse_extradata",
    "parse_hvcc",
    "parse_pps",
    "parse_slice_segment_header",
    "parse_sps",
    "parse_vps",
    "split_extradata",
]
