"""Annex B byte streams, for any codec: the start code and the split into NAL units. Pure:
stdlib only.

Its own module, not cxrelay.h264's, so that the codec-neutral assembly (cxrelay.assembly) and
H.265 can use it without importing the H.264 package (which imports cxrelay.assembly: an
H.265-only relay would find it half-initialised).
"""

from __future__ import annotations

START_CODE = b"\x00\x00\x00\x01"
_SC3 = b"\x00\x00\x01"


def split_nals(data: bytes) -> tuple[list[bytes], bool]:
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
