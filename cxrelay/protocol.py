"""Protocol v1 framing (docs/protocol.md). Pure: no I/O.

Binary frames are built once per access unit and shared by every viewer; only
the rare per-viewer variants (catch-up, discontinuity) get a copy.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard
from urllib.parse import parse_qs

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

# A camera's streams, and what of a stream a viewer wants (docs/protocol.md).
MAIN = "main"
SUB = "sub"
STREAMS = (MAIN, SUB)
ALL_FRAMES = "all"
KEYFRAMES = "keyframes"
FRAMES = (ALL_FRAMES, KEYFRAMES)

# Bounds on what a client's stats message may claim; beyond them it is ignored.
MAX_STATS_SAMPLES = 64
MAX_LATENCY_MS = 60_000.0
MAX_DROPPED = 100_000
MAX_PING_ID = 2**53 - 1  # what a JavaScript number holds exactly


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


def init_message(camera: str, codec: str, width: int, height: int, *,
                 stream: str | None = None, frames: str | None = None,
                 streams: list[dict[str, Any]] | None = None,
                 time_us: int | None = None) -> str:
    """``stream``: which of the camera's streams this is; ``streams``: all of
    them with their sizes as far as known; ``time_us``: the relay's wall clock
    as the message was made, for a player's clock offset."""
    msg: dict[str, Any] = {
        "type": "init",
        "protocol": PROTOCOL_VERSION,
        "camera": camera,
        "codec": codec,
        "width": width,
        "height": height,
    }
    if stream is not None:
        msg["stream"] = stream
    if frames is not None:
        msg["frames"] = frames
    if streams is not None:
        msg["streams"] = streams
    if time_us is not None:
        msg["time"] = time_us
    return _dump(msg)


def status_message(state: CameraState | str, reason: str | None = None,
                   link: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "status", "state": state}
    if reason:
        msg["reason"] = reason
    if link:
        msg["link"] = link
    return _dump(msg)


def pong_message(ping_id: int | None, time_us: int) -> str:
    msg: dict[str, Any] = {"type": "pong", "time": time_us}
    if ping_id is not None:
        msg["id"] = ping_id
    return _dump(msg)


# --- what clients send ----------------------------------------------------------------------


def watch_options(target: str) -> tuple[str, bool]:
    """``?stream=main|sub&frames=all|keyframes`` of a /ws/ request target:
    the stream, and whether keyframes only. ProtocolError for other values."""
    query = parse_qs(target.partition("?")[2].partition("#")[0])
    stream = query.get("stream", [MAIN])[-1]
    frames = query.get("frames", [ALL_FRAMES])[-1]
    if stream not in STREAMS:
        raise ProtocolError("stream must be main or sub")
    if frames not in FRAMES:
        raise ProtocolError("frames must be all or keyframes")
    return stream, frames == KEYFRAMES


class ProtocolError(ValueError):
    """A client's message breaks the protocol: the connection closes with 1008
    and this reason."""


@dataclass(frozen=True, slots=True)
class Select:
    """Switch stream and/or frames; None keeps the current choice."""

    stream: str | None = None
    frames: str | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """A player's report: latencies (ms) of frames it painted, frames it skipped."""

    latency_ms: tuple[float, ...] = ()
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | None = None


ClientMessage = Select | Stats | Ping


def parse_client_message(text: str) -> ClientMessage | None:
    """A client's text message; None for what the relay ignores (not JSON, not
    an object, an unknown type: forward compatibility). A ``select`` naming
    something that doesn't exist raises ProtocolError; a ``stats`` report is
    advisory, so whatever in it is out of bounds is left out instead."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested thousands deep
        return None
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == "select":
        stream, frames = obj.get("stream"), obj.get("frames")
        if stream is not None and stream not in STREAMS:
            raise ProtocolError("select: stream must be main or sub")
        if frames is not None and frames not in FRAMES:
            raise ProtocolError("select: frames must be all or keyframes")
        return Select(stream, frames)
    if kind == "stats":
        latency = obj.get("latency")
        samples = tuple(float(v) for v in latency[:MAX_STATS_SAMPLES]
                        if _number(v) and 0 <= v <= MAX_LATENCY_MS) \
            if isinstance(latency, list) else ()
        dropped = obj.get("dropped")
        return Stats(samples, dropped if _integer(dropped, MAX_DROPPED) else 0)
    if kind == "ping":
        ping_id = obj.get("id")
        return Ping(ping_id if _integer(ping_id, MAX_PING_ID) else None)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def _integer(value: Any, maximum: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


def with_link(status: str, link: str) -> str:
    """A status message (as sent) with its viewer's link state set: "slow" or "ok"."""
    msg = json.loads(status)
    return status_message(msg.get("state", CameraState.LIVE), msg.get("reason"), link)
