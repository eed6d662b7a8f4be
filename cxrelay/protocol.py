"""Protocol v1 framing (docs/protocol.md). Pure: no I/O.

Binary frames are built once per access unit and shared by every viewer; only
the rare per-viewer variants (catch-up, discontinuity) get a copy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PROTOCOL_VERSION = 1

FLAG_KEYFRAME = 0x01
FLAG_CATCHUP = 0x02
FLAG_DISCONTINUITY = 0x04

HEADER = struct.Struct(">BqQ")
HEADER_SIZE = HEADER.size  # 17

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
# 1009 (a client's message too big) is sent by websockets itself (max_size).


class CameraState(StrEnum):
    """A camera's state, as status messages, the API and metrics spell it."""

    IDLE = "idle"  # on demand, nobody watching: no camera session
    CONNECTING = "connecting"
    LIVE = "live"
    OFFLINE = "offline"  # failed; retrying


@dataclass(frozen=True, slots=True)
class Frame:
    flags: int
    pts_us: int
    ingest_us: int
    payload: bytes

    @property
    def keyframe(self) -> bool:
        return bool(self.flags & FLAG_KEYFRAME)


def encode_frame(flags: int, pts_us: int, ingest_us: int, payload: bytes) -> bytes:
    return HEADER.pack(flags, pts_us, ingest_us) + payload


def decode_frame(message: bytes) -> Frame:
    if len(message) < HEADER_SIZE:
        raise ValueError(f"binary message of {len(message)} bytes is shorter than the header")
    flags, pts_us, ingest_us = HEADER.unpack_from(message)
    return Frame(flags, pts_us, ingest_us, bytes(message[HEADER_SIZE:]))


def with_flags(message: bytes, extra: int) -> bytes:
    """The same frame with more flag bits set (a copy; the original stays shared)."""
    if not extra or message[0] | extra == message[0]:
        return message
    return bytes((message[0] | extra,)) + message[1:]


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def init_message(camera: str, codec: str, width: int, height: int) -> str:
    return _dump(
        {
            "type": "init",
            "protocol": PROTOCOL_VERSION,
            "camera": camera,
            "codec": codec,
            "width": width,
            "height": height,
        }
    )


def status_message(state: CameraState, reason: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "status", "state": state}
    if reason:
        msg["reason"] = reason
    return _dump(msg)
