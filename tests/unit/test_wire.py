"""Frames built once for every viewer are byte for byte what websockets itself
would write for each of them."""

from __future__ import annotations

from websockets.protocol import State
from websockets.server import ServerProtocol

from cxrelay.protocol import FLAG_KEYFRAME, encode_frame
from cxrelay.wire import Outgoing, binary_frame, text_frame


def websockets_writes(message: bytes | str) -> bytes:
    protocol = ServerProtocol()
    protocol.state = State.OPEN  # as after the handshake
    if isinstance(message, str):
        protocol.send_text(message.encode())
    else:
        protocol.send_binary(message)
    return b"".join(protocol.data_to_send())


def test_frames_are_what_websockets_writes() -> None:
    for size in (0, 1, 108, 109, 125, 126, 127, 65535, 65536, 65537, 300_000):
        message = encode_frame(FLAG_KEYFRAME, 1, 2, bytes(range(256)) * (size // 256)
                               + bytes(size % 256))
        assert binary_frame(message) == websockets_writes(message), size
    for text in ('{"type":"status","state":"live"}', "é" * 200, "x" * 70_000):
        assert text_frame(text) == websockets_writes(text)


def test_outgoing_reads_the_ingest_time_from_the_header() -> None:
    frame = Outgoing.frame(encode_frame(0, 40_000, 1_234_567, b"\x00\x00\x01\x41"),
                           keyframe=False)
    assert frame.ingest_us == 1_234_567 and frame.wire == binary_frame(frame.message)
