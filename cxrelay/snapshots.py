"""Snapshots: a camera's newest picture as a JPEG, decoded on request.

The relay never decodes in its live path. A snapshot request decodes the GOP
cache (the frames since the last keyframe) up to the newest frame, so it needs
no keyframe to wait for, in a small thread pool shared by every camera that
bounds the CPU snapshots can take. Per camera:

- one decode at a time; requests that come meanwhile share its result;
- the decoder is kept between requests (for a while), so the next request
  decodes only the frames that came since, not the whole GOP again;
- the JPEG is cached per frame and width: requests for a picture already
  encoded cost nothing;
- the last picture is kept (as a JPEG once its decoder goes cold), so a camera
  that goes offline can still show what it last saw, marked with its age.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import av
import structlog
from av.video.frame import VideoFrame

from cxrelay.decoding import Decoder, decode_jpeg, encode_jpeg
from cxrelay.metrics import Metrics
from cxrelay.protocol import HEADER, HEADER_SIZE

log = structlog.get_logger("cxrelay.snapshots")

# Decodes and encodes in flight at once, across all cameras: half the cores,
# so snapshots never take the machine from the relay (FFmpeg's own threads
# are off: one decode is one core).
WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))
MAX_WAITING = 64  # requests waiting for the pool at once; past this: 503
COLD_AFTER = 30.0  # seconds without a request before a camera's decoder is let go
MAX_JPEGS = 8  # widths cached per picture
MIN_WIDTH = 16

T = TypeVar("T")


class SnapshotError(Exception):
    """No picture to give: a one-line reason (the HTTP status is the caller's)."""


@dataclass(frozen=True, slots=True)
class Still:
    """A picture a snapshot can show, and when the relay received its frame."""

    frame: tuple[int, int]  # (ingest µs, pts µs) of its access unit: its identity
    received_us: int
    width: int
    height: int
    picture: VideoFrame | None  # decoded; None once cold (then ``jpeg`` holds it)
    jpeg: bytes | None = None  # full size, kept after the picture is let go

    def age(self, now_us: int | None = None) -> float:
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        return max(0.0, (now_us - self.received_us) / 1e6)


def frame_id(message: bytes) -> tuple[int, int]:
    _, pts, ingest = HEADER.unpack_from(message)
    return ingest, pts


class CameraStills:
    """One camera's decoder, newest picture and JPEG cache. On the loop; its
    decoder is only touched by the one decode job in flight."""

    def __init__(self, name: str, pool: SnapshotPool) -> None:
        self.name = name
        self.pool = pool
        self.still: Still | None = None
        self._jpegs: dict[int, bytes] = {}  # by width, for self.still
        self._decoding: asyncio.Task[Still] | None = None
        self._encoding: dict[int, asyncio.Task[bytes]] = {}
        self._decoder: Decoder | None = None
        self._decoded: tuple[tuple[int, int], tuple[int, int]] | None = None  # (GOP, last frame)
        self._cold: asyncio.TimerHandle | None = None
        self._cooling: asyncio.Task[None] | None = None

    # -- the picture -------------------------------------------------------------------------

    async def newest(self, codec: str, gop: list[bytes]) -> Still:
        """The picture of the newest frame in ``gop`` (protocol v1 messages since
        the last keyframe), decoded now or shared with a decode in flight."""
        self._warm()
        still = self.still
        if still is not None and still.frame == frame_id(gop[-1]):
            return still
        if self._decoding is None:
            self._decoding = asyncio.ensure_future(self._decode(codec, gop))
        return await asyncio.shield(self._decoding)

    async def _decode(self, codec: str, gop: list[bytes]) -> Still:
        try:
            still = await self.pool.run(self._decode_job, codec, gop)
        finally:
            self._decoding = None
        if self.still is None or self.still.frame != still.frame:
            self.still, self._jpegs = still, {}
        return still

    def _decode_job(self, codec: str, gop: list[bytes]) -> Still:
        """In the pool: decode what this camera's decoder has not seen yet."""
        started = time.perf_counter()
        key, newest = frame_id(gop[0]), frame_id(gop[-1])
        start = 0
        decoder = self._decoder
        if decoder is not None and decoder.codec == codec and self._decoded is not None \
                and self._decoded[0] == key:
            done = self._decoded[1]
            start = next((i + 1 for i, m in enumerate(gop) if frame_id(m) == done), 0)
        if decoder is None or decoder.codec != codec or start == 0:
            decoder = Decoder(codec, threads=1)
        self._decoder = None  # until it decoded cleanly
        units = ((m[HEADER_SIZE:], frame_id(m)[1], frame_id(m)) for m in gop[start:])
        try:
            out = decoder.decode(units) if start < len(gop) else None
            if out is None or out[1] != newest:
                out = decoder.drain() or out  # B-frames: the newest is still inside
                self._decoded = None
            else:
                self._decoder, self._decoded = decoder, (key, newest)
        except av.FFmpegError as exc:
            raise SnapshotError(f"camera {self.name}: the picture does not decode ({exc})") \
                from None
        if out is None:
            raise SnapshotError(f"camera {self.name}: no picture decoded yet")
        picture, tag = out
        assert isinstance(tag, tuple)
        self.pool.metrics.snapshot_decodes.inc()
        self.pool.metrics.snapshot_decode_seconds.observe(time.perf_counter() - started)
        return Still(frame=tag, received_us=tag[0], width=picture.width, height=picture.height,
                     picture=picture)

    # -- the JPEG ----------------------------------------------------------------------------

    async def jpeg(self, still: Still, width: int | None) -> bytes:
        """``still`` as a JPEG ``width`` wide (None: full size), cached per width."""
        self._warm()
        size = min(width or still.width, still.width)
        if still is not self.still:
            return await self.pool.run(_encode, still, size)
        if (cached := self._jpegs.get(size)) is not None:
            return cached
        task = self._encoding.get(size)
        if task is None:
            task = self._encoding[size] = asyncio.ensure_future(self._encode(still, size))
        return await asyncio.shield(task)

    async def _encode(self, still: Still, size: int) -> bytes:
        try:
            data = await self.pool.run(_encode, still, size)
        finally:
            self._encoding.pop(size, None)
        if still is self.still:
            if len(self._jpegs) >= MAX_JPEGS:
                self._jpegs.pop(next(iter(self._jpegs)))
            self._jpegs[size] = data
        return data

    # -- going cold --------------------------------------------------------------------------

    def _warm(self) -> None:
        if self._cold is not None:
            self._cold.cancel()
        self._cold = asyncio.get_running_loop().call_later(COLD_AFTER, self._go_cold)

    def _go_cold(self) -> None:
        """Nobody asked for a while: let the decoder and the raw picture go, and
        keep the picture as a full-size JPEG (for when the camera is offline)."""
        self._cold = None
        if self._decoding is not None or self._encoding or self._cooling is not None:
            self._warm()
            return
        self._decoder = self._decoded = None
        still = self.still
        if still is not None and still.picture is not None:
            self._cooling = asyncio.ensure_future(self._keep(still))

    async def _keep(self, still: Still) -> None:
        try:
            size = still.width
            cached = self._jpegs.get(size)
            data = cached if cached is not None else await self.pool.run(_encode, still, size)
        except (SnapshotError, av.FFmpegError) as exc:
            log.warning("snapshot not kept", camera=self.name, error=str(exc))
            return
        finally:
            self._cooling = None
        if self.still is still:
            self.still = Still(still.frame, still.received_us, still.width, still.height,
                               picture=None, jpeg=data)
            self._jpegs = {size: data}


def _encode(still: Still, width: int) -> bytes:
    """In the pool: a still as a JPEG ``width`` wide."""
    if still.picture is not None:
        return encode_jpeg(still.picture, width)
    assert still.jpeg is not None
    if width >= still.width:
        return still.jpeg
    return encode_jpeg(decode_jpeg(still.jpeg), width)


class SnapshotPool:
    """The threads every camera's snapshots run in, and the cap on waiting."""

    def __init__(self, metrics: Metrics, workers: int = WORKERS) -> None:
        self.metrics = metrics
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="cxrelay-snapshot")
        self._waiting = 0

    async def run(self, job: Callable[..., T], *args: object) -> T:
        if self._waiting >= MAX_WAITING:
            raise SnapshotBusy(f"{MAX_WAITING} snapshots are already being made; try again")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job, *args)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class SnapshotBusy(SnapshotError):
    """Too many snapshot jobs queued."""


class Snapshots:
    """Every camera stream's stills, by camera name and stream, over one pool."""

    def __init__(self, metrics: Metrics, workers: int = WORKERS) -> None:
        self.pool = SnapshotPool(metrics, workers)
        self._cameras: dict[tuple[str, str], CameraStills] = {}

    def camera(self, name: str, stream: str) -> CameraStills:
        """The stills of one stream of a camera."""
        stills = self._cameras.get((name, stream))
        if stills is None:
            stills = self._cameras[name, stream] = CameraStills(name, self.pool)
        return stills

    def close(self) -> None:
        self.pool.close()
