"""The test camera's "stamp": an SEI NAL unit carrying wall-clock time and a frame counter.

The camera puts one stamp SEI in every access unit, just before the first slice. Readers
use it two ways: latency (wall clock now minus the stamp) and identity (the relay must
forward camera NAL units byte for byte, so the stamp must come out the other end intact).

With --draw-counter the camera also draws the counter into the picture (a row of black and
white blocks at the top left), for what only pixels keep: a decoded still, a JPEG snapshot.

Pure Python on purpose: imported both by Debian's /usr/bin/python3 (the GStreamer camera)
and by the project's Python (tests, benchmarks).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

STAMP_UUID: bytes = uuid.UUID("6378726c-6179-4a73-8c74-616d70536549").bytes
"""16-byte user_data_unregistered UUID that marks a stamp SEI (a fixed, random-looking v4)."""

NAL_SEI = 6
# The stamp's NAL unit header: H.264 SEI (nal_ref_idc 0), H.265 prefix SEI (layer 0,
# temporal id 0). One H.264 NAL unit could start 4E 01: a prefix NAL unit (type 14) of
# scalable video, which no camera here sends.
_SEI_HEADER = {"h264": bytes([NAL_SEI]), "h265": b"\x4e\x01"}
SEI_USER_DATA_UNREGISTERED = 5
_PAYLOAD = struct.Struct(">QQ")
_PAYLOAD_SIZE = len(STAMP_UUID) + _PAYLOAD.size


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes so no 00 00 0x (x <= 3) appears in the NAL unit."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def unescape_rbsp(ebsp: bytes) -> bytes:
    """Remove emulation-prevention bytes (the 03 in 00 00 03)."""
    if b"\x00\x00\x03" not in ebsp:
        return ebsp
    out = bytearray()
    zeros = 0
    for byte in ebsp:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def make_stamp_sei(wall_us: int, counter: int, codec: str = "h264") -> bytes:
    """An SEI NAL unit (no start code) holding one user_data_unregistered stamp message:
    H.264's SEI, or H.265's prefix SEI (the same message syntax behind a two-byte header)."""
    rbsp = (
        bytes([SEI_USER_DATA_UNREGISTERED, _PAYLOAD_SIZE])
        + STAMP_UUID
        + _PAYLOAD.pack(wall_us & 0xFFFF_FFFF_FFFF_FFFF, counter & 0xFFFF_FFFF_FFFF_FFFF)
        + b"\x80"  # rbsp_trailing_bits
    )
    return _SEI_HEADER[codec] + escape_rbsp(rbsp)


def iter_annexb(data: bytes) -> Iterator[bytes]:
    """NAL units (without start codes) of an Annex B byte string.

    Bytes before the first start code are yielded too when present: a reader that gets
    a NAL unit fragment (RTP FU-A continuation) still gets to look at it.
    """
    starts: list[tuple[int, int]] = []  # (start code position, payload position)
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        code_at = pos - 1 if pos > 0 and data[pos - 1] == 0 else pos
        starts.append((code_at, pos + 3))
        pos = data.find(b"\x00\x00\x01", pos + 3)
    if not starts:
        if data:
            yield data
        return
    if starts[0][0] > 0:
        yield data[: starts[0][0]]
    for index, (_, begin) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(data)
        # A NAL unit never ends in a zero byte (rbsp_stop_one_bit): trailing zeros are
        # trailing_zero_8bits or the first byte of a four-byte start code.
        yield data[begin:end].rstrip(b"\x00")


def nal_type(nal: bytes) -> int:
    """nal_unit_type of an H.264 NAL unit (0 for an empty one)."""
    return nal[0] & 0x1F if nal else 0


def h265_nal_type(nal: bytes) -> int:
    """nal_unit_type of an H.265 NAL unit (63, unspecified, for an empty one)."""
    return (nal[0] >> 1) & 0x3F if nal else 63


def is_slice(nal: bytes, codec: str = "h264") -> bool:
    """A coded slice (a VCL NAL unit): H.264 types 1-5, H.265 types 0-31."""
    return 1 <= nal_type(nal) <= 5 if codec == "h264" else h265_nal_type(nal) < 32


def _ff_coded(rbsp: bytes, pos: int) -> tuple[int, int] | None:
    """An SEI payload type or size (0xFF bytes add 255 each, then a last byte)
    at ``pos``: (value, position after it), or None if the RBSP ends first."""
    value = 0
    while pos < len(rbsp) and rbsp[pos] == 0xFF:
        value += 255
        pos += 1
    if pos >= len(rbsp):
        return None
    return value + rbsp[pos], pos + 1


def _sei_messages(rbsp: bytes) -> Iterator[tuple[int, bytes]]:
    """(payload type, payload) of each message in an SEI RBSP (NAL header removed)."""
    pos = 0
    while pos < len(rbsp) and rbsp[pos:] != b"\x80":
        if (kind := _ff_coded(rbsp, pos)) is None:
            return
        payload_type, pos = kind
        if (length := _ff_coded(rbsp, pos)) is None:
            return
        size, pos = length
        if pos + size > len(rbsp):
            return
        yield payload_type, rbsp[pos : pos + size]
        pos += size


def stamp_of_nal(nal: bytes) -> tuple[int, int] | None:
    """(wall_us, counter) if this NAL unit is a stamp SEI, else None."""
    header = next((h for h in _SEI_HEADER.values() if nal.startswith(h)), None)
    if header is None or STAMP_UUID[:4] not in nal:
        return None
    for payload_type, payload in _sei_messages(unescape_rbsp(nal[len(header):])):
        if (
            payload_type == SEI_USER_DATA_UNREGISTERED
            and len(payload) >= _PAYLOAD_SIZE
            and payload[:16] == STAMP_UUID
        ):
            wall_us, counter = _PAYLOAD.unpack_from(payload, 16)
            return wall_us, counter
    return None


def find_stamps(access_unit_annexb: bytes) -> list[tuple[int, int]]:
    """Every stamp in an Annex B byte string, in order (more than one means merged units)."""
    found: list[tuple[int, int]] = []
    for nal in iter_annexb(access_unit_annexb):
        stamp = stamp_of_nal(nal)
        if stamp is not None:
            found.append(stamp)
    return found


def find_stamp(access_unit_annexb: bytes) -> tuple[int, int] | None:
    """(wall_us, counter) of the first stamp SEI in an Annex B access unit, or None."""
    for nal in iter_annexb(access_unit_annexb):
        stamp = stamp_of_nal(nal)
        if stamp is not None:
            return stamp
    return None


def count_slices(access_unit_annexb: bytes, codec: str = "h264") -> int:
    """Number of VCL NAL units (coded slices) in an Annex B byte string."""
    return sum(1 for nal in iter_annexb(access_unit_annexb) if is_slice(nal, codec))


# --- the counter drawn into the picture ----------------------------------------------------

DRAWN_BITS = 24
DRAWN_MARKER = (1, 0, 1, 0)  # before the counter: no moving ball draws this
DRAWN_COLUMNS = 40  # a block is 1/40 of the picture's width, so scaled stills keep it readable
_WHITE = b"\xff\xff\xff\xff"  # BGRA, opaque
_BLACK = b"\x00\x00\x00\xff"


def drawn_bits(counter: int) -> list[int]:
    """Marker, then the counter's DRAWN_BITS bits, most significant first."""
    return [*DRAWN_MARKER, *((counter >> (DRAWN_BITS - 1 - i)) & 1 for i in range(DRAWN_BITS))]


def draw_counter(counter: int, width: int) -> tuple[bytes, int, int]:
    """(BGRA pixels, width, height) of the drawn counter for a picture ``width`` wide,
    to be put at its top left corner."""
    block = max(2, width // DRAWN_COLUMNS)
    row = b"".join((_WHITE if bit else _BLACK) * block for bit in drawn_bits(counter))
    return row * block, block * (len(DRAWN_MARKER) + DRAWN_BITS), block


def read_drawn_counter(luma: bytes, width: int, stride: int | None = None) -> int | None:
    """The counter drawn in a picture, from its 8-bit luma (gray) rows; None if the
    picture has none. Reads the middle of each block, so scaling and JPEG keep it."""
    stride = stride or width
    block = width / DRAWN_COLUMNS
    middle = int(block / 2) * stride
    bits = [1 if luma[middle + int((i + 0.5) * block)] > 128 else 0
            for i in range(len(DRAWN_MARKER) + DRAWN_BITS)]
    if tuple(bits[: len(DRAWN_MARKER)]) != DRAWN_MARKER:
        return None
    value = 0
    for bit in bits[len(DRAWN_MARKER):]:
        value = value << 1 | bit
    return value
