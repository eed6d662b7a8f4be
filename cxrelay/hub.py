"""One hub per camera stream: one upstream connection shared by all its viewers.

A camera has a main stream and may have a sub-stream (cameras.Camera holds
both); each is a hub of its own, with its own source, ingest, GOP cache and
``init``.

The hub runs entirely on the event loop. Its source thread hands it whole
pictures (its ``Ingest`` rejoins and assembles them there); the hub keeps the
GOP cache and fans frames out: each frame's WebSocket bytes are built once
(``wire.Outgoing``) and handed to every viewer, which writes them to its socket
or, if that is backed up, to its own bounded backlog. It never awaits a viewer,
and never loops over its viewers itself: frames and control messages go
through the loop's ``fanout.Fanout`` queue, a few milliseconds at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from cxrelay.backlog import Backlog, BacklogLimits
from cxrelay.config import CameraConfig
from cxrelay.fanout import Fanout, FrameJob, Job, TextJob
from cxrelay.gop import GopCache
from cxrelay.ingest import AccessUnit, IngestResult, StreamParams
from cxrelay.looplag import LoopLag
from cxrelay.metrics import Metrics
from cxrelay.protocol import (
    ALL_FRAMES,
    FLAG_DISCONTINUITY,
    FLAG_KEYFRAME,
    KEYFRAMES,
    MAIN,
    CameraState,
    encode_frame,
    init_message,
    status_message,
    with_flags,
)
from cxrelay.sources import Source, SourceSink, StreamInfo, create_source
from cxrelay.wire import Outgoing

log = structlog.get_logger("cxrelay.camera")

STATS_WINDOW_US = 5_000_000
# A frame that waited in the fan-out queue while the loop's thread did not run
# (a machine busy with other work) is not the relay falling behind, unless the
# frames queued behind it span this many delay bounds: then its viewers skip to
# the next keyframe all the same (the machine can't run the relay).
STARVED_MAX = 3

# Makes a camera's source (a thread, not yet started) that reports to the sink.
SourceFactory = Callable[[CameraConfig, SourceSink, asyncio.AbstractEventLoop], Source]
# The camera's streams and their sizes as far as known, for ``init``.
StreamList = Callable[[], list[dict[str, Any]]]


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class RateMeter:
    """Frames per second and bits per second over a sliding window."""

    def __init__(self, window_us: int = STATS_WINDOW_US) -> None:
        self.window_us = window_us
        self._samples: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def add(self, at_us: int, size: int) -> None:
        self._samples.append((at_us, size))
        self._bytes += size
        while self._samples and at_us - self._samples[0][0] > self.window_us:
            self._bytes -= self._samples.popleft()[1]

    def clear(self) -> None:
        self._samples.clear()
        self._bytes = 0

    def rates(self) -> tuple[float | None, int | None]:
        if len(self._samples) < 2:
            return None, None
        span = (self._samples[-1][0] - self._samples[0][0]) / 1e6
        if span <= 0:
            return None, None
        fps = (len(self._samples) - 1) / span
        return round(fps, 2), int(self._bytes * 8 / span)


class Subscriber(Protocol):
    """A viewer, as the hub sees it (the mirror of ``SourceSink``). Called on
    the loop; nothing but ``close`` may block, as the hub never awaits a viewer."""

    def join(self, first: list[str], catchup: list[bytes], *, still: bool = False) -> None:
        """Joining: control messages (init, status), then the frames since the
        last keyframe; with no frames, the viewer starts at the next keyframe.
        ``still``: ``catchup`` is the newest keyframe alone, a picture to show
        (not to decode and skip). A viewer may join again (another stream):
        what it had queued from the last one is then void."""

    def send_text(self, text: str) -> None:
        """A control message; never dropped."""

    def send_frame(self, frame: Outgoing) -> int:
        """A live frame, framed once and shared by every viewer (don't modify
        it; a viewer that writes ``frame.wire`` as it is counts itself in
        ``frame.delivered``). Returns how many frames the viewer dropped to
        stay within its limits (it logs why itself)."""

    async def close(self, code: int, reason: str) -> None:
        """Close the viewer's connection (camera removed, relay stopping)."""


class CameraHub:
    def __init__(
        self,
        camera: CameraConfig,
        *,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        limits: BacklogLimits | None = None,
        source_factory: SourceFactory = create_source,
        stream: str = MAIN,
        streams: StreamList | None = None,
    ) -> None:
        self.camera = camera  # this stream's settings (CameraConfig.stream)
        self.stream = stream
        self.limits = limits or BacklogLimits()  # each new viewer's backlog; a reload may change it
        self.metrics = metrics
        self.loop = loop
        self.viewers: set[Subscriber] = set()
        self._motion: set[Subscriber] = set()  # the viewers of every frame, not keyframes only
        # Fan-out jobs are numbered; a viewer is handed only those made after it joined.
        self._jobs = 0
        self._joined: dict[Subscriber, int] = {}
        self.fanout = Fanout.of(loop)
        # The ingest time of this hub's frames still waiting in the fan-out queue,
        # oldest first.
        self._queued: deque[int] = deque()
        self._resync = False  # skipping to the next keyframe: the relay was behind
        self._streams = streams or (lambda: [self.size()])
        self.state = CameraState.IDLE
        self.reason: str | None = None
        self.last_error: str | None = None
        self.log = log.bind(camera=camera.name, stream=stream)
        self._source_factory = source_factory
        self._source: Source | None = None
        self._retired: list[Source] = []
        self._gop = GopCache(camera.gop_cache_bytes)
        self._stream_key: tuple[str, int, int] | None = None
        self._need_init = True
        self._connections = 0
        self._failing_reason: str | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._last_keyframe_us: int | None = None
        self._rate = RateMeter()
        metrics.add_stream(camera.name, stream)
        # Labelled children looked up once: labels() takes a lock, and these
        # are counted for every frame.
        self._frames_in = metrics.frames_in.labels(camera.name, stream)
        self._bytes_in = metrics.bytes_in.labels(camera.name, stream)
        self._dropped_slow = metrics.frames_dropped.labels("slow_viewer")
        self._dropped_busy = metrics.frames_dropped.labels("relay_busy")

    @property
    def name(self) -> str:
        return self.camera.name

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.camera.on_demand:
            self._start_source()

    def _start_source(self) -> None:
        if self._source is not None:
            return
        self._set_state(CameraState.CONNECTING)
        self._source = self._source_factory(self.camera, self, self.loop)
        self._source.start()

    def _stop_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.stop()
            # Kept until its thread ends (close() waits for them); an on-demand
            # camera stops and starts for months, so forget the finished ones.
            self._retired = [s for s in self._retired if s.running] + [source]
        self._reset_stream()

    async def close(self, code: int, reason: str) -> None:
        """Stop the camera and close its viewers (removed, or shutting down)."""
        self._cancel_linger()
        self._stop_source()
        viewers = list(self.viewers)
        # Side by side: a source stuck in a read must not add its wait to the viewers'.
        await asyncio.gather(*(v.close(code, reason) for v in viewers),
                             self.wait_sources_stopped(2.0), return_exceptions=True)
        self.metrics.remove_stream(self.name, self.stream)

    async def wait_sources_stopped(self, timeout: float) -> None:
        retired, self._retired = self._retired, []
        await asyncio.gather(*(s.wait_stopped(timeout) for s in retired))

    def reconfigure(self, camera: CameraConfig) -> None:
        """New settings for the same camera name: restart the source, keep the
        viewers (they get `connecting`, then a new `init` and a keyframe)."""
        self._stop_source()
        self.camera = camera
        self._gop = GopCache(camera.gop_cache_bytes)
        self._connections = 0
        self._failing_reason = None
        self.last_error = None
        if not camera.on_demand or self.viewers:
            self._start_source()
        else:
            self._set_state(CameraState.IDLE)

    # --- viewers --------------------------------------------------------------------------------

    def new_backlog(self) -> Backlog[Any]:
        return self.limits.new_backlog()

    def attach(self, viewer: Subscriber, *, keyframes: bool = False) -> None:
        """A viewer joins: every frame, or (``keyframes``) keyframes only, stills
        for a thumbnail grid at a keyframe interval's fraction of the cost."""
        self._cancel_linger()
        if self.camera.on_demand:
            self._start_source()
        first: list[str] = []
        if self._stream_key is not None:
            first.append(self.init_message(keyframes=keyframes))
        first.append(status_message(self.state, self.reason))
        catchup = self._gop.snapshot() if self.state == CameraState.LIVE else []
        if keyframes:
            viewer.join(first, catchup[:1], still=True)
        else:
            viewer.join(first, catchup)
            self._motion.add(viewer)
        self.viewers.add(viewer)
        self._joined[viewer] = self._jobs
        self._viewers_changed()

    def detach(self, viewer: Subscriber) -> None:
        self.viewers.discard(viewer)
        self._motion.discard(viewer)
        self._joined.pop(viewer, None)
        self._viewers_changed()
        if self.camera.on_demand and not self.viewers and self._source is not None:
            self._linger_timer = self.loop.call_later(self.camera.linger, self._linger_expired)

    def _viewers_changed(self) -> None:
        self.metrics.camera_viewers.labels(self.name, self.stream).set(len(self.viewers))

    def init_message(self, *, keyframes: bool) -> str:
        """The stream's ``init``, made now (it carries the relay's clock)."""
        assert self._stream_key is not None
        return init_message(self.name, *self._stream_key, stream=self.stream,
                            frames=KEYFRAMES if keyframes else ALL_FRAMES,
                            streams=self._streams(), time_us=wall_clock_us())

    def _linger_expired(self) -> None:
        self._linger_timer = None
        if not self.viewers:
            self.log.info("camera idle", reason=f"no viewers for {self.camera.linger:g}s")
            self._stop_source()
            self._set_state(CameraState.IDLE)

    def _cancel_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    # --- state ----------------------------------------------------------------------------------

    def _set_state(self, state: CameraState, reason: str | None = None) -> None:
        if (state, reason) == (self.state, self.reason):
            return
        self.state, self.reason = state, reason
        self.metrics.set_state(self.name, self.stream, state)
        if state == CameraState.IDLE:
            return  # nobody is watching an idle camera
        message = status_message(state, reason)
        self._send_text(lambda viewer: message)

    def _reset_stream(self) -> None:
        self._gop.clear()
        self._need_init = True
        self._rate.clear()
        self._last_keyframe_us = None

    def size(self) -> dict[str, Any]:
        """The stream's name, picture size and codec (None until it has been
        pulled once): a player picks a stream it can decode, of the size it needs."""
        codec, width, height = self._stream_key or (None, None, None)
        return {"name": self.stream, "width": width, "height": height, "codec": codec}

    def newest_gop(self) -> tuple[str, list[bytes]] | None:
        """The live stream's codec and its frames since the last keyframe (protocol
        v1 messages, the first a keyframe; shared, don't modify), for snapshots;
        None when there are none."""
        if self.state != CameraState.LIVE or self._stream_key is None:
            return None
        frames = self._gop.snapshot()
        return (self._stream_key[0], frames) if frames else None

    def info(self) -> dict[str, Any]:
        fps, bitrate = self._rate.rates() if self.state == CameraState.LIVE else (None, None)
        codec, width, height = self._stream_key or (None, None, None)
        return {
            "name": self.name,
            "stream": self.stream,
            "state": self.state,
            "codec": codec,
            "width": width,
            "height": height,
            "fps": fps,
            "bitrate": bitrate,
            "viewers": len(self.viewers),
            "last_error": self.last_error,
            "on_demand": self.camera.on_demand,
        }

    # --- source events (SourceSink), on the loop --------------------------------------------------

    def source_connecting(self, source: Source) -> None:
        if source is self._source and self.state == CameraState.IDLE:
            self._set_state(CameraState.CONNECTING)

    def source_connected(self, source: Source, info: StreamInfo) -> None:
        if source is not self._source:
            return
        self._reset_stream()
        self._connections += 1
        details = {"transport": info.transport} if info.transport else {}
        if self._failing_reason is not None or self._connections > 1:
            self.metrics.reconnects.labels(self.name, self.stream).inc()
            self.log.info("camera reconnected", **details)
        else:
            self.log.info("camera connected", **details)
        self._failing_reason = None

    def source_failed(self, source: Source, reason: str) -> None:
        if source is not self._source:
            return
        # Log a failure once, not on every retry; a new reason is news.
        if reason != self._failing_reason:
            self.log.warning("camera failed", reason=reason)
        else:
            self.log.debug("camera still failing", reason=reason)
        self._failing_reason = reason
        self.last_error = reason
        self._reset_stream()
        self._set_state(CameraState.OFFLINE, reason)

    def source_pictures(self, source: Source, result: IngestResult) -> None:
        if source is not self._source:
            return
        for index, unit in enumerate(result.frames):
            params = result.inits.get(index)
            if params is not None:
                self._new_stream(params)
            self._publish(unit)
        if result.drops:
            self._count_drops(result.drops)

    def _count_drops(self, drops: dict[str, int]) -> None:
        """Pictures the assembler refused (lost packets, garbage) into the metrics."""
        for reason, count in drops.items():
            self.metrics.frames_dropped.labels(reason).inc(count)
        if drops.get("internal_error"):
            self.log.error("bug in picture assembly, pictures dropped", **drops)
        else:
            self.log.debug("pictures dropped", **drops)

    # --- fan-out --------------------------------------------------------------------------------

    def _publish(self, unit: AccessUnit) -> None:
        if unit.keyframe:
            self._on_keyframe(unit)
        if self._need_init:
            return  # no decoder can start before a keyframe
        flags = FLAG_KEYFRAME if unit.keyframe else 0
        if unit.discontinuity:
            flags |= FLAG_DISCONTINUITY
        message = encode_frame(flags, unit.pts_us, unit.ingest_us, unit.data)
        lost = self._gop.add(message, keyframe=unit.keyframe)
        if lost:
            self.metrics.frames_dropped.labels("gop_cache_overflow").inc(lost)
            self.log.warning("gop cache overflow", frames=lost,
                             limit_bytes=self._gop.max_bytes)
        self._frames_in.inc()
        self._bytes_in.inc(len(unit.data))
        self._rate.add(unit.ingest_us, len(unit.data))
        if not self.viewers:
            return
        if self._behind(unit):
            return
        if self._resync:  # the first frame after the skip: the viewers' decoders know
            self._resync = False
            message = with_flags(message, FLAG_DISCONTINUITY)
        frame = Outgoing.frame(message, keyframe=unit.keyframe)
        self._queued.append(unit.ingest_us)
        self._jobs += 1
        self.fanout.push(FrameJob(self._jobs, list(self.viewers if unit.keyframe else
                                                   self._motion),
                                  self._joined, frame, self._frame_done))

    def _behind(self, unit: AccessUnit) -> bool:
        """Is the relay itself so far behind that this frame must go? Then every
        viewer skips to the next keyframe, flagged as a discontinuity, as a slow
        viewer does on its own. Behind: the oldest of this hub's frames not yet
        handed out (in the fan-out queue, or this one) came from the camera more
        than the delay bound ago, and the loop's thread used more than the bound
        of CPU meanwhile: more cameras and viewers than the CPU can serve. The
        wait may lie in the fan-out queue or before the hub, in the loop's
        callback queue that the source threads hand pictures to. Time the thread
        did not run (a machine busy with other work) is no sign the relay can't
        keep up: both queues drain as soon as it runs. Unless the fan-out queue
        itself holds frames spanning STARVED_MAX bounds (the source kept up, the
        loop never did); a whole process that stood still leaves one old frame
        there, and nothing to skip. Without a loop-lag monitor (tests of the hub
        alone) only the fan-out queue's span counts."""
        if self._resync and not unit.keyframe:
            self._dropped_busy.inc()
            return True
        bound_us = self.limits.max_delay * 1e6
        lag = LoopLag.of(self.loop)
        now_us = max(unit.ingest_us, lag.now_us() if lag is not None else 0)
        if unit.keyframe:
            # The place to start again, unless it is itself a bound late with the loop busy
            # all along: the next one will be newer (a camera that sends only keyframes
            # would otherwise queue without end).
            if lag is None or now_us - unit.ingest_us <= bound_us:
                return False
            busy_us = lag.cpu_used_since(unit.ingest_us)  # a system call: only when late
            if busy_us is None or busy_us <= bound_us:
                return False
            self._resync = True
            self._dropped_busy.inc()
            return True
        queued = self._queued
        oldest_us = queued[0] if queued else unit.ingest_us
        waiting_us = now_us - oldest_us
        if waiting_us <= bound_us:
            return False
        busy_us = lag.cpu_used_since(oldest_us) if lag is not None else None
        if busy_us is None:
            busy_us = waiting_us
        span_us = (queued[-1] if queued else unit.ingest_us) - oldest_us
        if busy_us <= bound_us and span_us <= STARVED_MAX * bound_us:
            return False
        if not self._resync:
            self.log.warning("relay behind, viewers skip to the next keyframe",
                             queued_frames=len(queued), behind_ms=waiting_us // 1000,
                             loop_cpu_ms=busy_us // 1000)
        self._resync = True
        self._dropped_busy.inc()
        return True

    def _frame_done(self, job: Job) -> None:
        assert isinstance(job, FrameJob)
        self._queued.popleft()
        frame = job.frame
        if frame.delivered:  # counted once for every viewer it went straight to
            self.metrics.delivered(len(frame.wire), frame.ingest_us, frame.delivered)
        if job.dropped:
            self._dropped_slow.inc(job.dropped)

    def _send_text(self, text_for: Callable[[Subscriber], str]) -> None:
        """A control message to every viewer, in order with the frames."""
        if self.viewers:
            self._jobs += 1
            self.fanout.push(TextJob(self._jobs, list(self.viewers), self._joined, text_for))

    def _new_stream(self, params: StreamParams) -> None:
        """The keyframe about to be published starts a stream with these parameters."""
        key = (params.codec, params.width, params.height)
        if self._stream_key is not None and key != self._stream_key:
            self.log.info("stream changed", codec=params.codec, width=params.width,
                          height=params.height)
        self._stream_key = key
        self._need_init = False
        self._gop.clear()
        if self.viewers:
            inits = {k: self.init_message(keyframes=k) for k in (False, True)}
            self._send_text(lambda viewer: inits[viewer not in self._motion])

    def _on_keyframe(self, unit: AccessUnit) -> None:
        if self._last_keyframe_us is not None:
            interval = (unit.ingest_us - self._last_keyframe_us) / 1e6
            self.metrics.keyframe_interval.labels(self.name, self.stream).set(interval)
        self._last_keyframe_us = unit.ingest_us
        if self.state != CameraState.LIVE:
            self._set_state(CameraState.LIVE)
