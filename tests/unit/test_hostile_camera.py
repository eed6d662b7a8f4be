"""A camera that sends garbage hurts only its own viewers (issue 5).

Two hubs on one loop: one camera is fed corrupt NAL units, an absurd SPS,
a resolution change and timestamps that jump backwards; the other camera's
viewer must see exactly its own frames, and the bad camera's viewer must get
a new init whenever the stream really changes."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any
from unittest.mock import MagicMock

from cxrelay.config import CameraConfig
from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.hub import CameraHub
from cxrelay.ingest import Ingest
from cxrelay.metrics import Metrics
from cxrelay.protocol import decode_frame
from cxrelay.sources import StreamInfo
from cxrelay.viewer import Viewer
from tests.recordings import recording
from tests.unit.fake_connection import FakeConnection


def absurd_sps() -> bytes:
    # profile 66, level 30, then an exp-Golomb width far beyond any level.
    return b"\x00\x00\x00\x01\x67\x42\xc0\x1e\xff\xff\xff\xff\xff\xff\x00\x00\x01\x05"


async def test_garbage_from_one_camera_leaves_the_other_untouched() -> None:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    sources: dict[str, MagicMock] = {}

    def make_source(camera: CameraConfig, sink: Any, loop: Any) -> MagicMock:
        sources[camera.name] = MagicMock(name=camera.name)
        return sources[camera.name]

    reported: dict[str, int] = {}  # the bad camera's drops, as its source told the hub

    def push(hub: CameraHub, data: bytes, pts_us: int, at_us: int) -> None:
        """What the camera's source thread does with a packet."""
        source = sources[hub.name]
        result = source.ingest.push(data, pts_us, at_us)
        if hub is bad:
            for reason, count in result.drops.items():
                reported[reason] = reported.get(reason, 0) + count
        hub.source_pictures(source, result)
        hub.fanout.flush()

    bad = CameraHub(CameraConfig("bad", "rtsp://h/bad"), metrics=metrics, loop=loop,
                    source_factory=make_source)
    good = CameraHub(CameraConfig("good", "rtsp://h/good"), metrics=metrics, loop=loop,
                     source_factory=make_source)
    for hub in (bad, good):
        hub.start()
        info = StreamInfo(b"", None, whole_units=True)
        sources[hub.name].ingest = Ingest(info)
        hub.source_connected(sources[hub.name], info)
    viewers: dict[str, Viewer] = {}
    for hub in (bad, good):
        viewers[hub.name] = Viewer(FakeConnection(), hub.new_backlog(),  # type: ignore[arg-type]
                                   metrics)
        hub.attach(viewers[hub.name])

    small, big = recording("baseline").units, recording("bframes").units  # 640x360, then 1280x720
    rng = random.Random(5)
    good_sent = []
    for i, unit in enumerate(small):
        push(good, unit, i * 40_000, i)
        good_sent.append(unit)
        # Meanwhile the bad camera: real frames mixed with every kind of junk.
        push(bad, unit, i * 40_000, i)
        junk = [
            bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))),
            b"\x00\x00\x00\x01" + bytes(rng.getrandbits(8) for _ in range(50)),
            absurd_sps(),
            b"\x00\x00\x01\x65",  # an IDR slice header cut short
            to_annexb(split_annexb(unit)[:-1])[: len(unit) // 2],
        ]
        push(bad, junk[i % len(junk)], -i * 1_000_000, i)  # time runs back
        await asyncio.sleep(0)
    for i, unit in enumerate(big):  # the camera switches resolution mid-stream
        push(bad, unit, 10_000_000 + i * 40_000, i)

    good_frames = [decode_frame(m) for m in viewers["good"].ws.sent if isinstance(m, bytes)]
    assert [split_annexb(f.payload) for f in good_frames] == \
        [split_annexb(u) for u in good_sent]
    good_texts = [json.loads(m) for m in viewers["good"].ws.sent if isinstance(m, str)]
    assert [t["type"] for t in good_texts] == ["status", "init", "status"]

    bad_texts = [json.loads(m) for m in viewers["bad"].ws.sent if isinstance(m, str)]
    inits = [t for t in bad_texts if t["type"] == "init"]
    assert [(t["width"], t["height"]) for t in inits] == [(640, 360), (1280, 720)]
    # After the second init, the first frame is a keyframe of the new stream.
    sent: list[Any] = viewers["bad"].ws.sent
    second = max(i for i, m in enumerate(sent) if isinstance(m, str) and '"init"' in m)
    first_after = decode_frame(next(m for m in sent[second:] if isinstance(m, bytes)))
    assert first_after.keyframe
    dropped = {s.labels["reason"]: s.value for s in metrics.frames_dropped.collect()[0].samples
               if s.name.endswith("_total")}
    assert dropped["partial"] + dropped["corrupt"] > 0
    assert dropped["partial"] == reported.get("partial", 0)
    assert dropped["corrupt"] == reported.get("corrupt", 0)
    assert "internal_error" not in reported and dropped.get("internal_error", 0) == 0
