"""A source's thread runs the Ingest: the loop gets whole pictures, woken about
once per picture rather than once per packet, and the idle flush fires while
the thread is blocked in a read. A scripted source plays recorded packets in
its real thread; the sink records what reaches the loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvloop

from cxrelay.config import CameraConfig
from cxrelay.h264 import split_annexb
from cxrelay.ingest import IngestResult, StreamInfo
from cxrelay.sources.base import Source, SourceError, now_us
from tests.recordings import recording
from tests.support import wait_for

SC = b"\x00\x00\x00\x01"
TIMER_ROUNDS = 12  # sessions of one held picture each


class CountingLoop:
    """The real loop, counting the source thread's wake-ups."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, *args: Any) -> Any:
        self.wakeups += 1
        return self._loop.call_soon_threadsafe(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class TimerCountingLoop:
    """The real loop, counting the timers set on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.timers = 0

    def call_later(self, delay: float, *args: Any) -> Any:
        self.timers += 1
        return self._loop.call_later(delay, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class Sink:
    def __init__(self) -> None:
        self.results: list[IngestResult] = []
        self.events: list[str] = []
        self.calls_in_thread: set[str] = set()

    def _on_loop(self, event: str) -> None:
        self.events.append(event)
        if threading.current_thread() is not threading.main_thread():
            self.calls_in_thread.add(event)

    def source_connecting(self, source: Source) -> None:
        self._on_loop("connecting")

    def source_connected(self, source: Source, info: StreamInfo) -> None:
        self._on_loop("connected")

    def source_pictures(self, source: Source, result: IngestResult) -> None:
        self._on_loop("pictures")
        self.results.append(result)

    def source_failed(self, source: Source, reason: str) -> None:
        self._on_loop(f"failed: {reason}")

    @property
    def frames(self) -> list[Any]:
        return [f for r in self.results for f in r.frames]


class ScriptedSource(Source):
    """Reads its packets from a list, then blocks as in a read with no data."""

    kind = "scripted"

    def __init__(self, loop: Any, sink: Sink, packets: list[tuple[bytes, int]],
                 whole_units: bool = False, extradata: bytes = b"") -> None:
        super().__init__(CameraConfig("cam", "rtsp://h/x"), sink, loop)
        self.packets = packets
        self.info = StreamInfo(extradata, "tcp", whole_units)
        self.read_all = threading.Event()
        self.unblock = threading.Event()

    def session(self) -> None:
        if self.read_all.is_set():
            raise SourceError("camera gone")  # a retry: the packets were played once
        self.connected(self.info)
        for data, pts in self.packets:
            self.packet(data, pts, now_us())
        self.read_all.set()
        self.unblock.wait(30)
        raise SourceError("camera gone")


async def run(source: ScriptedSource, until: Any) -> None:
    async def reached() -> bool:
        return bool(until())

    source.start()
    try:
        await wait_for(reached, timeout=20, interval=0.01)
    finally:
        source.stop()
        source.unblock.set()
        assert await source.wait_stopped(10)


def nal_packets(name: str) -> list[tuple[bytes, int]]:
    return [(SC + nal, p.pts) for p in recording(name).packets for nal in split_annexb(p.data)]


async def test_one_wakeup_per_picture_not_per_packet() -> None:
    sink = Sink()
    loop = CountingLoop(asyncio.get_running_loop())
    packets = nal_packets("slices4")  # 60 pictures of 4 slices, with SEI, SPS, PPS
    pictures = len(recording("slices4").packets)
    source = ScriptedSource(loop, sink, packets)
    await run(source, lambda: len(sink.frames) == pictures)
    assert [f.pts_us for f in sink.frames] == [p.pts for p in recording("slices4").packets]
    assert len(packets) > 4 * pictures
    # One per picture; a few more while the first pictures teach the slice layout,
    # and for connecting/connected.
    assert pictures <= loop.wakeups <= pictures + 10
    assert sink.events[:2] == ["connecting", "connected"]
    assert not sink.calls_in_thread


async def test_idle_flush_fires_while_the_thread_is_blocked() -> None:
    """The first picture of a four-slice stream: four slices may not be all of
    it, so it waits for the idle flush, which the loop must fire while the
    source thread sits in its read."""
    sink = Sink()
    first = recording("slices4").packets[0]
    packets = [(SC + nal, first.pts) for nal in split_annexb(first.data)]
    source = ScriptedSource(asyncio.get_running_loop(), sink, packets)
    await run(source, lambda: sink.frames)
    assert source.read_all.is_set() and sink.events.count("pictures") == 1
    assert [f.pts_us for f in sink.frames] == [first.pts] and sink.frames[0].keyframe
    assert sink.results[0].inits  # the stream's parameters come with it


def test_the_idle_timer_fires_once_on_uvloop() -> None:
    """uvloop's timers count whole milliseconds and most fire a little early by
    time.monotonic(): a held picture's idle flush must take it then, not
    re-arm for the rest (a timer of 0 ms: a spin of some twenty callbacks)."""

    async def play() -> TimerCountingLoop:
        sink = Sink()
        loop = TimerCountingLoop(asyncio.get_running_loop())
        first = recording("slices4").packets[0]
        for _ in range(TIMER_ROUNDS):  # a session of one picture: held, then flushed
            packets = [(SC + nal, first.pts) for nal in split_annexb(first.data)]
            source = ScriptedSource(loop, sink, packets)
            source.hold_us = 30_000
            before = len(sink.frames)
            await run(source, lambda before=before: len(sink.frames) > before)
        return loop

    loop = uvloop.run(play())
    # A timer a picture; one more now and then (a slice came after it was armed).
    assert loop.timers <= 2 * TIMER_ROUNDS, loop.timers


async def test_fragments_rejoined_in_the_thread() -> None:
    """A real RTSP session's packets: FU-A fragments, two slices, AUD."""
    rec = recording("rtsp_gst")
    sink = Sink()
    loop = CountingLoop(asyncio.get_running_loop())
    source = ScriptedSource(loop, sink, [(data, pts) for pts, data, _ in rec.packets],
                            extradata=bytes.fromhex(rec.meta["extradata"]))
    pictures = len({pts for pts, _, _ in rec.packets})

    def done() -> bool:
        return source.read_all.is_set() and len(sink.frames) >= pictures - 1

    await run(source, done)
    stamps = [f.pts_us for f in sink.frames]
    assert stamps == sorted(set(stamps)) and len(stamps) >= pictures - 1
    assert len(rec.packets) > 4 * pictures
    # A picture whose slices are fragmented asks for the idle timer once (the
    # thread cannot know whether a full-size fragment is the last): at most two
    # wake-ups per picture, against one per packet before.
    assert loop.wakeups <= 2 * pictures + 10


async def test_a_failed_session_drops_its_half_picture() -> None:
    sink = Sink()
    first = recording("slices4").packets[0]
    packets = [(SC + nal, first.pts) for nal in split_annexb(first.data)]
    source = ScriptedSource(asyncio.get_running_loop(), sink, packets)
    source.hold_us = 1_000_000  # the session surely ends before the idle flush
    source.unblock.set()  # the camera goes away right after the picture's slices
    source.start()
    try:
        async def failed() -> bool:
            return "failed: camera gone" in sink.events

        await wait_for(failed, timeout=20, interval=0.01)
        await asyncio.sleep(1.5)  # past the idle flush; retries replay nothing
        assert sink.frames == []
    finally:
        source.stop()
        assert await source.wait_stopped(10)
