"""Recorded files and the demo camera as live sources, through the real relay."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cxrelay.config import CameraConfig
from cxrelay.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_annexb
from cxrelay.protocol import FLAG_CATCHUP, Frame
from tests.support import api_camera, is_init, make_config, running_relay, viewer

DATA = Path(__file__).parent.parent / "data"


async def live_frames(v, count: int) -> tuple[dict, list[Frame]]:  # type: ignore[no-untyped-def]
    init = (await v.until(is_init))[-1]
    frames: list[Frame] = []
    while len(frames) < count:
        m = await v.recv()
        if isinstance(m, Frame) and not m.flags & FLAG_CATCHUP:
            frames.append(m)
    return init, frames


@pytest.mark.parametrize(
    ("name", "size"),
    [
        # Matroska with AVCC packets and SPS/PPS only in the avcC extradata.
        ("extradata_only.mkv", (640, 360)),
        # Raw Annex B with no timestamps at all.
        ("baseline.h264", (640, 360)),
    ],
)
async def test_files_play_as_live_cameras(name: str, size: tuple[int, int]) -> None:
    url = f"file://{DATA / name}" if name.endswith(".mkv") else str(DATA / name)
    async with running_relay(make_config({"rec": url})) as relay, \
            viewer(relay.server.port, "rec") as v:
        init, frames = await live_frames(v, 30)
        assert (init["width"], init["height"]) == size, init
        key = next(f for f in frames if f.keyframe)
        kinds = [nal_type(n) for n in split_annexb(key.payload)]
        assert NAL_SPS in kinds and NAL_PPS in kinds and NAL_IDR in kinds
        # Paced like a camera: ingest times follow the timestamps, not the disk.
        span_pts = frames[-1].pts_us - frames[0].pts_us
        span_ingest = frames[-1].ingest_us - frames[0].ingest_us
        assert span_ingest >= 0.7 * span_pts


async def test_short_file_loops_with_rising_timestamps(tmp_path: Path) -> None:
    """A 1-second clip plays on and on; timestamps keep rising across loops
    so players never see time go backwards."""
    import av

    clip = tmp_path / "clip.mp4"
    with av.open(str(DATA / "baseline.h264"), format="h264") as src, \
            av.open(str(clip), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for i, packet in enumerate(itertools.islice(src.demux(stream), 25)):
            packet.stream = out
            packet.pts = packet.dts = i * 512
            packet.time_base = out.time_base = stream.time_base or out.time_base
            if packet.size:
                dst.mux(packet)
    async with running_relay(make_config({"clip": str(clip)})) as relay, \
            viewer(relay.server.port, "clip") as v:
        _, frames = await live_frames(v, 60)
    pts = [f.pts_us for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    assert sum(f.keyframe for f in frames) >= 2  # it went round at least once


async def test_demo_camera_options_from_the_url() -> None:
    camera = CameraConfig("demo", "demo://?size=320x180&fps=10&gop=1")
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "demo") as v:
        init, frames = await live_frames(v, 12)
        assert (init["width"], init["height"]) == (320, 180)
        assert all(b.pts_us - a.pts_us == 100_000 for a, b in itertools.pairwise(frames))
        keys = [i for i, f in enumerate(frames) if f.keyframe]
        assert keys and all(b - a == 10 for a, b in itertools.pairwise(keys))


async def test_missing_file_is_offline_with_a_reason() -> None:
    async with running_relay(make_config({"gone": "/nonexistent/video.mp4"})) as relay, \
            viewer(relay.server.port, "gone") as v:
        seen = await v.until(lambda m: isinstance(m, dict) and m.get("state") == "offline")
        assert "no such file" in seen[-1]["reason"]
        info = await api_camera(relay.server.port, "gone")
        assert info["state"] == "offline" and "no such file" in info["last_error"]
