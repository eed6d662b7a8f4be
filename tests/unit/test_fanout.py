"""The fan-out queue: time slices that leave the loop to everything else, and
each viewer gets each hub's messages once, in order, from when it joined."""

from __future__ import annotations

import asyncio
from typing import Any

from cxrelay.config import CameraConfig
from cxrelay.fanout import BATCH, Fanout, FrameJob
from cxrelay.hub import CameraHub
from cxrelay.metrics import Metrics
from cxrelay.protocol import FLAG_DISCONTINUITY, decode_frame, encode_frame
from cxrelay.wire import Outgoing
from tests.unit.test_hub import FakeSources, access_units, connect, frames_of, new_viewer


class Recorder:
    def __init__(self) -> None:
        self.got: list[int] = []

    def send_frame(self, frame: Outgoing) -> int:
        self.got.append(decode_frame(frame.message).pts_us)
        return 0


def frame(n: int) -> Outgoing:
    return Outgoing.frame(encode_frame(0, n, n, b"\x00\x00\x01\x41"), keyframe=False)


async def test_a_big_fan_out_runs_in_slices_and_keeps_the_order() -> None:
    loop = asyncio.get_running_loop()
    fanout = Fanout(loop, budget=0)  # one batch of viewers per loop iteration
    viewers: list[Any] = [Recorder() for _ in range(10 * BATCH)]
    joined = {v: 0 for v in viewers}
    for n in (1, 2):
        fanout.push(FrameJob(n, viewers, joined, frame(n)))
    others = []
    loop.call_soon(others.append, "a callback queued after the fan-out")
    await asyncio.sleep(0)
    # The first slice ran, then the other callback, long before the fan-out ends.
    assert others and sum(1 for v in viewers if v.got) == BATCH
    for _ in range(100):
        await asyncio.sleep(0)
    assert not len(fanout)
    assert all(v.got == [1, 2] for v in viewers)


async def test_viewers_get_what_came_after_they_joined_and_before_they_left() -> None:
    loop = asyncio.get_running_loop()
    sources = FakeSources()
    hubs = [CameraHub(CameraConfig(name, "rtsp://h/x"), metrics=Metrics(), loop=loop,
                      source_factory=sources) for name in ("a", "b")]
    units = access_units()
    for hub in hubs:
        hub.start()
        connect(hub, sources.made[-1])
    a, b = hubs
    source_a, source_b = sources.made

    def publish(hub: CameraHub, source: Any, i: int) -> None:  # not run yet: queued
        hub.source_pictures(source, source.ingest.push(units[i], i * 40_000, i))

    for i in range(3):
        publish(a, source_a, i)
        publish(b, source_b, i)
    a.fanout.flush()
    stays, leaves, joins, moves, returns = (new_viewer(a) for _ in range(5))
    for v in (stays, leaves, moves, returns):
        a.attach(v)
    publish(a, source_a, 3)  # queued for stays, leaves, moves
    a.detach(leaves)
    a.attach(joins)  # its catch-up already holds frame 3
    a.detach(moves)
    b.attach(moves)  # another stream: nothing of a's may follow b's init
    a.detach(returns)  # ... and back: a's catch-up again, frame 3 in it, not twice
    b.attach(returns)
    b.detach(returns)
    a.attach(returns)
    publish(a, source_a, 4)
    publish(b, source_b, 3)
    a.fanout.flush()
    pts = {name: [f.pts_us // 40_000 for f in frames_of(v)]
           for name, v in (("stays", stays), ("leaves", leaves), ("joins", joins),
                           ("moves", moves), ("returns", returns))}
    assert pts["stays"] == [0, 1, 2, 3, 4]
    assert pts["leaves"] == [0, 1, 2]  # frame 3 was queued for it, but it had left
    assert pts["joins"] == [0, 1, 2, 3, 4]  # 3 once, in its catch-up
    assert pts["moves"] == [0, 1, 2, 0, 1, 2, 3]  # a's catch-up; b's catch-up and live
    assert pts["returns"] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4]


async def test_a_relay_too_busy_to_fan_out_skips_to_the_next_keyframe_flagged() -> None:
    """More viewers than the CPU can serve: frames wait in the fan-out queue.
    Once the oldest waits longer than the delay bound, every viewer skips to
    the next keyframe, flagged, instead of falling further behind."""
    sources = FakeSources()
    hub = CameraHub(CameraConfig("cam", "rtsp://h/x"), metrics=Metrics(),
                    loop=asyncio.get_running_loop(), source_factory=sources)
    hub.start()
    connect(hub, sources.latest)
    units = access_units()
    viewer = new_viewer(hub)
    hub.attach(viewer)
    for i, unit in enumerate(units * 2):  # the loop never gets to run the fan-out meanwhile
        hub.source_pictures(sources.latest, sources.latest.ingest.push(unit, i * 40_000,
                                                                      i * 40_000))
    hub.fanout.flush()
    got = frames_of(viewer)
    pts = [f.pts_us // 40_000 for f in got]
    flagged = [f.pts_us // 40_000 for f in got if f.flags & FLAG_DISCONTINUITY]
    assert pts[:26] == list(range(26))  # a second of frames: then the relay is behind
    assert pts[26] in flagged and all(got[pts.index(n)].keyframe for n in flagged)
    assert pts == sorted(pts) and len(pts) < 2 * len(units)
    busy = hub.metrics.frames_dropped.labels("relay_busy")._value.get()
    assert busy == 2 * len(units) - len(pts)
