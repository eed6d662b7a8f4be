"""A camera's two streams as single pieces: Camera with fake sources (the test
drives each hub's sink methods as its source thread would), and viewers on
fake connections that switch streams, ask for keyframes only, report stats
and misbehave."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cxrelay.backlog import BacklogLimits
from cxrelay.cameras import Camera, Cameras
from cxrelay.config import CameraConfig, Config, plan_reload
from cxrelay.fanout import Fanout
from cxrelay.metrics import Metrics
from cxrelay.protocol import FLAG_CATCHUP, Frame, decode_frame
from cxrelay.viewer import Viewer
from tests.recordings import recording
from tests.unit.fake_connection import FakeConnection
from tests.unit.test_hub import FakeSources, feed
from tests.unit.test_hub import connect as connect_source

LOBBY = CameraConfig("lobby", "rtsp://h/main", substream="rtsp://h/sub", linger=0.05)
UNITS = recording("baseline").units  # a keyframe every 25 pictures
KEYS = [i for i, u in enumerate(UNITS) if b"\x00\x00\x01\x65" in u or b"\x00\x00\x00\x01\x65" in u]


@pytest.fixture
def sources() -> FakeSources:
    return FakeSources()


@pytest.fixture
async def camera(sources: FakeSources) -> Camera:
    camera = Camera(LOBBY, metrics=Metrics(), loop=asyncio.get_running_loop(),
                    limits=BacklogLimits(), source_factory=sources)
    camera.start()
    return camera


def source_of(sources: FakeSources, url: str) -> Any:
    return next(s for s, c in zip(sources.made, sources.configs, strict=True) if c.url == url)


def viewer_of(camera: Camera, stream: str = "main", keyframes: bool = False) -> Viewer:
    viewer = Viewer(FakeConnection(), camera.new_backlog(),  # type: ignore[arg-type]
                    camera.metrics, camera=camera.name)
    viewer.camera = camera
    viewer.keyframes = keyframes
    viewer.hub = camera.attach(viewer, stream, keyframes=keyframes)
    return viewer


_read: dict[str, int] = {}


async def pumped(viewer: Viewer) -> list[dict[str, Any] | Frame]:
    """What the viewer's peer received since the last call."""
    Fanout.of(asyncio.get_running_loop()).flush()
    viewer._flush()
    sent = viewer.ws.sent
    new, _read[viewer.id] = sent[_read.get(viewer.id, 0):], len(sent)
    return [json.loads(m) if isinstance(m, str) else decode_frame(m) for m in new]


def connect(camera: Camera, sources: FakeSources, stream: str) -> Any:
    source = source_of(sources, LOBBY.url if stream == "main" else LOBBY.substream)
    connect_source(camera.hubs[stream], source)
    return source


async def test_the_substream_is_pulled_only_while_watched(camera: Camera,
                                                          sources: FakeSources) -> None:
    assert [c.url for c in sources.configs] == [LOBBY.url]  # main: not on demand
    assert camera.hubs["sub"].state == "idle"
    viewer = viewer_of(camera, "sub")
    assert [c.url for c in sources.configs] == [LOBBY.url, LOBBY.substream]
    assert sources.configs[1].on_demand
    camera.hubs["sub"].detach(viewer)
    await asyncio.sleep(0.2)  # linger 0.05 s
    sources.latest.stop.assert_called_once()
    assert camera.hubs["sub"].state == "idle" and camera.main.state == "connecting"


async def test_api_lists_each_stream_and_keeps_the_old_top_level(camera: Camera,
                                                                sources: FakeSources) -> None:
    viewer_of(camera, "sub")
    feed(camera.sub, connect(camera, sources, "sub"), UNITS[:3])
    info = camera.info()
    assert (info["name"], info["state"], info["width"], info["viewers"]) == \
        ("lobby", "connecting", None, 1)
    main, sub = info["streams"]
    assert (main["name"], main["state"], main["viewers"]) == ("main", "connecting", 0)
    assert [sub[k] for k in ("name", "state", "width", "height", "viewers", "on_demand")] \
        == ["sub", "live", 640, 360, 1, True]
    assert camera.sizes() == [{"name": "main", "width": None, "height": None, "codec": None},
                              {"name": "sub", "width": 640, "height": 360, "codec": "avc1.42c01e"}]


async def test_select_switches_stream_on_the_same_socket(camera: Camera,
                                                         sources: FakeSources) -> None:
    main = connect(camera, sources, "main")
    feed(camera.main, main, UNITS[:5])
    viewer = viewer_of(camera, "main")
    sent = await pumped(viewer)
    assert sent[0]["type"] == "init" and sent[0]["stream"] == "main"
    assert sent[0]["streams"] == [
        {"name": "main", "width": 640, "height": 360, "codec": "avc1.42c01e"},
        {"name": "sub", "width": None, "height": None, "codec": None}]
    assert isinstance(sent[0]["time"], int)
    assert len([m for m in sent if isinstance(m, Frame)]) == 5

    assert viewer._on_text('{"type":"select","stream":"sub"}') is None
    sub = connect(camera, sources, "sub")  # pulled now that somebody watches it
    feed(camera.sub, sub, UNITS[:3], start=1000)
    feed(camera.main, main, UNITS[5:8], start=5)  # the main stream goes on, for others
    feed(camera.sub, sub, UNITS[3:5], start=1003)
    sent = await pumped(viewer)
    kinds = [m["type"] if isinstance(m, dict) else "frame" for m in sent]
    # Connecting (no init yet), then the sub-stream's init as its first keyframe comes.
    assert kinds[:2] == ["status", "init"] and sent[1]["stream"] == "sub"
    frames = [m for m in sent if isinstance(m, Frame)]
    assert [f.pts_us // 40_000 for f in frames] == list(range(1000, 1005))
    assert frames[0].keyframe and not any(f.flags & FLAG_CATCHUP for f in frames)
    assert viewer.hub is camera.sub and camera.main.viewers == set()

    # Back to the main stream: its init, its GOP cache as catch-up, then live.
    viewer._on_text('{"type":"select","stream":"main"}')
    feed(camera.main, main, UNITS[8:10], start=8)
    sent = await pumped(viewer)
    assert sent[0]["type"] == "init" and sent[0]["stream"] == "main"
    frames = [m for m in sent if isinstance(m, Frame)]
    assert [f.pts_us // 40_000 for f in frames] == list(range(10))
    assert all(f.flags & FLAG_CATCHUP for f in frames[:8])
    assert not any(f.flags & FLAG_CATCHUP for f in frames[8:])
    # The same choice again changes nothing and sends nothing.
    viewer._on_text('{"type":"select","stream":"main","frames":"all"}')
    assert await pumped(viewer) == []


async def test_a_switch_voids_what_the_old_stream_had_queued(camera: Camera,
                                                            sources: FakeSources) -> None:
    main = connect(camera, sources, "main")
    feed(camera.main, main, UNITS[:3])
    viewer = viewer_of(camera, "main")
    await pumped(viewer)
    viewer.ws.raw.stuck = True  # the peer stops reading: frames queue in the backlog
    feed(camera.main, main, UNITS[3:], start=3)
    camera.main.source_failed(main, "gone")  # a status queued behind them
    assert len(viewer.backlog) > 0
    in_transport = len(viewer.ws.raw.queued)
    viewer._on_text('{"type":"select","stream":"sub"}')
    viewer.ws.raw.drain()
    sent = await pumped(viewer)
    # What was already in the socket arrives; after it the sub-stream, nothing queued.
    assert all(isinstance(m, Frame) for m in sent[:in_transport])
    assert sent[in_transport:] == [{"type": "status", "state": "connecting"}]


async def test_keyframes_only(camera: Camera, sources: FakeSources) -> None:
    main = connect(camera, sources, "main")
    feed(camera.main, main, UNITS[:KEYS[1] + 3])
    still = viewer_of(camera, "main", keyframes=True)
    motion = viewer_of(camera, "main")
    feed(camera.main, main, UNITS[KEYS[1] + 3:], start=KEYS[1] + 3)
    sent = await pumped(still)
    assert sent[0]["type"] == "init" and sent[0]["frames"] == "keyframes"
    frames = [m for m in sent if isinstance(m, Frame)]
    assert [f.pts_us // 40_000 for f in frames] == KEYS[1:]
    # The newest keyframe comes first, to be shown: no catch-up flag.
    assert all(f.flags == 1 for f in frames)
    everything = [m for m in await pumped(motion) if isinstance(m, Frame)]
    assert len(everything) == len(UNITS) - KEYS[1]
    # ... and back to every frame on the same socket.
    still._on_text('{"type":"select","frames":"all"}')
    feed(camera.main, main, UNITS[:2], start=len(UNITS))
    sent = await pumped(still)
    assert sent[0]["frames"] == "all"
    assert len([m for m in sent if isinstance(m, Frame)]) == 2 + len(UNITS) - KEYS[-1]


async def test_a_failing_substream_tells_its_viewers_only(camera: Camera,
                                                          sources: FakeSources) -> None:
    main = connect(camera, sources, "main")
    feed(camera.main, main, UNITS[:3])
    on_main, on_sub = viewer_of(camera, "main"), viewer_of(camera, "sub")
    await pumped(on_main)
    await pumped(on_sub)
    camera.sub.source_failed(source_of(sources, LOBBY.substream), "404 Not Found")
    feed(camera.main, main, UNITS[3:5], start=3)
    assert [m for m in await pumped(on_sub) if isinstance(m, dict)] == \
        [{"type": "status", "state": "offline", "reason": "404 Not Found"}]
    assert [type(m) for m in await pumped(on_main)] == [Frame, Frame]
    assert camera.state == "live" and camera.info()["streams"][1]["state"] == "offline"


async def test_stats_pings_and_hostile_messages(camera: Camera, sources: FakeSources) -> None:
    viewer = viewer_of(camera, "sub")
    metrics = camera.metrics
    assert viewer._on_text('{"type":"stats","latency":[40,60,1e9],"dropped":3}') is None
    histogram = metrics.glass_latency.labels("lobby", "sub")
    assert histogram._sum.get() == pytest.approx(0.1)
    assert metrics.player_dropped.labels("lobby", "sub")._value.get() == 3
    assert metrics.glass_latency.labels("lobby", "main")._sum.get() == 0
    # More than one report a second or so is ignored, not counted.
    for _ in range(10):
        assert viewer._on_text('{"type":"stats","latency":[40]}') is None
    assert histogram._sum.get() < 0.1 + 10 * 0.04
    viewer._on_text('{"type":"ping","id":5}')
    pong = [m for m in await pumped(viewer) if isinstance(m, dict) and m["type"] == "pong"]
    assert pong[0]["id"] == 5 and pong[0]["time"] > 1.7e15
    assert viewer._on_text('{"type":"select","stream":"4k"}') == \
        "select: stream must be main or sub"
    assert viewer._on_text('{"type":"select","frames":"some"}') == \
        "select: frames must be all or keyframes"


async def test_floods_are_refused(camera: Camera) -> None:
    viewer = viewer_of(camera)
    refusals = {viewer._on_text(json.dumps({"type": "select", "stream": ("sub", "main")[i % 2]}))
                for i in range(20)}
    assert refusals == {None, "too many select messages"}
    viewer = viewer_of(camera)
    refusals = {viewer._on_text('{"type":"nothing"}') for i in range(100)}
    assert refusals == {None, "too many messages"}


async def test_reload_adds_and_removes_a_substream(sources: FakeSources) -> None:
    cameras = Cameras(Metrics(), BacklogLimits(), source_factory=sources)
    camera = cameras.add(LOBBY)
    on_main, on_sub = viewer_of(camera, "main"), viewer_of(camera, "sub")
    made = len(sources.made)
    without = CameraConfig("lobby", LOBBY.url, linger=LOBBY.linger)
    await cameras.apply(plan_reload(Config(cameras=(LOBBY,)), Config(cameras=(without,))))
    assert on_sub.ws.closed == (1001, "sub-stream removed from the configuration")
    assert on_main.ws.closed is None
    assert camera.sub is None and camera.hub("sub") is camera.main
    assert len(sources.made) == made, "the main stream restarted for a sub-stream change"
    await cameras.apply(plan_reload(Config(cameras=(without,)), Config(cameras=(LOBBY,))))
    assert camera.sub is not None and camera.hub("sub") is camera.sub
    assert camera.info()["streams"][1]["state"] == "idle"
    await cameras.close("done")
