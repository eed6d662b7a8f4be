"""The relay core end to end: a real GStreamer RTSP camera in, real WebSocket
viewers out (issue 2)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

import pytest

from cxrelay.config import CameraConfig
from cxrelay.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SLICE,
    NAL_SPS,
    nal_type,
    parse_sps,
    split_annexb,
)
from cxrelay.protocol import FLAG_CATCHUP, FLAG_DISCONTINUITY, FLAG_KEYFRAME, Frame
from tests.camera.stamp import find_stamp
from tests.support import (
    aget,
    api_camera,
    is_frame,
    is_init,
    is_status,
    make_config,
    running_relay,
    stalled_client,
    tcp_connections_to,
    viewer,
    wait_for,
)

pytestmark = pytest.mark.rtsp


def types(frame: Frame) -> list[int]:
    return [nal_type(n) for n in split_annexb(frame.payload)]


async def first_live_frames(v: Any, count: int) -> tuple[dict[str, Any], list[Frame]]:
    """Skip to init, then collect `count` frames (catch-up flags stripped)."""
    seen = await v.until(is_init)
    init = seen[-1]
    frames: list[Frame] = []
    while len(frames) < count:
        m = await v.recv()
        if isinstance(m, Frame):
            frames.append(m)
    return init, frames


async def test_viewer_gets_init_then_keyframe_with_sps_pps_idr_then_frames(rtsp_camera) -> None:
    cam = rtsp_camera(stamp=True, gop=25)
    async with running_relay(make_config({"lobby": cam.url})) as relay, \
            viewer(relay.server.port, "lobby") as v:
        first = await v.recv()
        if is_status("connecting")(first):  # joined before the camera was up
            first = await v.recv()
        assert is_init(first), first
        assert first["protocol"] == 1 and first["camera"] == "lobby"
        assert (first["width"], first["height"]) == (640, 360)
        assert first["codec"].startswith("avc1.")
        frames: list[Frame] = []
        while len(frames) < 60:
            m = await v.recv()
            if isinstance(m, Frame):
                frames.append(m)
        key = frames[0]
        assert key.flags & FLAG_KEYFRAME
        kinds = types(key)
        assert NAL_SPS in kinds and NAL_PPS in kinds and NAL_IDR in kinds
        assert kinds.index(NAL_SPS) < kinds.index(NAL_IDR)
        sps = parse_sps(next(n for n in split_annexb(key.payload) if nal_type(n) == NAL_SPS))
        assert sps.codec == first["codec"]
        # Continuous: every stamped camera frame, in order, none twice.
        counters = [find_stamp(f.payload)[1] for f in frames]
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        pts = [f.pts_us for f in frames]
        assert all(b - a == 40_000 for a, b in itertools.pairwise(pts))
        assert all(f.ingest_us > 1.6e15 for f in frames)


async def test_sdp_only_parameter_sets_are_put_in_front_of_each_idr(rtsp_camera) -> None:
    cam = rtsp_camera(params="sdp", gop=10)
    async with running_relay(make_config({"cam": cam.url})) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 25)
        keyframes = [f for f in frames if f.flags & FLAG_KEYFRAME]
        assert len(keyframes) >= 2
        for key in keyframes:
            kinds = types(key)
            assert kinds.count(NAL_SPS) == 1 and kinds.count(NAL_PPS) == 1, kinds
            assert kinds.index(NAL_PPS) < kinds.index(NAL_IDR)
        for delta in (f for f in frames if not f.flags & FLAG_KEYFRAME):
            assert NAL_SPS not in types(delta)


async def test_camera_nal_units_arrive_unchanged(rtsp_camera) -> None:
    """The test camera's marker SEI (wall clock + counter) passes through byte
    for byte, with every other NAL unit the camera sent."""
    cam = rtsp_camera(stamp=True, slices=2)
    async with running_relay(make_config({"cam": cam.url})) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 30)
        for f in frames:
            assert find_stamp(f.payload) is not None
            kinds = types(f)
            vcl = [k for k in kinds if k in (NAL_SLICE, NAL_IDR)]
            assert len(vcl) == 2, kinds  # both slices of the picture, one message
        # No two consecutive messages share a timestamp (no picture cut in two).
        assert all(a.pts_us != b.pts_us for a, b in itertools.pairwise(frames))


async def test_viewers_share_one_rtsp_session(rtsp_camera) -> None:
    cam = rtsp_camera()
    async with running_relay(make_config({"cam": cam.url})) as relay:
        port = relay.server.port
        async with viewer(port, "cam") as a, viewer(port, "cam") as b, viewer(port, "cam") as c:
            for v in (a, b, c):
                await v.until(is_frame)
            assert (await api_camera(port, "cam"))["viewers"] == 3
            assert tcp_connections_to(cam.port) == 1


async def test_camera_restart_keeps_viewers_connected(rtsp_camera) -> None:
    cam = rtsp_camera(gop=25)
    camera = CameraConfig(name="cam", url=cam.url, read_timeout=2.0, open_timeout=2.0)
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "cam") as v:
        await v.until(is_frame)
        await asyncio.to_thread(cam.stop)
        seen = await v.until(is_status("offline"), timeout=15)
        assert seen[-1].get("reason")
        await asyncio.to_thread(cam.restart)
        seen = await v.until(is_init, timeout=40)
        assert not any(is_init(m) for m in seen[:-1])
        after = await v.until(is_frame)
        frame = after[-1]
        assert frame.flags & FLAG_KEYFRAME and not frame.flags & FLAG_CATCHUP
        assert any(is_status("live")(m) for m in after)
        info = await api_camera(relay.server.port, "cam")
        assert info["state"] == "live" and info["viewers"] == 1


async def test_wrong_credentials_show_offline_without_the_password(rtsp_camera, capsys) -> None:
    cam = rtsp_camera(user="admin", password="right-password")
    url = cam.url_with("admin", "Wr0ng-Pa55word")
    async with running_relay(make_config({"cam": url, "ok": cam.url_with(
            "admin", "right-password")})) as relay:
        port = relay.server.port

        async def failed() -> bool:
            return (await api_camera(port, "cam"))["state"] == "offline"

        await wait_for(failed, timeout=20)
        async with viewer(port, "cam") as v:
            status = await v.recv_json()
            assert status["type"] == "status" and status["state"] == "offline"
            assert "401" in status["reason"]
        info = await api_camera(port, "cam")
        assert "401" in info["last_error"]
        async with viewer(port, "ok") as good:  # the other camera is untouched
            await good.until(is_frame)
        _, api = await aget(port, "/api/cameras")
        _, metrics = await aget(port, "/metrics")
    out = capsys.readouterr()
    for text in (api.decode(), metrics.decode(), out.out, out.err, json.dumps(info)):
        assert "Wr0ng-Pa55word" not in text
        assert "right-password" not in text


async def test_slow_viewer_never_hurts_the_others(rtsp_camera) -> None:
    """One viewer stops reading. The others get every frame; the relay holds
    a bounded backlog for it and drops it back to keyframes (its backlog
    overflows, or its link ledger sees the socket stuck and skips frames)."""
    cam = rtsp_camera(stamp=True, bitrate=8000, gop=25)
    config = make_config({"cam": cam.url}, viewer_max_delay=0.5, viewer_max_bytes=512 * 1024)
    async with running_relay(config) as relay:
        port = relay.server.port
        hub = relay.cameras["cam"]
        async with viewer(port, "cam") as fast:
            await fast.until(is_frame)
            stalled = stalled_client(port, "cam")
            try:
                # Until the kernel's socket buffers are full and the stalled
                # viewer has been dropped back to keyframes at least twice.
                frames: list[Frame] = []
                slow = None
                shrunk = False
                while len(frames) < 1500:  # at most a minute
                    m = await fast.recv()
                    if isinstance(m, Frame):
                        frames.append(m)
                    others = [v for v in hub.viewers if v.ws.remote_address[1] ==
                              stalled.getsockname()[1]]
                    if others and (others[0].backlog.overflows >= 2
                                   or others[0].link.skipped >= 50):
                        slow = others[0]
                        break
                    if others and not shrunk:
                        # A slow link, not megabytes of loopback socket buffer.
                        sock = others[0].ws.transport.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
                        shrunk = True
                    if others:
                        assert others[0].backlog.frame_bytes <= 512 * 1024 + 200_000
                assert slow is not None, "the stalled viewer never fell behind"
                counters = [find_stamp(f.payload)[1] for f in frames]
                assert counters == list(range(counters[0], counters[0] + len(counters)))
                assert not any(f.flags & FLAG_DISCONTINUITY for f in frames)
                assert slow.backlog.frame_bytes <= 512 * 1024 + 200_000
                # What websockets holds for it stays at its write limit, not the camera's rate.
                assert slow.ws.transport.get_write_buffer_size() <= 1024 * 1024
            finally:
                stalled.close()


async def test_unknown_camera_is_404_before_upgrade(rtsp_camera) -> None:
    cam = rtsp_camera()
    async with running_relay(make_config({"cam": cam.url})) as relay:
        status, body = await aget(relay.server.port, "/ws/nope")
        assert status == 404 and b"nope" in body
        status, body = await aget(relay.server.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        await asyncio.sleep(0)


ASSEMBLY_CASES = {
    # Four slices, and pictures big enough that slices arrive FU-A fragmented.
    "4-slices-fragmented": {"slices": 4, "width": 1280, "height": 720, "bitrate": 6000},
    # B-frames: decode order on the wire, pts not monotonic.
    "b-frames": {"bframes": 2, "gop": 25},
}


@pytest.mark.parametrize("options", ASSEMBLY_CASES.values(), ids=ASSEMBLY_CASES.keys())
async def test_every_message_is_one_whole_picture(rtsp_camera, options: dict[str, Any]) -> None:
    """Issue 6: with FFmpeg's parser off, the relay assembles access units
    itself; none is split, none merged, none held back for the next one."""
    cam = rtsp_camera(stamp=True, **options)
    async with running_relay(make_config({"cam": cam.url})) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 75)
        live = [f for f in frames if not f.flags & FLAG_CATCHUP]
        slices = options.get("slices", 1)
        for f in live:
            kinds = types(f)
            assert sum(k in (NAL_SLICE, NAL_IDR) for k in kinds) == slices, kinds
            assert find_stamp(f.payload) is not None
        stamps = [find_stamp(f.payload)[1] for f in live]
        # One stamp per picture, each exactly once: nothing split or merged.
        assert len(set(stamps)) == len(stamps)
        assert all(a.pts_us != b.pts_us for a, b in itertools.pairwise(live))
        dropped = relay.cameras["cam"].metrics.frames_dropped
        assert [dropped.labels(reason)._value.get() for reason in ("partial", "corrupt")] == [0, 0]
        if options.get("bframes"):
            assert any(b.pts_us < a.pts_us for a, b in itertools.pairwise(live))


async def test_udp_transport(rtsp_camera) -> None:
    cam = rtsp_camera(stamp=True)
    camera = CameraConfig(name="cam", url=cam.url, transport="udp")
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 25)
        assert frames[0].keyframe
        assert all(find_stamp(f.payload) for f in frames)


async def test_parser_fallback_still_sends_whole_pictures(rtsp_camera) -> None:
    """`assembly = "parser"`: FFmpeg's parser cuts the units (a frame later)."""
    cam = rtsp_camera(stamp=True, slices=2)
    camera = CameraConfig(name="cam", url=cam.url, assembly="parser")
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 30)
        stamps = [find_stamp(f.payload)[1] for f in frames]
        assert stamps == list(range(stamps[0], stamps[0] + len(stamps)))
        assert all(sum(k in (NAL_SLICE, NAL_IDR) for k in types(f)) == 2 for f in frames)


@pytest.mark.parametrize("auth", ["basic", "digest"])
async def test_camera_credentials_basic_and_digest(rtsp_camera, auth: str) -> None:
    cam = rtsp_camera(user="viewer", password="p@ss:w/rd", auth=auth)
    async with running_relay(make_config({"cam": cam.url_with("viewer", "p@ss:w/rd")})) as relay, \
            viewer(relay.server.port, "cam") as v:
        _, frames = await first_live_frames(v, 3)
        assert frames[0].keyframe


async def test_stalled_camera_times_out_and_comes_back(rtsp_camera) -> None:
    """A camera that hangs with its TCP connection open: no packet for
    read_timeout means offline; when it wakes up, the same viewer gets a new
    init and pictures again."""
    import os
    import signal

    cam = rtsp_camera(stamp=True)
    camera = CameraConfig(name="cam", url=cam.url, read_timeout=1.5, open_timeout=1.5)
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "cam") as v:
        await v.until(is_frame)
        pid = cam._process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            seen = await v.until(is_status("offline"), timeout=15)
            assert seen[-1]["reason"] == "no video for 1.5 s"
        finally:
            os.kill(pid, signal.SIGCONT)
        await v.until(is_init, timeout=40)
        assert (await v.until(is_frame))[-1].keyframe
