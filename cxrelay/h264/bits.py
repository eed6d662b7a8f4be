"""H.264 below the syntax: NAL unit types, Annex B splitting and joining,
emulation prevention, and an MSB-first bit reader. Pure: stdlib only.

The hot path: start codes are found with ``bytes.find``, never byte by byte.
References are to ITU-T H.264 (08/2021).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from cxrelay.annexb import START_CODE, split_nals

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
NAL_DPS = 16  # depth parameter set (3D-AVC); 17 and 18 are reserved
NAL_AUX_SLICE = 19
NAL_SLICE_EXT = 20

# Video coding layer: the NAL units that carry a picture's slices.
VCL_TYPES = frozenset({NAL_SLICE, NAL_DPA, NAL_DPB, NAL_DPC, NAL_IDR})

_EPB = b"\x00\x00\x03"


class H264Error(ValueError):
    """Malformed or unsupported H.264 data."""


# --- NAL units ------------------------------------------------------------------------------------


def nal_type(nal: bytes) -> int:
    """nal_unit_type of a NAL unit (without start code)."""
    if not nal:
        raise H264Error("empty NAL unit")
    return nal[0] & 0x1F


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units (without start codes) of an Annex B buffer.

    Takes 3- and 4-byte start codes, ignores leading and trailing zero bytes
    and anything before the first start code. Never raises."""
    return split_nals(bytes(data))[0]


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


# --- bit reading ----------------------------------------------------------------------------------


class BitReader:
    """MSB-first reader over an RBSP, holding it as one Python int (headers
    are short, so this beats indexing bytes). Codec-neutral: H.265 subclasses
    it to raise its own ``error``."""

    __slots__ = ("pos", "size", "value")
    error: ClassVar[type[ValueError]] = H264Error

    def __init__(self, rbsp: bytes) -> None:
        self.value = int.from_bytes(rbsp, "big")
        self.size = len(rbsp) * 8
        self.pos = 0

    def u(self, bits: int) -> int:
        end = self.pos + bits
        if end > self.size:
            raise self.error("truncated")
        self.pos = end
        return (self.value >> (self.size - end)) & ((1 << bits) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self, limit: int = 0xFFFFFFFE) -> int:
        remaining = self.size - self.pos
        rest = self.value & ((1 << remaining) - 1)
        if rest == 0:
            raise self.error("truncated")
        zeros = remaining - rest.bit_length()
        if zeros > 31:
            raise self.error("Exp-Golomb code too long")
        width = 2 * zeros + 1
        if width > remaining:
            raise self.error("truncated")
        self.pos += width
        value = (rest >> (remaining - width)) - 1
        if value > limit:
            raise self.error(f"value {value} out of range")
        return value

    def se(self, low: int = -(2**31), high: int = 2**31 - 1) -> int:
        code = self.ue()
        value = (code + 1) // 2 if code & 1 else -(code // 2)
        if not low <= value <= high:
            raise self.error(f"value {value} out of range")
        return value

    def more_rbsp_data(self) -> bool:
        """More syntax before rbsp_trailing_bits (7.2)."""
        value = self.value & ((1 << (self.size - self.pos)) - 1)
        if value == 0:
            return False
        stop_bit = (value & -value).bit_length() - 1  # from the LSB end
        return self.size - self.pos - 1 > stop_bit


def rbsp_of(nal: bytes, expect: int) -> bytes:
    """The payload of a NAL unit of type ``expect``, emulation prevention removed."""
    if not nal:
        raise H264Error("empty NAL unit")
    if nal[0] & 0x80:
        raise H264Error("forbidden_zero_bit set")
    if nal[0] & 0x1F != expect:
        raise H264Error(f"NAL unit type {nal[0] & 0x1F}, expected {expect}")
    return unescape_rbsp(nal[1:])
