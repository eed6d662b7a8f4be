"""The "glass" pattern: a frame's capture time drawn into its pixels, to be read back off a
screen (or a decoder's output) after compression, relaying and decoding.

Three rows of 32 square cells across the top of the picture (cell = width / 32). Each of
the 48 bits takes two neighbouring cells, white-black for 1 and black-white for 0, so a
reader compares the two halves instead of guessing a threshold, and a half-painted or
blended picture reads as no code rather than a wrong one. The bits: capture time in
milliseconds modulo 2**32 (a reader takes the nearest such time to its own clock), a frame
counter (8 bits), and a CRC-8 of those 5 bytes. Large flat cells survive any sane encoder.

The test camera (`rtsp_camera.py --glass`) lays the strip over its moving test
picture as the picture goes into the encoder: the time drawn is the capture time.

Pure Python, no numpy: used by the test camera under Debian's /usr/bin/python3, by the
GStreamer reader (the floor), and, as the JavaScript twin in benchmarks/glass.py, by pages.
"""

from __future__ import annotations

CELLS = 32  # per row
ROWS = 3
BITS = 48
MIN_CONTRAST = 60  # the two cells of a bit must differ at least this much


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07 (ATM HEC's), initial value 0."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def code_bits(capture_ms: int, counter: int) -> list[int]:
    payload = (capture_ms & 0xFFFF_FFFF).to_bytes(4, "big") + bytes([counter & 0xFF])
    value = int.from_bytes(payload + bytes([crc8(payload)]), "big")
    return [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def strip_height(width: int) -> int:
    return ROWS * (width // CELLS)


def bgra_strip(width: int, capture_ms: int, counter: int) -> tuple[bytes, int, int]:
    """(BGRA pixels, width, height) of the code strip for a picture `width` wide, to be
    put at its top left corner (the test camera's overlay)."""
    cell = width // CELLS
    white, black = b"\xff\xff\xff\xff" * cell, b"\x00\x00\x00\xff" * cell
    bits = code_bits(capture_ms, counter)
    rows: list[bytes] = []
    for row in range(ROWS):
        cells = []
        for col in range(CELLS):
            index = row * CELLS + col
            bit = bits[index // 2]
            cells.append(white if (bit if index % 2 == 0 else 1 - bit) else black)
        rows.append(b"".join(cells) * cell)
    return b"".join(rows), CELLS * cell, ROWS * cell


def read_code(luma: bytes | memoryview, width: int, stride: int | None = None
              ) -> tuple[int, int] | None:
    """(capture_ms modulo 2**32, counter) from a decoded luma plane, or None if the strip
    doesn't read cleanly (no contrast, or a bad CRC)."""
    stride = stride or width
    cell = width // CELLS
    value = 0
    for bit in range(BITS):
        levels = []
        for half in (0, 1):
            index = bit * 2 + half
            row, col = divmod(index, CELLS)
            y0, x0 = row * cell + cell // 4, col * cell + cell // 4
            total = count = 0
            for y in range(y0, y0 + cell // 2, max(1, cell // 8)):
                base = y * stride + x0
                for x in range(0, cell // 2, max(1, cell // 8)):
                    total += luma[base + x]
                    count += 1
            levels.append(total / count)
        if abs(levels[0] - levels[1]) < MIN_CONTRAST:
            return None
        value = (value << 1) | (1 if levels[0] > levels[1] else 0)
    data = value.to_bytes(6, "big")
    if crc8(data[:5]) != data[5]:
        return None
    return int.from_bytes(data[:4], "big"), data[4]


def unwrap_ms(code_ms: int, now_ms: float) -> float:
    """The full capture time nearest to `now_ms` whose low 32 bits are `code_ms`."""
    base = int(now_ms) - (int(now_ms) & 0xFFFF_FFFF)
    candidates = (base - 2**32 + code_ms, base + code_ms, base + 2**32 + code_ms)
    return float(min(candidates, key=lambda c: abs(c - now_ms)))
