"""A protocol v1 client on the far side of a shaped link, recording every message's delay.

Delay is the wall clock at arrival minus the relay's ingest time in the frame header: both
ends run on this machine, so the clocks agree, and the difference is what the relay's
queues, the kernels and the link added (not the camera, not the decoder).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect

from cxrelay.protocol import FLAG_CATCHUP, FLAG_DISCONTINUITY, FLAG_KEYFRAME, HEADER
from tests.links.netns import NetnsLink


@dataclass(slots=True)
class Arrival:
    at: float  # monotonic seconds, since the client connected
    delay: float  # s: arrival wall clock - relay ingest time
    flags: int
    size: int

    @property
    def keyframe(self) -> bool:
        return bool(self.flags & FLAG_KEYFRAME)

    @property
    def discontinuity(self) -> bool:
        return bool(self.flags & FLAG_DISCONTINUITY)

    @property
    def catchup(self) -> bool:
        return bool(self.flags & FLAG_CATCHUP)


@dataclass
class Watch:
    frames: list[Arrival] = field(default_factory=list)
    texts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def live(self, since: float = 0.0, until: float = float("inf")) -> list[Arrival]:
        """Frames that arrived in [since, until) (seconds since connecting), catch-up excluded."""
        return [f for f in self.frames if since <= f.at < until and not f.catchup]


async def watch(link: NetnsLink, camera: str, seconds: float, *, port: int = 8080,
                result: Watch | None = None, read_delay: float = 0.0) -> Watch:
    """Watch `camera` through the link for `seconds`; everything received goes into the
    result (pass one in to look at it while this runs). `read_delay`: sleep this long
    after each message (a slow reader rather than a slow link)."""
    result = result if result is not None else Watch()
    sock = await asyncio.to_thread(link.client_socket, port)
    started = time.monotonic()
    async with connect(f"ws://{link.relay_ip}:{port}/ws/{camera}", sock=sock,
                       compression=None, max_size=None, open_timeout=20,
                       ping_interval=None) as ws:  # browsers don't ping
        deadline = started + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            now = time.monotonic()
            if isinstance(message, str):
                result.texts.append((now - started, json.loads(message)))
                continue
            flags, _pts, ingest_us = HEADER.unpack_from(message)
            delay = time.time() - ingest_us / 1e6
            result.frames.append(Arrival(now - started, delay, flags, len(message)))
            if read_delay:
                await asyncio.sleep(read_delay)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
