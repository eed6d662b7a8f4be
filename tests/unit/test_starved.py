"""A machine briefly short of CPU (other processes, a burst): the relay's loop runs late,
then hands out a second of frames at once. Neither the fan-out's "relay behind" nor a
viewer's link ledger may take that for a relay or a link that can't keep up; a relay
that really is behind, and a link that really is slow, must still be found.

The clocks are fakes: the viewer's wall clock, the loop thread's CPU wait (LoopLag),
and a link that drains at a set rate on the fake clock (SIOCOUTQ's part)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cxrelay import viewer as viewer_module
from cxrelay.backlog import BacklogLimits
from cxrelay.config import CameraConfig
from cxrelay.hub import STARVED_MAX, CameraHub
from cxrelay.looplag import LoopLag
from cxrelay.metrics import Metrics
from cxrelay.protocol import FLAG_DISCONTINUITY, FLAG_KEYFRAME, Frame, encode_frame
from cxrelay.viewer import Viewer
from cxrelay.wire import Outgoing
from tests.recordings import recording
from tests.unit.fake_connection import FakeConnection
from tests.unit.test_hub import FakeSources, access_units, connect, frames_of, new_viewer

FRAME_US = 40_000
UNITS = recording("baseline").units  # a keyframe every second, about 400 kbit/s
KEYS = {i for i, u in enumerate(UNITS) if (u[4] & 0x1F) in (5, 7)}
STREAM = sum(len(u) for u in UNITS) / len(UNITS) * 1e6 / FRAME_US  # bytes/s
START_US = 1_700_000_000_000_000


# --- the link ledger, through the viewer ----------------------------------------------------


class Link:
    """The fake clock, and a link behind the viewer's socket that carries `rate` bytes/s
    of what was written to it (the fake transport takes every write at once)."""

    def __init__(self, viewer: Viewer, rate: float) -> None:
        self.viewer = viewer
        self.rate = rate
        self.now_us = START_US
        self.crossed = 0.0

    def written(self) -> int:
        return len(self.viewer.transport.delivered)  # type: ignore[attr-defined]

    def advance(self, to_us: int) -> None:
        if to_us > self.now_us:
            self.crossed = min(self.written(),
                               self.crossed + self.rate * (to_us - self.now_us) / 1e6)
            self.now_us = to_us

    def unacked(self) -> int:
        return self.written() - int(self.crossed)


@pytest.fixture
def link_viewer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Viewer, Any]]:
    viewer = Viewer(FakeConnection(), BacklogLimits().new_backlog(), Metrics())  # type: ignore[arg-type]
    links: list[Link] = []

    def make(rate: float) -> Link:
        link = Link(viewer, rate)
        links.append(link)
        viewer._unacked = link.unacked  # what SIOCOUTQ would say
        viewer._ledger = viewer.link
        monkeypatch.setattr(viewer_module, "wall_us", lambda: link.now_us)
        return link

    viewer.join(['{"type":"status","state":"live"}'], [])
    yield viewer, make


def play(viewer: Viewer, link: Link, until: float, since: float = 0,
         stall: tuple[float, float] | None = None, late: float = 0) -> list[Any]:
    """The camera's frames every 40 ms from `since` to `until` (seconds), each handed to
    the viewer `late` seconds after its ingest; during `stall` (from, to) the relay's
    loop gets no CPU, and at its end hands out every frame of the stall at once, as the
    fan-out does (one hand-out time per slice). Returns the frames the client got so far."""
    for i in range(int(since * 1e6) // FRAME_US, int(until * 1e6) // FRAME_US):
        ingest_us = START_US + i * FRAME_US
        handed_us = ingest_us + int(late * 1e6)
        if stall and stall[0] * 1e6 <= i * FRAME_US < stall[1] * 1e6:
            handed_us = START_US + int(stall[1] * 1e6)
        link.advance(handed_us)
        index = i % len(UNITS)
        frame = Outgoing.frame(encode_frame(FLAG_KEYFRAME if index in KEYS else 0, i * FRAME_US,
                                            ingest_us, UNITS[index]),
                               keyframe=index in KEYS)
        frame.handed_us = handed_us
        viewer.send_frame(frame)
    return frames_of(viewer)


@pytest.mark.parametrize("stall_seconds", [0.6, 1.5])
async def test_a_starved_relay_bursting_late_frames_to_a_fast_link_cuts_nothing(
        link_viewer: tuple[Viewer, Any], stall_seconds: float) -> None:
    """The relay's loop stalls (no CPU) and then writes the stall's frames in one go,
    faster than any link takes them, all far older than the bound's half. The link
    (ten times the stream) did nothing wrong: every frame, none flagged, never slow."""
    viewer, make = link_viewer
    link = make(10 * STREAM)
    got = play(viewer, link, 12, stall=(5.0, 5.0 + stall_seconds))
    assert viewer.link.cuts == 0 and not viewer.link.slow
    assert [f.pts_us // FRAME_US for f in got] == list(range(12 * 25))
    assert not any(f.flags & FLAG_DISCONTINUITY for f in got[1:])  # (the first starts it)
    assert not any('"link"' in m for m in viewer.ws.sent if isinstance(m, str))  # type: ignore[attr-defined]


@pytest.mark.parametrize("late", [0, 0.4])
async def test_a_link_slower_than_the_stream_still_goes_to_keyframes(
        link_viewer: tuple[Viewer, Any], late: float) -> None:
    """The same viewer behind a link half the stream: cut, told slow, keyframes; also
    when the relay hands every frame out late (a loop that runs behind all along)."""
    viewer, make = link_viewer
    link = make(0.5 * STREAM)
    got = play(viewer, link, 12, late=late)
    assert viewer.link.slow and viewer.link.cuts >= 1
    assert len(got) < 0.7 * 12 * 25
    assert any('"link":"slow"' in m for m in viewer.ws.sent if isinstance(m, str))  # type: ignore[attr-defined]


async def test_a_stall_of_the_link_itself_still_cuts(link_viewer: tuple[Viewer, Any]) -> None:
    """The relay keeps time; the link (ten times the stream) carries nothing for 2 s.
    That is the link's doing: the viewer is cut within the bound's half, and resumes
    at a keyframe, flagged."""
    viewer, make = link_viewer
    link = make(10 * STREAM)
    rate = link.rate
    got_before = len(play(viewer, link, 5))
    link.rate = 0
    play(viewer, link, 7, since=5)
    assert viewer.link.cuts == 1
    link.rate = rate
    got = play(viewer, link, 10, since=7)
    assert len(got) < 10 * 25
    resumed = got[got_before:]
    assert any(f.keyframe and f.flags & FLAG_DISCONTINUITY for f in resumed)
    assert got[-1].pts_us // FRAME_US == 10 * 25 - 1  # every frame again


# --- the fan-out's "relay behind" -----------------------------------------------------------


class StarvedLoop(LoopLag):
    """A loop-lag monitor whose clock and thread's CPU time the test sets (µs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        metrics = Metrics()
        super().__init__(metrics.loop_lag, metrics.loop_lag_own)
        self.used_us = 0
        self.clock_us = 0
        self._loop = loop
        self._by_loop[loop] = self
        self._ticks.append((0, 0))

    def at(self, clock_us: int, used_us: int) -> None:
        """Time passes: the wall clock reads `clock_us`, the thread has used `used_us`
        of CPU, and the monitor ticks."""
        self.clock_us, self.used_us = clock_us, used_us
        self._ticks.append((clock_us, used_us))

    def now_us(self) -> int:
        return self.clock_us

    def cpu_us(self, *, now: bool = False) -> int:
        return self.used_us


@pytest.fixture
async def starved_hub() -> AsyncIterator[tuple[CameraHub, Any, StarvedLoop]]:
    loop = asyncio.get_running_loop()
    sources = FakeSources()
    hub = CameraHub(CameraConfig("cam", "rtsp://h/x"), metrics=Metrics(), loop=loop,
                    source_factory=sources)
    hub.start()
    connect(hub, sources.latest)
    monitor = StarvedLoop(loop)
    yield hub, sources.latest, monitor
    monitor.stop()


def publish_late(hub: CameraHub, source: Any, monitor: StarvedLoop, count: int,
                 starved: float) -> list[int]:
    """`count` frames arrive 40 ms apart while the fan-out never gets to run (the loop
    is held): of each 40 ms, the loop's thread does not run for `starved` (waiting for
    a CPU, or for the interpreter lock) and uses the CPU for the rest. Returns the pts
    received."""
    viewer = new_viewer(hub)
    hub.attach(viewer)
    units = access_units()
    for i in range(count):
        monitor.at(i * FRAME_US, int(i * FRAME_US * (1 - starved)))
        hub.source_pictures(source, source.ingest.push(units[i % len(units)], i * FRAME_US,
                                                       i * FRAME_US))
    hub.fanout.flush()
    return [f.pts_us // FRAME_US for f in frames_of(viewer)]


async def test_frames_late_because_the_loop_did_not_run_are_all_sent(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """2 s of frames pile up in the queue, but the loop's thread did not run for 90 % of
    it (its own work: 0.2 s of CPU): nothing skipped, nothing counted busy."""
    hub, source, monitor = starved_hub
    count = 2 * 25
    assert count * FRAME_US < STARVED_MAX * hub.limits.max_delay * 1e6
    assert publish_late(hub, source, monitor, count, starved=0.9) == list(range(count))
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() == 0


async def test_a_loop_held_by_the_relays_own_work_still_skips_to_a_keyframe(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """The same 2 s, but the loop's thread used the CPU for 90 % of it: the relay is
    behind, so its viewers skip to the next keyframe."""
    hub, source, monitor = starved_hub
    pts = publish_late(hub, source, monitor, 2 * 25, starved=0.1)
    assert pts[:26] == list(range(26)) and len(pts) < 2 * 25
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() == 2 * 25 - len(pts)


async def test_a_loop_starved_for_too_long_skips_all_the_same(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """The source kept up, the loop never ran: the queue holds more than STARVED_MAX
    bounds of frames. The machine can't run the relay; its viewers skip rather than
    fall ever further behind."""
    hub, source, monitor = starved_hub
    count = int((STARVED_MAX + 1) * hub.limits.max_delay * 25) + 1
    pts = publish_late(hub, source, monitor, count, starved=1.0)
    assert pts[:STARVED_MAX * 25] == list(range(STARVED_MAX * 25)) and len(pts) < count


async def test_a_whole_relay_that_stood_still_skips_nothing(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """The whole process stood still for longer than STARVED_MAX bounds (the source's
    thread too): one frame waited in the queue all that time, the next comes long after.
    Nothing is behind but that one frame: nothing skipped."""
    hub, source, monitor = starved_hub
    viewer = new_viewer(hub)
    hub.attach(viewer)
    units = access_units()
    gap = int((STARVED_MAX + 1) * hub.limits.max_delay * 1e6)
    for i in range(10):
        ingest_us = i * FRAME_US + (gap if i >= 5 else 0)
        monitor.at(ingest_us, i * FRAME_US // 2)
        hub.source_pictures(source, source.ingest.push(units[i], i * FRAME_US, ingest_us))
        if i != 4:  # the fan-out runs, except while everything stood still
            hub.fanout.flush()
    assert [f.pts_us // FRAME_US for f in frames_of(viewer)] == list(range(10))
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() == 0


def publish_arriving_late(hub: CameraHub, source: Any, monitor: StarvedLoop, count: int,
                          late_us: int, starved: float) -> list[Frame]:
    """`count` frames, 40 ms apart, the first half each reaching the hub `late_us` after its
    camera sent it (it waited in the loop's callback queue, before any hub), the rest on
    time; the fan-out runs at once. Of all that time, the loop's thread did not run for
    `starved`. Returns what the viewer got."""
    viewer = new_viewer(hub)
    hub.attach(viewer)
    units = access_units()
    for i in range(count):
        arrived_us = i * FRAME_US + (late_us if i < count // 2 else 1000)
        monitor.at(arrived_us, max(monitor.used_us, int(arrived_us * (1 - starved))))
        hub.source_pictures(source, source.ingest.push(units[i % len(units)], i * FRAME_US,
                                                       i * FRAME_US))
        hub.fanout.flush()
    return frames_of(viewer)


async def test_pictures_late_to_the_hub_while_the_loop_worked_skip_to_keyframes(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """More work than CPU: for 2 s every picture reaches the hub 1.5 s after it came from
    the camera, the loop's thread busy 90 % of the time. The fan-out queue is empty, yet the
    relay is behind: those pictures go, keyframes too (each is itself too late), and once
    pictures come on time again the viewers start at the next keyframe, flagged. Skipped
    pictures cost no fan-out, so a real relay catches up, and its memory stays bounded."""
    hub, source, monitor = starved_hub
    count = 4 * 25
    got = publish_arriving_late(hub, source, monitor, count,
                                late_us=int(1.5 * hub.limits.max_delay * 1e6), starved=0.1)
    packets = recording("baseline").packets
    first = next(i for i in range(count // 2, count) if packets[i % len(packets)].keyframe)
    assert [f.pts_us // FRAME_US for f in got] == list(range(first, count))
    assert got[0].keyframe and got[0].flags & FLAG_DISCONTINUITY
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() == first


async def test_pictures_late_to_the_hub_while_the_loop_waited_for_a_cpu_all_go(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """The same lateness, but the loop's thread did not run for 90 % of it (a machine busy
    with other work): every picture goes out."""
    hub, source, monitor = starved_hub
    count = 4 * 25
    got = publish_arriving_late(hub, source, monitor, count,
                                late_us=int(1.5 * hub.limits.max_delay * 1e6), starved=0.9)
    assert [f.pts_us // FRAME_US for f in got] == list(range(count))
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() == 0


async def test_keyframes_late_to_the_hub_while_the_loop_worked_go_too(
        starved_hub: tuple[CameraHub, Any, StarvedLoop]) -> None:
    """A camera that sends only keyframes, on a relay with more work than CPU: a keyframe
    that is itself a bound late, with the loop busy all along, goes as well (the next one is
    newer); nothing waits without end."""
    hub, source, monitor = starved_hub
    viewer = new_viewer(hub)
    hub.attach(viewer)
    keyframe = access_units()[0]
    late_us = int(1.5 * hub.limits.max_delay * 1e6)
    for i in range(10):
        arrived_us = i * FRAME_US + late_us
        monitor.at(arrived_us, int(arrived_us * 0.9))
        hub.source_pictures(source, source.ingest.push(keyframe, i * FRAME_US, i * FRAME_US))
        hub.fanout.flush()
    monitor.at(10 * FRAME_US + 1000, int(late_us * 0.9))  # on time again
    hub.source_pictures(source, source.ingest.push(keyframe, 10 * FRAME_US, 10 * FRAME_US))
    hub.source_pictures(source, source.ingest.push(keyframe, 11 * FRAME_US, 11 * FRAME_US))
    hub.fanout.flush()
    got = frames_of(viewer)
    assert got and got[0].pts_us // FRAME_US >= 10 and got[0].flags & FLAG_DISCONTINUITY
    assert hub.metrics.frames_dropped.labels("relay_busy")._value.get() >= 9
