"""The glass code: a capture time drawn into the picture and read back off the decoded
picture, by the pure reader (the benchmark's floor) and, in the same way, the page's."""

from __future__ import annotations

import itertools
import time

import av

from tests.camera.glass import (
    BITS,
    bgra_strip,
    code_bits,
    crc8,
    read_code,
    strip_height,
    unwrap_ms,
)
from tests.camera.harness import CameraFactory, read_packets


def luma_with_strip(width: int, height: int, capture_ms: int, counter: int) -> bytearray:
    """A grey picture with the strip laid over it, as the camera's overlay does (BGRA to luma)."""
    pixels, strip_width, strip_rows = bgra_strip(width, capture_ms, counter)
    luma = bytearray([128]) * (width * height)
    for y in range(strip_rows):
        for x in range(strip_width):
            luma[y * width + x] = pixels[(y * strip_width + x) * 4]
    return luma


def test_round_trip_and_rejects() -> None:
    assert crc8(b"123456789") == 0xF4  # CRC-8 (poly 0x07) check value
    assert len(code_bits(0, 0)) == BITS
    luma = luma_with_strip(640, 360, 2**32 + 1234, 300)
    assert read_code(luma, 640) == (1234, 300 & 0xFF)  # ms modulo 2**32, 8-bit counter
    assert strip_height(640) == 60
    flipped = bytearray(luma)  # one bit's two cells swapped: the CRC says no
    for y in range(20):
        row = y * 640
        first, second = luma[row:row + 20], luma[row + 20:row + 40]
        flipped[row:row + 20], flipped[row + 20:row + 40] = second, first
    assert read_code(flipped, 640) is None
    assert read_code(bytearray([128]) * (640 * 360), 640) is None  # no strip: no contrast


def test_unwrap_takes_the_nearest_time() -> None:
    now = 1_800_000_000_000.0
    assert unwrap_ms(int(now - 40) & 0xFFFF_FFFF, now) == now - 40
    edge = float((int(now) | 0xFFFF_FFFF) + 10)  # just past a wrap of the low 32 bits
    assert unwrap_ms(0xFFFF_FFF0, edge) == edge - 10 - 15


def test_camera_draws_its_capture_time_into_every_picture(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(glass=True, gop=10)
    capture = read_packets(camera.url, 30)
    decoder = av.CodecContext.create("h264", "r")
    codes = []
    for unit in capture.packets:
        for frame in decoder.decode(av.Packet(unit)):
            gray = frame.reformat(format="gray")
            plane = gray.planes[0]
            codes.append(read_code(bytes(plane), gray.width, plane.line_size))
    now_ms = time.time() * 1000
    assert len(codes) >= 25 and None not in codes
    times = [unwrap_ms(ms, now_ms) for ms, _ in codes]  # type: ignore[misc]
    assert times == sorted(times)
    assert all(now_ms - 60_000 < t <= now_ms for t in times)
    counters = [c for _, c in codes]  # type: ignore[misc]
    assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(counters))
