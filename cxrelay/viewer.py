"""A viewer session: one WebSocket, from the upgrade to its close.

The hub never awaits a viewer. It drops messages into each viewer's backlog
(synchronously, on the loop, through ``hub.Subscriber``) and wakes its pump;
a slow socket only ever blocks its own pump, and the backlog policy bounds
what piles up meanwhile. The rest of a session lives here too: its place in
the per-client connection count, its token's expiry, what it may send, and
its log lines.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from cxrelay.access import Claims, ConnectionLimiter
from cxrelay.backlog import Backlog
from cxrelay.metrics import Metrics
from cxrelay.protocol import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    FLAG_CATCHUP,
    HEADER,
    with_flags,
)

if TYPE_CHECKING:
    from cxrelay.hub import CameraHub

log = structlog.get_logger("cxrelay.viewer")

_ids = itertools.count(1)
# Closes started from a timer: held here until done (the loop keeps only weak references).
_closing: set[asyncio.Future[None]] = set()


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def peer_address(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


class Viewer:
    """One viewer: a ``hub.Subscriber`` with its own bounded backlog, and the
    owner of its session (``watch``)."""

    def __init__(self, ws: ServerConnection, backlog: Backlog, metrics: Metrics,
                 camera: str | None = None) -> None:
        self.id = f"v{next(_ids)}"
        self.ws = ws
        self.backlog = backlog
        self.metrics = metrics
        self.sent_frames = 0
        self.log = log.bind(**({"camera": camera} if camera else {}), viewer=self.id)
        self._wake = asyncio.Event()
        self._first: list[str] = []
        self._catchup: list[bytes] = []

    # --- Subscriber: the hub's calls, on the loop ---------------------------------------------

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
        overflows = self.backlog.overflows
        dropped = self.backlog.put_frame(message, keyframe=keyframe, now_us=monotonic_us())
        self._wake.set()
        if self.backlog.overflows != overflows:  # one line per overflow, not per frame
            self.log.info("frames dropped", frames=dropped, reason="slow viewer")
        return dropped

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    # --- the session ----------------------------------------------------------------------------

    async def watch(self, hub: CameraHub, *, claims: Claims | None,
                    limiter: ConnectionLimiter) -> None:
        """The whole session of an admitted viewer: counted against its
        client's limit, attached to the hub, pumped until either side closes
        (or its token expires), then detached."""
        ws = self.ws
        peer = peer_address(ws)
        if not limiter.acquire(peer):  # raced past the check before the upgrade
            await ws.close(CLOSE_TRY_AGAIN, "too many connections")
            return
        self.log.info("viewer joined", peer=peer,
                      **({"subject": claims.subject} if claims and claims.subject else {}))
        started = time.monotonic()
        hub.attach(self)
        self.metrics.viewers.inc()
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump())
        expiry = None
        if claims is not None:
            expiry = loop.call_later(max(0.0, claims.remaining()), self._expire)
        reason = "closed"
        try:
            reason = await self._receive()
        finally:
            pump.cancel()
            if expiry is not None:
                expiry.cancel()
            hub.detach(self)
            limiter.release(peer)
            self.metrics.viewers.dec()
            if ws.close_code is not None and reason == "closed":
                reason = f"closed {ws.close_code}" + (f" {ws.close_reason}" if ws.close_reason
                                                       else "")
            self.log.info("viewer left", reason=reason, frames=self.sent_frames,
                          seconds=round(time.monotonic() - started, 1))

    def _expire(self) -> None:
        task = asyncio.ensure_future(self.ws.close(CLOSE_POLICY, "token expired"))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _pump(self) -> None:
        try:
            await self.pump()
        except ConnectionClosed:
            pass
        except Exception:
            self.log.exception("viewer failed")
            await self.ws.close(CLOSE_INTERNAL, "internal error")

    async def _receive(self) -> str:
        """Clients need send nothing; text is ignored (forward compatibility),
        binary is refused. Reading also keeps pings and closes flowing."""
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self.ws.close(CLOSE_UNSUPPORTED, "binary messages are not accepted")
                    return "sent a binary message"
        except ConnectionClosed:
            pass
        return "closed"

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
