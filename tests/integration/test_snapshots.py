"""Snapshots against a real relay and camera: the current picture (the camera
draws its picture number into it), without waiting for a keyframe, one decode
for concurrent requests, an offline camera, and the same refusals as /ws/."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import av
import pytest
from websockets.asyncio.client import connect

from cxrelay import snapshots
from cxrelay.access import mint_token
from cxrelay.app import Relay
from cxrelay.config import AuthConfig, CameraConfig, Config
from cxrelay.protocol import Frame
from tests.camera.stamp import find_stamp, read_drawn_counter
from tests.support import Viewer, api_camera, make_config, running_relay, viewer, wait_for

SECRET = "a test secret of thirty-two bytes"
GOP = 500  # a keyframe every 20 s: the test ends well within one GOP, even on a busy machine


async def get(port: int, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on its own connection: status, headers (lowercase), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


def picture(jpeg: bytes) -> tuple[int | None, int, int]:
    """(drawn counter, width, height) of a JPEG."""
    decoded = av.CodecContext.create("mjpeg", "r").decode(av.Packet(jpeg))
    gray = decoded[-1].reformat(format="gray")
    plane = gray.planes[0]
    return read_drawn_counter(bytes(plane), gray.width, plane.line_size), gray.width, gray.height


async def newest(v: Viewer, last: Frame | None = None) -> Frame:
    """The newest frame the viewer has: read until nothing more is waiting, or for at most a
    second (a live camera's frames come faster than any quiet spell a busy machine allows)."""
    deadline = asyncio.get_running_loop().time() + 1
    while last is None or asyncio.get_running_loop().time() < deadline:
        try:
            message = await v.recv(timeout=0.05 if last is not None else 10)
        except TimeoutError:
            assert last is not None
            return last
        if isinstance(message, Frame):
            last = message
    return last


def counter(frame: Frame) -> int:
    stamp = find_stamp(frame.payload)
    assert stamp is not None
    return stamp[1]


async def decodes(relay: Relay) -> float:
    return relay.metrics.snapshot_decodes._value.get()  # type: ignore[attr-defined]


@pytest.mark.rtsp
async def test_snapshot_is_the_current_picture_without_waiting_for_a_keyframe(
        rtsp_camera) -> None:
    cam = rtsp_camera(stamp=True, draw_counter=True, gop=GOP)
    async with running_relay(make_config({"cam": cam.url})) as relay:
        port = relay.server.port
        await live(port, "cam")
        async with viewer(port, "cam") as v:
            first = await _next_frame(v)  # the GOP's keyframe (the start of the catch-up)
            assert first.keyframe
            keyframe = counter(first)
            for _ in range(3):
                await asyncio.sleep(0.5)
                before = counter(await newest(v, first))
                status, headers, body = await get(port, "/api/cameras/cam/snapshot.jpg")
                assert status == 200 and headers["content-type"] == "image/jpeg"
                shown, width, height = picture(body)
                assert (width, height) == (640, 360)
                assert shown is not None
                # The newest picture when asked: none the viewer had was newer ...
                assert shown >= before
                # ... and a picture in the middle of the GOP: no keyframe was waited for.
                assert keyframe < shown < keyframe + GOP
                assert 0 <= float(headers["x-cxrelay-age"]) < 60
            status, _, body = await get(port, "/api/cameras/cam/snapshot.jpg?width=320")
            assert status == 200 and picture(body)[1:] == (320, 180)
            assert picture(body)[0] is not None


async def live(port: int, name: str) -> None:
    """Wait until the camera streams (a busy camera may miss the relay's first
    session: then it comes with the relay's next attempt)."""

    async def is_live() -> bool:
        return (await api_camera(port, name))["state"] == "live"

    await wait_for(is_live, timeout=60)


async def _next_frame(v: Viewer) -> Frame:
    while not isinstance(message := await v.recv(), Frame):
        pass
    return message


@pytest.mark.rtsp
async def test_concurrent_requests_are_served_by_one_decode(rtsp_camera) -> None:
    """The camera is frozen (SIGSTOP), so the newest frame stays the same while
    20 requests come at once: one decode serves them all, and the cache the
    next 20."""
    cam = rtsp_camera(stamp=True, draw_counter=True)
    camera = CameraConfig(name="cam", url=cam.url, read_timeout=20)
    async with running_relay(make_config([camera])) as relay:
        port = relay.server.port
        await live(port, "cam")
        async with viewer(port, "cam") as v:
            await newest(v)
        os.kill(cam._process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.3)  # the last packets in flight are in
            before = await decodes(relay)
            paths = ["/api/cameras/cam/snapshot.jpg"] * 10 + \
                ["/api/cameras/cam/snapshot.jpg?width=320"] * 10
            replies = await asyncio.gather(*(get(port, p) for p in paths))
            again = await asyncio.gather(*(get(port, p) for p in paths))
            after = await decodes(relay)
            assert (await api_camera(port, "cam"))["state"] == "live"
        finally:
            os.kill(cam._process.pid, signal.SIGCONT)
    assert after - before == 1
    assert all(status == 200 for status, _, _ in replies + again)
    full = {body for _, _, body in replies[:10] + again[:10]}
    small = {body for _, _, body in replies[10:] + again[10:]}
    assert len(full) == 1 and len(small) == 1  # the same JPEG, encoded once per width
    assert picture(full.pop())[0] == picture(small.pop())[0]


@pytest.mark.rtsp
async def test_offline_camera_shows_its_last_picture_with_its_age(
        rtsp_camera, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "COLD_AFTER", 0.5)  # the kept picture becomes a JPEG
    cam = rtsp_camera(stamp=True, draw_counter=True)
    cameras = [CameraConfig(name=n, url=cam.url, read_timeout=2, open_timeout=2)
               for n in ("seen", "unseen")]
    async with running_relay(make_config(cameras)) as relay:
        port = relay.server.port
        await live(port, "seen")
        async with viewer(port, "seen") as v:
            await newest(v)
        status, _, body = await get(port, "/api/cameras/seen/snapshot.jpg")
        assert status == 200
        shown = picture(body)[0]
        await asyncio.sleep(1.0)  # gone cold: decoder let go, picture kept as a JPEG
        await asyncio.to_thread(cam.stop)

        async def offline() -> bool:
            states = [(await api_camera(port, n))["state"] for n in ("seen", "unseen")]
            return states == ["offline", "offline"]

        await wait_for(offline, timeout=30)
        status, headers, body = await get(port, "/api/cameras/seen/snapshot.jpg")
        assert status == 503 and headers["content-type"] == "image/jpeg"
        assert headers["x-cxrelay-state"] == "offline"
        assert float(headers["x-cxrelay-age"]) >= 1.0
        assert picture(body) == (shown, 640, 360)
        status, headers, body = await get(port, "/api/cameras/seen/snapshot.jpg?width=320")
        assert status == 503 and picture(body) == (shown, 320, 180)
        status, headers, body = await get(port, "/api/cameras/unseen/snapshot.jpg")
        assert status == 503 and headers["content-type"].startswith("text/plain")
        assert body.decode().startswith("camera unseen is offline")


async def test_snapshots_have_the_access_rules_of_ws() -> None:
    cameras = [CameraConfig(name="lobby", url="demo://?size=320x180",
                            substream="demo://?size=160x90"),
               CameraConfig(name="door", url="demo://?size=320x180")]
    config = make_config(cameras, allowed_origins=("https://shop.example.com",))
    config = Config(server=config.server, cameras=config.cameras, auth=AuthConfig(secret=SECRET))
    lobby = mint_token(SECRET, ["lobby"], 60)
    everything = mint_token(SECRET, "*", 60)
    async with running_relay(config) as relay:
        port = relay.server.port
        path = "/api/cameras/lobby/snapshot.jpg"

        async def status(url: str, **headers: Any) -> tuple[int, bytes]:
            code, _, body = await get(port, url, {k.replace("_", "-"): v
                                                  for k, v in headers.items()})
            return code, body

        assert await status(path) == (401, b"a viewer token is required\n")
        assert (await status(f"/api/cameras/door/snapshot.jpg?token={lobby}"))[0] == 401
        assert (await status(f"/api/cameras/nope/snapshot.jpg?token={lobby}"))[0] == 401
        assert (await status(f"/api/cameras/nope/snapshot.jpg?token={everything}"))[0] == 404
        assert (await status(f"{path}?token={lobby}", Origin="https://evil.example.com"))[0] \
            == 403
        assert await status(f"{path}?token={lobby}&width=8") == \
            (400, b"width must be 16 to 7680 pixels\n")
        assert await status(f"{path}?token={lobby}&stream=side") == \
            (400, b"stream must be main or sub\n")
        assert await status(f"/api/cameras/door/snapshot.jpg?token={everything}&stream=sub") \
            == (404, b"camera door has no sub-stream\n")
        await wait_for(lambda: _live(port, "lobby", lobby), timeout=30)
        code, headers, body = await get(port, path, {"Cookie": f"cxrelay_token={lobby}",
                                                     "Origin": "https://shop.example.com"})
        assert code == 200 and body.startswith(b"\xff\xd8")
        assert headers["access-control-allow-origin"] == "https://shop.example.com"
        # The sub-stream is pulled only while someone watches it; a snapshot
        # doesn't start it.
        code, body = await status(f"{path}?token={lobby}&stream=sub")
        assert code == 503 and body.startswith(b"camera lobby is idle")
        sub = f"/ws/lobby?stream=sub&token={lobby}"
        async with connect(f"ws://127.0.0.1:{port}{sub}", max_size=None):
            await wait_for(lambda: _live(port, "lobby", lobby, "&stream=sub"), timeout=30)
            code, _, body = await get(port, f"{path}?token={lobby}&stream=sub")
        assert code == 200 and picture(body)[1:] == (160, 90)


async def _live(port: int, name: str, token: str, query: str = "") -> bool:
    code, _, _ = await get(port, f"/api/cameras/{name}/snapshot.jpg?token={token}{query}")
    return code == 200


@pytest.mark.rtsp
async def test_snapshot_of_a_camera_with_b_frames(rtsp_camera) -> None:
    """B-frames: the decoder holds the newest picture back; the snapshot drains it."""
    cam = rtsp_camera(stamp=True, draw_counter=True, bframes=2)
    async with running_relay(make_config({"cam": cam.url})) as relay:
        port = relay.server.port
        await live(port, "cam")
        async with viewer(port, "cam") as v:
            await newest(v)
            for _ in range(3):
                before = counter(await newest(v, await _next_frame(v)))
                status, _, body = await get(port, "/api/cameras/cam/snapshot.jpg")
                shown = picture(body)[0]
                assert status == 200 and shown is not None
                # Pictures are numbered in display order, stamps in decode order: of
                # the first n pictures decoded, one is displayed n-th or later. A
                # decoder that still held pictures back would show an older one.
                assert shown >= before
