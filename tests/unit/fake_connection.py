"""A stand-in for ``wire.RelayConnection`` in unit tests: a transport that
keeps what is written (decoded back into messages), and can be made to stop
draining, with asyncio's flow-control calls at the same marks."""

from __future__ import annotations

import json
from typing import Any

from websockets.frames import Opcode
from websockets.protocol import State

from cxrelay.wire import HIGH_WATER, LOW_WATER


def parse_frames(data: bytes) -> list[str | bytes]:
    """Unmasked server frames, back into messages (as a client receives them)."""
    out: list[str | bytes] = []
    i = 0
    while i < len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        assert data[i] & 0x80 and not data[i + 1] & 0x80, "fragmented or masked"
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        payload = data[i:i + length]
        i += length
        out.append(payload.decode() if opcode == Opcode.TEXT else payload)
    return out


class FakeTransport:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.delivered = bytearray()
        self.writes: list[bytes] = []  # every write as it came, objects kept
        self.queued: list[bytes] = []
        self.stuck = False
        self.paused = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert self.connection.state is State.OPEN, "written after the close began"
        self.writes.append(data)
        if not self.stuck:
            self.delivered += data
            return
        self.queued.append(data)
        if not self.paused and self.get_write_buffer_size() > HIGH_WATER:
            self.paused = True
            if self.connection.on_paused is not None:
                self.connection.on_paused()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.queued))

    def drain(self) -> None:
        """The peer reads everything again."""
        self.stuck = False
        for data in self.queued:
            self.delivered += data
        self.queued.clear()
        if self.paused and self.get_write_buffer_size() <= LOW_WATER:
            self.paused = False
            if self.connection.on_drained is not None:
                self.connection.on_drained()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeConnection:
    remote_address = ("127.0.0.1", 50000)

    def __init__(self) -> None:
        self.state = State.OPEN
        self.on_drained: Any = None
        self.on_paused: Any = None
        self.on_replies: Any = None
        self.closed: tuple[int, str] | None = None
        self.raw = FakeTransport(self)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.state = State.CLOSED

    @property
    def sent(self) -> list[str | bytes]:
        """Every message the peer has received, in order."""
        return parse_frames(bytes(self.raw.delivered))

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.sent if isinstance(m, str)]
