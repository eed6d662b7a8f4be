"""The decoder configuration of an H.265 stream: the hvcC record
(HEVCDecoderConfigurationRecord, ISO/IEC 14496-15 8.3.3.1) read from MP4/MKV
extradata or built from VPS, SPS and PPS for WebCodecs' ``description`` and
the fMP4 ``hvcC`` box, and the parameter sets of any extradata. Pure.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cxrelay.annexb import split_nals
from cxrelay.h265.nal import (
    NAL_PPS,
    NAL_PREFIX_SEI,
    NAL_SPS,
    NAL_SUFFIX_SEI,
    NAL_VPS,
    PARAMETER_SETS,
    H265Error,
    check_header,
    layer_id,
    nal_type,
)
from cxrelay.h265.syntax import parse_pps, parse_sps, parse_vps

__all__ = ["Hvcc", "build_hvcc", "parse_extradata", "parse_hvcc", "split_extradata"]

_HEADER = struct.Struct(">B12sHBBBBHBB")  # up to and with numOfArrays: 23 bytes
# The arrays of a record, in the order ISO/IEC 14496-15 lists them.
_ARRAY_ORDER = (NAL_VPS, NAL_SPS, NAL_PPS, NAL_PREFIX_SEI, NAL_SUFFIX_SEI)


@dataclass(frozen=True, slots=True)
class Hvcc:
    profile_tier_level: bytes  # the 12 bytes after configurationVersion
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    length_size: int  # bytes of each NAL unit's length prefix in the samples
    nals: list[bytes]  # every NAL unit of every array, in record order


def parse_hvcc(data: bytes) -> Hvcc:
    """Read an hvcC record. Raises H265Error if it is truncated or malformed."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise H265Error("hvcC record too short")
    version, ptl, _, _, chroma, depth_luma, depth_chroma, _, flags, arrays = \
        _HEADER.unpack_from(data)
    if version != 1:
        raise H265Error(f"hvcC configurationVersion {version}")
    nals: list[bytes] = []
    pos = _HEADER.size
    for _ in range(arrays):
        if pos + 3 > len(data):
            raise H265Error("hvcC record truncated")
        count = int.from_bytes(data[pos + 1:pos + 3], "big")
        pos += 3
        for _ in range(count):
            size = int.from_bytes(data[pos:pos + 2], "big")
            nal = data[pos + 2:pos + 2 + size]
            pos += 2 + size
            if size < 2 or len(nal) != size:
                raise H265Error("hvcC record truncated")
            check_header(nal)
            nals.append(nal)
    return Hvcc(ptl, chroma & 3, (depth_luma & 7) + 8, (depth_chroma & 7) + 8,
                (flags & 3) + 1, nals)


def build_hvcc(nals: Iterable[bytes], *, complete: bool = True) -> bytes:
    """An hvcC record holding these VPS, SPS and PPS NAL units (and any SEI),
    for the ``hvc1`` sample entry when ``complete`` (every parameter set is in
    the record), else ``hev1``. The profile, tier, level and picture format
    come from the first SPS. Raises H265Error if there is no valid SPS.

    Fields that need more of the bitstream than a relay reads are written as
    "unknown", which the format allows: min_spatial_segmentation_idc 0,
    parallelismType 0, avgFrameRate 0, constantFrameRate 0."""
    by_type: dict[int, list[bytes]] = {kind: [] for kind in _ARRAY_ORDER}
    for nal in nals:
        kind = check_header(nal)
        if kind in by_type and layer_id(nal) == 0:
            by_type[kind].append(bytes(nal))
    if not by_type[NAL_SPS]:
        raise H265Error("an hvcC record needs an SPS")
    sps = parse_sps(by_type[NAL_SPS][0])
    for vps in by_type[NAL_VPS]:
        parse_vps(vps)
    for pps in by_type[NAL_PPS]:
        parse_pps(pps)
    out = bytearray(_HEADER.pack(
        1,
        sps.ptl.to_bytes(),
        0xF000,  # reserved '1111'b, min_spatial_segmentation_idc 0
        0xFC,  # reserved '111111'b, parallelismType 0
        0xFC | sps.chroma_format_idc,
        0xF8 | (sps.bit_depth_luma - 8),
        0xF8 | (sps.bit_depth_chroma - 8),
        0,  # avgFrameRate
        # constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne 3
        (sps.max_sub_layers << 3) | (sps.temporal_id_nesting_flag << 2) | 3,
        sum(1 for items in by_type.values() if items),
    ))
    for kind, items in by_type.items():
        if not items:
            continue
        completeness = 0x80 if complete and kind in PARAMETER_SETS else 0
        out += bytes([completeness | kind]) + len(items).to_bytes(2, "big")
        for nal in items:
            out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)


def split_extradata(extradata: bytes) -> list[bytes]:
    """Every NAL unit of codec extradata: an hvcC record (MP4/MKV) or Annex B
    (RTSP: FFmpeg turns the SDP's sprop-vps/sps/pps into Annex B). Raises
    H265Error on anything else."""
    data = bytes(extradata)
    if not data:
        return []
    if data[0] == 1:
        return parse_hvcc(data).nals
    nals, stray = split_nals(data)
    if stray or not nals:
        raise H265Error("extradata is neither hvcC nor Annex B")
    for nal in nals:
        check_header(nal)
    return nals


def parse_extradata(extradata: bytes) -> list[bytes]:
    """The base layer's VPS, SPS and PPS of codec extradata, in their order
    there (SEI and anything else left out). Raises H265Error."""
    out = [nal for nal in split_extradata(extradata)
           if nal_type(nal) in PARAMETER_SETS and layer_id(nal) == 0]
    if extradata and not out:
        raise H265Error("no VPS, SPS or PPS in extradata")
    return out
