"""The hub and viewer pump as single pieces: the hub gets a source factory
that makes fake sources, and the test drives the hub's sink methods as those
sources would (each with an Ingest of its own); WebSockets are AsyncMocks."""

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
from cxrelay.protocol import FLAG_CATCHUP, FLAG_KEYFRAME, decode_frame
from cxrelay.sources import StreamInfo
from cxrelay.viewer import Viewer
from tests.recordings import recording


def access_units() -> list[bytes]:
    """Whole access units of a real x264 stream, keyframe first."""
    return recording("baseline").units


class FakeSources:
    """A source factory: each source it makes is a mock, kept for the test.
    ``connect`` and ``feed`` play its thread: an Ingest makes the pictures."""

    def __init__(self) -> None:
        self.made: list[MagicMock] = []

    def __call__(self, camera: CameraConfig, sink: Any, loop: Any) -> Any:
        self.made.append(MagicMock(name=f"source {len(self.made)}"))
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


def ws_mock() -> AsyncMock:
    ws = AsyncMock(name="ws")
    ws.sent = []
    ws.send.side_effect = lambda m: ws.sent.append(m)
    return ws


def connect(hub: CameraHub, source: Any) -> None:
    info = StreamInfo(b"", None, whole_units=True)
    source.ingest = Ingest(info)  # one per connection, as a real source makes
    hub.source_connected(source, info)


def feed(hub: CameraHub, source: Any, units: list[bytes], start: int = 0) -> None:
    for i, unit in enumerate(units):
        pts = (start + i) * 40_000
        hub.source_pictures(source, source.ingest.push(unit, pts, 1_000 + pts))


async def test_viewer_joining_mid_gop_gets_init_status_catchup_then_live(
        hub: CameraHub, sources: FakeSources) -> None:
    source = sources.latest
    units = access_units()
    connect(hub, source)
    feed(hub, source, units[:5])
    assert hub.state == "live"
    ws = ws_mock()
    viewer = Viewer(ws, hub.new_backlog(), hub.metrics)
    hub.attach(viewer)
    feed(hub, source, units[5:7], start=5)
    pump = asyncio.ensure_future(viewer.pump())
    await asyncio.sleep(0.05)
    pump.cancel()
    sent = ws.sent
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
    viewer = Viewer(ws_mock(), hub.new_backlog(), hub.metrics)
    hub.attach(viewer)
    hub.source_failed(source, "401 Unauthorized")
    hub.source_failed(source, "401 Unauthorized")  # a retry: not news
    assert hub.state == "offline" and hub.last_error == "401 Unauthorized"
    connect(hub, source)
    feed(hub, source, units[1:3], start=100)  # deltas first: nobody can start on those
    feed(hub, source, units[:2], start=200)
    pump = asyncio.ensure_future(viewer.pump())
    await asyncio.sleep(0.05)
    pump.cancel()
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
    assert hub.metrics.reconnects.labels("cam")._value.get() == 1


async def test_events_from_a_stopped_source_are_ignored(
        hub: CameraHub, sources: FakeSources) -> None:
    old = sources.latest
    hub.reconfigure(CameraConfig("cam", "rtsp://h/y"))
    assert sources.latest is not old
    hub.source_failed(old, "late news from the old thread")
    assert hub.last_error is None


async def test_slow_viewer_is_cut_back_without_holding_up_the_hub(
        hub: CameraHub, sources: FakeSources) -> None:
    source = sources.latest
    """A viewer whose socket never takes a byte: its backlog reaches the bound
    (bytes; the delay bound is out of reach here), is cut back to keyframes,
    and the drops are counted; the other viewer gets every frame."""
    units = access_units()
    limits = BacklogLimits(max_delay=3600, max_bytes=32 * 1024)  # ~5 % of what is fed
    assert max(map(len, units)) < limits.max_bytes // 2
    hub.limits = limits
    connect(hub, source)
    stuck = AsyncMock(name="stuck")

    async def never(message: object) -> None:
        await asyncio.sleep(3600)

    stuck.send.side_effect = never
    slow = Viewer(stuck, hub.new_backlog(), hub.metrics)
    fast = Viewer(ws_mock(), hub.new_backlog(), hub.metrics)
    hub.attach(slow)
    hub.attach(fast)
    pumps = [asyncio.ensure_future(v.pump()) for v in (slow, fast)]
    with capture_logs() as logs:
        for i, unit in enumerate(units * 3):
            feed(hub, source, [unit], start=i)
            await asyncio.sleep(0)  # the fast viewer's pump drains; the stuck one can't
    await asyncio.sleep(0.05)
    for p in pumps:
        p.cancel()
    assert len([m for m in fast.ws.sent if isinstance(m, bytes)]) == 3 * len(units)
    assert fast.backlog.dropped == 0
    fed = 3 * sum(map(len, units))
    assert fed > 10 * limits.max_bytes
    assert slow.backlog.overflows >= 2, "the slow viewer never reached its bound"
    assert 0 < slow.backlog.frame_bytes <= limits.max_bytes
    assert slow.backlog.dropped > 0
    assert hub.metrics.frames_dropped.labels("slow_viewer")._value.get() == slow.backlog.dropped
    # The viewer says so itself, once per overflow.
    drops = [e for e in logs if e["event"] == "frames dropped"]
    assert len(drops) == slow.backlog.overflows
    assert {e["viewer"] for e in drops} == {slow.id}


async def test_on_demand_starts_with_first_viewer_and_lingers(sources: FakeSources) -> None:
    hub = CameraHub(CameraConfig("cam", "rtsp://h/x", on_demand=True, linger=0.05),
                    metrics=Metrics(), loop=asyncio.get_running_loop(), source_factory=sources)
    hub.start()
    assert sources.made == [] and hub.state == "idle"
    viewer = Viewer(ws_mock(), hub.new_backlog(), hub.metrics)
    hub.attach(viewer)
    assert len(sources.made) == 1 and hub.state == "connecting"
    hub.detach(viewer)
    await asyncio.sleep(0.15)
    sources.latest.stop.assert_called_once()
    assert hub.state == "idle"
