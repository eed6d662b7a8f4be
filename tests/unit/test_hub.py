"""The hub and viewer write path as single pieces: the hub gets a source
factory that makes fake sources, and the test drives the hub's sink methods as
those sources would (each with an Ingest of its own); connections are fakes
whose transport keeps what is written and can stop draining."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from structlog.testing import capture_logs

from cxrelay.backlog import BacklogLimits
from cxrelay.config import CameraConfig
from cxrelay.h264 import split_annexb
from cxrelay.hub import CameraHub
from cxrelay.ingest import Ingest
from cxrelay.metrics import Metrics
from cxrelay.protocol import FLAG_CATCHUP, FLAG_DISCONTINUITY, FLAG_KEYFRAME, decode_frame
from cxrelay.sources import StreamInfo
from cxrelay.viewer import Viewer
from cxrelay.wire import HIGH_WATER
from tests.recordings import recording
from tests.unit.fake_connection import FakeConnection


def access_units() -> list[bytes]:
    """Whole access units of a real x264 stream, keyframe first."""
    return recording("baseline").units


class FakeSources:
    """A source factory: each source it makes is a mock, kept for the test.
    ``connect`` and ``feed`` play its thread: an Ingest makes the pictures."""

    def __init__(self) -> None:
        self.made: list[MagicMock] = []
        self.configs: list[CameraConfig] = []  # what each was made for

    def __call__(self, camera: CameraConfig, sink: Any, loop: Any) -> Any:
        self.made.append(MagicMock(name=f"source {len(self.made)}"))
        self.made[-1].wait_stopped = AsyncMock(return_value=True)
        self.configs.append(camera)
        return self.made[-1]

    @property
    def latest(self) -> Any:
        return self.made[-1]


@pytest.fixture
def sources() -> FakeSources:
    return FakeSources()


@pytest.fixture
async def hub(sources: FakeSources) -> CameraHub:
    hub = CameraHub(CameraConfig("cam", "rtsp://h/x"), metrics=Metrics(),
                    loop=asyncio.get_running_loop(), source_factory=sources)
    hub.start()
    return hub


def new_viewer(hub: CameraHub) -> Viewer:
    return Viewer(FakeConnection(), hub.new_backlog(), hub.metrics)  # type: ignore[arg-type]


def frames_of(viewer: Viewer) -> list[Any]:
    return [decode_frame(m) for m in viewer.ws.sent if isinstance(m, bytes)]


def connect(hub: CameraHub, source: Any) -> None:
    info = StreamInfo(b"", None, whole_units=True)
    source.ingest = Ingest(info)  # one per connection, as a real source makes
    hub.source_connected(source, info)


def feed(hub: CameraHub, source: Any, units: list[bytes], start: int = 0) -> None:
    for i, unit in enumerate(units):
        pts = (start + i) * 40_000
        hub.source_pictures(source, source.ingest.push(unit, pts, 1_000 + pts))
        hub.fanout.flush()  # the loop runs the fan-out before the next picture comes


async def test_viewer_joining_mid_gop_gets_init_status_catchup_then_live(
        hub: CameraHub, sources: FakeSources) -> None:
    source = sources.latest
    units = access_units()
    connect(hub, source)
    feed(hub, source, units[:5])
    assert hub.state == "live"
    viewer = new_viewer(hub)
    hub.attach(viewer)
    feed(hub, source, units[5:7], start=5)
    sent = viewer.ws.sent
    init = json.loads(sent[0])
    assert init["type"] == "init" and (init["width"], init["height"]) == (640, 360)
    assert json.loads(sent[1]) == {"type": "status", "state": "live"}
    frames = [decode_frame(m) for m in sent[2:]]
    assert [f.pts_us for f in frames] == [i * 40_000 for i in range(7)]
    assert frames[0].flags == FLAG_KEYFRAME | FLAG_CATCHUP
    assert all(f.flags & FLAG_CATCHUP for f in frames[:5])
    assert not any(f.flags & FLAG_CATCHUP for f in frames[5:])
    # The NAL units are the camera's, unchanged (start codes may be normalised).
    assert [split_annexb(f.payload) for f in frames] == [split_annexb(u) for u in units[:7]]


async def test_failure_tells_viewers_and_reconnect_sends_a_new_init(
        hub: CameraHub, sources: FakeSources) -> None:
    source = sources.latest
    units = access_units()
    connect(hub, source)
    feed(hub, source, units[:3])
    viewer = new_viewer(hub)
    hub.attach(viewer)
    hub.source_failed(source, "401 Unauthorized")
    hub.source_failed(source, "401 Unauthorized")  # a retry: not news
    assert hub.state == "offline" and hub.last_error == "401 Unauthorized"
    connect(hub, source)
    feed(hub, source, units[1:3], start=100)  # deltas first: nobody can start on those
    feed(hub, source, units[:2], start=200)
    texts = [json.loads(m) for m in viewer.ws.sent if isinstance(m, str)]
    kinds = [(t["type"], t.get("state")) for t in texts]
    assert kinds == [("init", None), ("status", "live"), ("status", "offline"),
                     ("init", None), ("status", "live")]
    assert texts[2]["reason"] == "401 Unauthorized"
    sent = viewer.ws.sent
    second_init = max(i for i, m in enumerate(sent) if isinstance(m, str) and '"init"' in m)
    after = sent[second_init:]
    first_frame = decode_frame(next(m for m in after if isinstance(m, bytes)))
    assert first_frame.keyframe and first_frame.pts_us == 200 * 40_000
    assert hub.metrics.reconnects.labels("cam", "main")._value.get() == 1


async def test_events_from_a_stopped_source_are_ignored(
        hub: CameraHub, sources: FakeSources) -> None:
    old = sources.latest
    hub.reconfigure(CameraConfig("cam", "rtsp://h/y"))
    assert sources.latest is not old
    hub.source_failed(old, "late news from the old thread")
    assert hub.last_error is None


async def test_slow_viewer_is_cut_back_without_holding_up_the_hub(
        hub: CameraHub, sources: FakeSources) -> None:
    """A viewer whose socket never takes a byte: its transport's buffer fills
    to the high-water mark, then its backlog reaches the bound (bytes, the
    transport's included; the delay bound is out of reach here), is cut back
    to keyframes, and the drops are counted; the other viewer gets every frame."""
    source = sources.latest
    units = access_units()
    limits = BacklogLimits(max_delay=3600, max_bytes=HIGH_WATER + 96 * 1024)
    assert max(map(len, units)) < (limits.max_bytes - HIGH_WATER) // 4
    hub.limits = limits
    connect(hub, source)
    slow, fast = new_viewer(hub), new_viewer(hub)
    slow.ws.raw.stuck = True
    hub.attach(slow)
    hub.attach(fast)
    rounds = 12
    with capture_logs() as logs:
        for i, unit in enumerate(units * rounds):
            feed(hub, source, [unit], start=i)
    assert len(frames_of(fast)) == rounds * len(units)
    assert fast.backlog.dropped == 0
    fed = rounds * sum(map(len, units))
    assert fed > 8 * limits.max_bytes
    assert slow.backlog.overflows >= 2, "the slow viewer never reached its bound"
    buffered = slow.ws.raw.get_write_buffer_size()
    assert HIGH_WATER < buffered <= HIGH_WATER + max(map(len, units)) + 64
    assert 0 < slow.backlog.frame_bytes + buffered <= limits.max_bytes
    assert slow.backlog.dropped > 0
    assert hub.metrics.frames_dropped.labels("slow_viewer")._value.get() == slow.backlog.dropped
    # The viewer says so itself, once per overflow.
    drops = [e for e in logs if e["event"] == "frames dropped"]
    assert len(drops) == slow.backlog.overflows
    assert {e["viewer"] for e in drops} == {slow.id}


async def test_backed_up_viewer_resyncs_at_a_keyframe_flagged_others_get_everything(
        hub: CameraHub, sources: FakeSources) -> None:
    """Frame once, write to many: viewers with room get the very same bytes
    object, written there and then (no task runs). One whose transport backs up
    queues, overflows, and when its socket drains again its drain task sends
    the next keyframe flagged as a discontinuity, then live frames, in order."""
    source = sources.latest
    units = access_units()
    hub.limits = BacklogLimits(max_delay=3600, max_bytes=HIGH_WATER + 48 * 1024)
    connect(hub, source)
    feed(hub, source, units[:2])
    assert hub.state == "live"
    viewers = [new_viewer(hub) for _ in range(3)]
    for v in viewers:
        hub.attach(v)
    slow, others = viewers[0], viewers[1:]
    slow.ws.raw.stuck = True
    total = 2 * len(units)
    for i in range(2, total):
        feed(hub, source, [units[i % len(units)]], start=i)
    # The others: every frame, each written as the one shared object.
    assert all(a is b for a, b in zip(others[0].ws.raw.writes[-20:],
                                      others[1].ws.raw.writes[-20:], strict=True))
    for v in others:
        got = frames_of(v)
        assert [f.pts_us for f in got] == [i * 40_000 for i in range(total)]
        assert not any(f.flags & FLAG_DISCONTINUITY for f in got)
    assert slow.backlog.overflows >= 1
    queued = len(slow.backlog)
    assert queued > 0
    # The peer reads again: the transport drains, and the drain task (no frame
    # arrives meanwhile) sends what waited.
    slow.ws.raw.drain()
    drain = asyncio.ensure_future(slow.drain())
    await asyncio.sleep(0.01)
    assert len(slow.backlog) == 0
    got = frames_of(slow)
    assert got[-1].pts_us == (total - 1) * 40_000
    flagged = [f for f in got if f.flags & FLAG_DISCONTINUITY]
    assert flagged and all(f.keyframe for f in flagged)  # the earlier resyncs were dropped too
    # From the last resync on, nothing is missing.
    after = [f.pts_us for f in got[got.index(flagged[-1]):]]
    assert after == list(range(flagged[-1].pts_us, total * 40_000, 40_000))
    # Backed up again, and this time a live frame comes before the drain task
    # runs: it goes behind what waits, not past it.
    slow.ws.raw.stuck = True
    for i in range(total, 2 * total):
        feed(hub, source, [units[i % len(units)]], start=i)
    assert len(slow.backlog) > 0
    slow.ws.raw.drain()
    feed(hub, source, [units[0]], start=2 * total)
    await asyncio.sleep(0.01)
    drain.cancel()
    got = frames_of(slow)
    pts = [f.pts_us for f in got]
    assert pts == sorted(set(pts)), "out of order or repeated"
    assert pts[-1] == 2 * total * 40_000
    assert got[0].flags & FLAG_CATCHUP
    for v in others:
        assert len(frames_of(v)) == 2 * total + 1


async def test_on_demand_starts_with_first_viewer_and_lingers(sources: FakeSources) -> None:
    hub = CameraHub(CameraConfig("cam", "rtsp://h/x", on_demand=True, linger=0.05),
                    metrics=Metrics(), loop=asyncio.get_running_loop(), source_factory=sources)
    hub.start()
    assert sources.made == [] and hub.state == "idle"
    viewer = new_viewer(hub)
    hub.attach(viewer)
    assert len(sources.made) == 1 and hub.state == "connecting"
    hub.detach(viewer)
    await asyncio.sleep(0.15)
    sources.latest.stop.assert_called_once()
    assert hub.state == "idle"
