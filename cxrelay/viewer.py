"""One viewer: its WebSocket, its bounded backlog, and the task that drains it.

The hub never awaits a viewer. It drops messages into each viewer's backlog
(synchronously, on the loop) and wakes its pump; a slow socket only ever
blocks its own pump, and the backlog policy bounds what piles up meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from websockets.asyncio.server import ServerConnection

from cxrelay.backlog import Backlog
from cxrelay.metrics import Metrics
from cxrelay.protocol import FLAG_CATCHUP, HEADER, with_flags

_ids = itertools.count(1)


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class Viewer:
    def __init__(self, ws: ServerConnection, backlog: Backlog, metrics: Metrics) -> None:
        self.id = f"v{next(_ids)}"
        self.ws = ws
        self.backlog = backlog
        self.metrics = metrics
        self.sent_frames = 0
        self._wake = asyncio.Event()
        self._first: list[str] = []
        self._catchup: list[bytes] = []

    def join(self, first: list[str], catchup: list[bytes]) -> None:
        """What a joining viewer gets before live frames: init/status, then the
        GOP cache. Kept aside rather than queued so the backlog's bounds apply
        to live frames only."""
        self._first = first
        self._catchup = catchup
        if not catchup:
            self.backlog.wait_for_keyframe()
        self._wake.set()

    def send_text(self, text: str) -> None:
        self.backlog.put_text(text, monotonic_us())
        self._wake.set()

    def send_frame(self, message: bytes, *, keyframe: bool) -> int:
        dropped = self.backlog.put_frame(message, keyframe=keyframe, now_us=monotonic_us())
        self._wake.set()
        return dropped

    async def pump(self) -> None:
        """Send everything, in order, until the connection closes."""
        ws = self.ws
        for text in self._first:
            await ws.send(text)
        catchup, self._catchup = self._catchup, []
        for message in catchup:
            await ws.send(with_flags(message, FLAG_CATCHUP))
            self.metrics.bytes_sent.inc(len(message))
        while True:
            item = self.backlog.pop()
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await ws.send(item)
            if isinstance(item, bytes):
                self.sent_frames += 1
                self.metrics.bytes_sent.inc(len(item))
                ingest_us = HEADER.unpack_from(item)[2]
                self.metrics.latency.observe(max(0.0, time.time() - ingest_us / 1e6))
