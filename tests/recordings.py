"""The recorded bitstreams in tests/data (made by tests/data/make_bitstreams.py).

Each recording is a raw Annex B file, NAME.h264, and a JSON sidecar, NAME.json, whose
"packets" list gives each access unit as [pts in µs, size in bytes, keyframe].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

DATA = Path(__file__).resolve().parent / "data"


class Packet(NamedTuple):
    """One true access unit, as the encoder wrote it."""

    pts: int  # µs
    data: bytes
    keyframe: bool


@dataclass(frozen=True)
class Recording:
    meta: dict[str, Any]
    packets: tuple[Packet, ...]

    @property
    def units(self) -> list[bytes]:
        """The access units' bytes, in decode order."""
        return [packet.data for packet in self.packets]


def recording(name: str, suffix: str = ".h264") -> Recording:
    """tests/data/NAME{suffix} cut into its access units by NAME.json."""
    meta = json.loads((DATA / f"{name}.json").read_text())
    raw = (DATA / f"{name}{suffix}").read_bytes()
    packets, offset = [], 0
    for pts, size, keyframe in meta["packets"]:
        packets.append(Packet(pts, raw[offset:offset + size], bool(keyframe)))
        offset += size
    if offset != len(raw):
        raise ValueError(f"{name}.json describes {offset} bytes, {name}{suffix} has {len(raw)}")
    return Recording(meta, tuple(packets))
