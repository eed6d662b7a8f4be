"""Sub-streams, stills and what players send, against real RTSP cameras (issue 10):
each test camera's sub-stream is a second GStreamer camera at a smaller size."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from cxrelay.config import CameraConfig
from cxrelay.h264 import NAL_SPS, parse_sps, split_annexb
from cxrelay.protocol import FLAG_CATCHUP, Frame
from tests.support import (
    aget,
    api_camera,
    free_port,
    is_frame,
    is_init,
    is_status,
    make_config,
    running_relay,
    tcp_connections_to,
    viewer,
    wait_for,
)

pytestmark = pytest.mark.rtsp


@pytest.fixture
def two_streams(rtsp_camera) -> tuple[Any, Any]:
    """A camera's main stream (640x360) and its sub-stream (320x180, keyframes every 10)."""
    return rtsp_camera(), rtsp_camera(width=320, height=180, gop=10, bitrate=300)


async def next_frames(v: Any, count: int) -> list[Frame]:
    """The next ``count`` frames, past any status message."""
    got: list[Frame] = []
    while len(got) < count:
        message = await v.recv()
        if isinstance(message, Frame):
            got.append(message)
        else:
            assert message["type"] == "status", message
    return got


@pytest.fixture
async def lobby(two_streams) -> AsyncIterator[int]:
    """A relay with camera "lobby", main stream and sub-stream; its port."""
    main, sub = two_streams
    config = make_config([CameraConfig("lobby", main.url, substream=sub.url)])
    async with running_relay(config) as relay:
        yield relay.server.port


def sizes(init: dict[str, Any]) -> tuple[str, int, int]:
    return init["stream"], init["width"], init["height"]


async def test_a_viewer_picks_the_substream_and_switches_on_the_same_socket(two_streams) -> None:
    main, sub = two_streams
    camera = CameraConfig("lobby", main.url, substream=sub.url, linger=2.0)
    async with running_relay(make_config([camera])) as relay:
        port = relay.server.port

        async def main_live() -> bool:
            return (await api_camera(port, "lobby"))["state"] == "live"

        await wait_for(main_live)
        async with viewer(port, "lobby?stream=sub") as v:
            init = (await v.until(is_init))[-1]
            assert sizes(init) == ("sub", 320, 180)
            await v.until(is_frame)
            assert tcp_connections_to(sub.port) == 1
            info = await api_camera(port, "lobby")
            assert [(s["name"], s["width"], s["height"]) for s in info["streams"]] == \
                [("main", 640, 360), ("sub", 320, 180)]
            assert info["width"] == 640 and info["viewers"] == 1  # the old fields: main's

            await v.ws.send(json.dumps({"type": "select", "stream": "main"}))
            seen = await v.until(is_init)
            assert all(isinstance(m, Frame) for m in seen[:-1])  # the sub-stream's, until then
            assert sizes(seen[-1]) == ("main", 640, 360)
            sub_info = seen[-1]["streams"][1]
            assert (sub_info["name"], sub_info["width"], sub_info["height"]) == ("sub", 320, 180)
            assert sub_info["codec"].startswith("avc1.42")  # Constrained Baseline, its level
            assert await v.recv_json() == {"type": "status", "state": "live"}
            frames = await next_frames(v, 30)
            # The main stream's GOP cache first, a keyframe leading, then live frames.
            assert frames[0].keyframe and frames[0].flags & FLAG_CATCHUP
            assert not frames[-1].flags & FLAG_CATCHUP
            assert (await api_camera(port, "lobby"))["streams"][0]["viewers"] == 1
        # Nobody watches the sub-stream now: its session closes after the linger.

        async def sub_idle() -> bool:
            info = await api_camera(port, "lobby")
            return info["streams"][1]["state"] == "idle" and tcp_connections_to(sub.port) == 0

        await wait_for(sub_idle, timeout=30)
        assert tcp_connections_to(main.port) == 1  # the main stream is not on demand


async def test_stills_get_keyframes_only(lobby: int) -> None:
    port = lobby
    async with viewer(port, "lobby?stream=sub&frames=keyframes") as still, \
            viewer(port, "lobby?stream=sub") as motion:
        init = (await still.until(is_init))[-1]
        assert init["frames"] == "keyframes"
        frames = await next_frames(still, 4)  # 40 pictures' worth
        assert all(f.flags & 0x01 for f in frames)
        assert not any(f.flags & FLAG_CATCHUP for f in frames)  # stills are shown
        seen = await motion.until(lambda m: is_frame(m) and not m.flags & FLAG_CATCHUP)
        deltas = await next_frames(motion, 12)
        assert not all(f.keyframe for f in deltas + seen[-1:]), "the camera sends deltas too"
        # Every frame again, on the same socket.
        await still.ws.send('{"type":"select","frames":"all"}')
        assert (await still.until(is_init))[-1]["frames"] == "all"
        later = await next_frames(still, 15)
        assert not all(f.keyframe for f in later)


async def test_a_camera_without_a_substream_works_as_before(rtsp_camera) -> None:
    cam = rtsp_camera()
    async with running_relay(make_config({"cam": cam.url})) as relay:
        port = relay.server.port
        async with viewer(port, "cam") as old, viewer(port, "cam?stream=sub") as new:
            init = (await old.until(is_init))[-1]
            assert (init["codec"], init["width"], init["height"]) == ("avc1.42c01e", 640, 360)
            assert init["streams"] == [{"name": "main", "width": 640, "height": 360,
                                        "codec": "avc1.42c01e"}]
            assert sizes((await new.until(is_init))[-1]) == ("main", 640, 360)
            await old.until(is_frame)
            await new.until(is_frame)
            info = await api_camera(port, "cam")
            assert info["state"] == "live" and info["viewers"] == 2
            assert [s["name"] for s in info["streams"]] == ["main"]


async def test_a_failing_substream_is_offline_for_its_viewers_only(rtsp_camera) -> None:
    main = rtsp_camera()
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    camera = CameraConfig("lobby", main.url, substream=dead, open_timeout=2)
    async with running_relay(make_config([camera])) as relay:
        port = relay.server.port
        async with viewer(port, "lobby?stream=sub") as on_sub, viewer(port, "lobby") as on_main:
            await on_sub.until(is_status("offline"))
            await on_main.until(is_frame)
            await next_frames(on_main, 10)
            info = await api_camera(port, "lobby")
            assert info["state"] == "live" and info["streams"][1]["state"] == "offline"
            assert info["streams"][1]["last_error"]


async def test_reported_latency_appears_in_metrics(lobby: int) -> None:
    port = lobby
    async with viewer(port, "lobby?stream=sub") as v:
        await v.until(is_frame)
        await v.ws.send(json.dumps({"type": "ping", "id": 1}))
        pong = (await v.until(lambda m: isinstance(m, dict) and m["type"] == "pong"))[-1]
        assert pong["id"] == 1
        await v.ws.send(json.dumps({"type": "stats", "latency": [35, 45, 120],
                                    "dropped": 2}))

        async def reported() -> bool:
            return samples(await aget(port, "/metrics")).get(
                ("cxrelay_glass_latency_seconds_count", "lobby", "sub"), 0) == 3

        await wait_for(reported, timeout=10)
    metrics = samples(await aget(port, "/metrics"))
    assert metrics[("cxrelay_glass_latency_seconds_sum", "lobby", "sub")] == pytest.approx(0.2)
    assert metrics[("cxrelay_glass_latency_seconds_bucket", "lobby", "sub", "0.05")] == 2
    assert metrics[("cxrelay_player_frames_dropped_total", "lobby", "sub")] == 2
    assert metrics[("cxrelay_glass_latency_seconds_count", "lobby", "main")] == 0


def samples(response: tuple[int, bytes]) -> dict[tuple[str, ...], float]:
    status, body = response
    assert status == 200
    return {(s.name, *(s.labels[k] for k in ("camera", "stream", "le") if k in s.labels)): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


@pytest.mark.parametrize(("messages", "reason"), [
    (['{"type":"select","stream":"4k"}'], "select: stream must be main or sub"),
    (['{"type":"select","frames":"' + "k" * 3000 + '"}'],
     "select: frames must be all or keyframes"),
    (['{"type":"select","stream":"sub"}', '{"type":"select","stream":"main"}'] * 10,
     "too many select messages"),
    (['{"type":"stats","latency":[1e308]}'] * 200, "too many messages"),
])
async def test_hostile_messages_close_the_sender_only(lobby: int, messages: list[str],
                                                     reason: str) -> None:
    port = lobby
    async with viewer(port, "lobby?stream=sub") as bystander, viewer(port, "lobby") as bad:
        await bystander.until(is_frame)
        await bad.until(is_frame)
        for message in messages:
            try:
                await bad.ws.send(message)
            except ConnectionClosed:
                break
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await bad.recv()
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, reason)
        await next_frames(bystander, 10)
    _, body = await aget(port, "/metrics")
    assert "inf" not in body.decode().split("cxrelay_glass_latency_seconds_sum")[1][:80]


async def test_ignored_messages_and_a_bad_query(lobby: int) -> None:
    port = lobby
    async with viewer(port, "lobby") as v:
        await v.until(is_frame)
        for junk in ("[" * 3000, "null", '{"type":"future-thing","x":1}', "{}",
                     '{"type":"stats","latency":"x","dropped":-5}'):
            await v.ws.send(junk)
        await next_frames(v, 10)
    status, body = await aget(port, "/ws/lobby?stream=hd")
    assert (status, body) == (400, b"stream must be main or sub\n")


def sps_size(frame: Frame) -> tuple[int, int]:
    sps = parse_sps(next(n for n in split_annexb(frame.payload) if n[0] & 0x1F == NAL_SPS))
    return sps.width, sps.height


async def test_switching_back_and_forth_never_mixes_streams(lobby: int) -> None:
    """After each select, the first frame is a keyframe of the new stream (a decoder
    can start there), and nothing of the old stream follows: the two cameras' clocks
    have unrelated phases, and each stream's timestamps move in 40 ms steps."""
    port = lobby
    async with viewer(port, "lobby") as v:
        await v.until(is_frame)
        for stream in ["sub", "main"] * 3:
            await v.ws.send(json.dumps({"type": "select", "stream": stream}))
            init = (await v.until(is_init))[-1]
            assert init["stream"] == stream
            key = (await v.until(is_frame))[-1]
            assert key.keyframe and sps_size(key) == (init["width"], init["height"])
            frames = await next_frames(v, 15)
            assert all((f.pts_us - key.pts_us) % 40_000 == 0 for f in frames)
            assert all(sps_size(f) == sps_size(key) for f in frames if f.keyframe)
            await asyncio.sleep(1.1)  # within the select rate limit
