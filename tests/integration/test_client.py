"""cxrelay.client against a real relay: every frame in order, decoded pictures
of the right size and rate, reconnects (connection, camera, relay), one RTSP
session shared with a browser-like viewer, and refusals as typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cxrelay import client
from cxrelay.access import mint_token
from cxrelay.app import Relay
from cxrelay.config import AuthConfig, CameraConfig, Config
from cxrelay.protocol import CLOSE_INTERNAL
from tests.camera.stamp import find_stamp
from tests.support import (
    api_camera,
    free_port,
    is_frame,
    make_config,
    running_relay,
    tcp_connections_to,
    viewer,
    wait_for,
)

SECRET = "a test secret of thirty-two bytes"
DEMO = "demo://?size=640x360&fps=25&gop=2"


def ws_url(relay: Relay, camera: str) -> str:
    assert relay.server is not None
    return f"ws://127.0.0.1:{relay.server.port}/ws/{camera}"


async def take(source: AsyncIterator[Any], count: int, timeout: float = 30.0) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout):
        async for item in source:
            out.append(item)
            if len(out) == count:
                break
    return out


def counters(frames: list[client.Frame]) -> list[int]:
    stamps = [find_stamp(f.data) for f in frames]
    assert all(s is not None for s in stamps)
    return [s[1] for s in stamps if s is not None]


async def live(relay: Relay, camera: str) -> None:
    assert relay.server is not None
    port = relay.server.port

    async def is_live() -> bool:
        return (await api_camera(port, camera))["state"] == "live"

    await wait_for(is_live, timeout=30)


# --- frames ------------------------------------------------------------------------------------


@pytest.mark.rtsp
async def test_every_frame_in_order(shared_camera) -> None:
    async with running_relay(make_config({"cam": shared_camera.url})) as relay:
        await live(relay, "cam")
        await asyncio.sleep(1.0)  # a GOP partly cached: the first frames are catch-up
        async with client.connect(ws_url(relay, "cam")) as cam:
            frames = await take(cam.frames(), 75)
            assert cam.init == client.Init("cam", cam.init.codec, 640, 360, 1, "main")
            assert cam.state == "live"
        assert frames[0].keyframe and frames[0].catchup
        assert any(f.catchup for f in frames) and not frames[-1].catchup
        assert not any(f.discontinuity for f in frames)
        numbers = counters(frames)
        assert numbers == list(range(numbers[0], numbers[0] + len(frames)))
        assert all(b.pts - a.pts == 40_000 for a, b in itertools.pairwise(frames))
        assert all(b.received >= a.received for a, b in itertools.pairwise(frames))
        assert all(f.data.startswith((b"\0\0\0\1", b"\0\0\1")) for f in frames)


@pytest.mark.rtsp
async def test_a_dropped_connection_resumes_without_losing_or_repeating_a_frame(
        rtsp_camera) -> None:
    """The relay closes the client (1011); it reconnects, and of the catch-up it
    gets again it hands out only what it had not: the stamps run on unbroken."""
    cam = rtsp_camera(stamp=True, gop=250)  # 10 s: the reconnect lands in the same GOP
    async with running_relay(make_config({"cam": cam.url})) as relay:
        await live(relay, "cam")
        async with client.connect(ws_url(relay, "cam")) as watcher:
            stream = watcher.frames()
            frames = await take(stream, 20)
            for v in list(relay.cameras["cam"].viewers):
                await v.close(CLOSE_INTERNAL, "internal error")
            frames += await take(stream, 40)
            assert watcher.connections == 2
        numbers = counters(frames)
        assert numbers == list(range(numbers[0], numbers[0] + len(frames)))
        assert not any(f.discontinuity for f in frames)


@pytest.mark.rtsp
async def test_follows_the_camera_through_a_restart(rtsp_camera) -> None:
    cam = rtsp_camera(stamp=True, gop=25)
    camera = CameraConfig(name="cam", url=cam.url, read_timeout=2.0, open_timeout=2.0)
    async with running_relay(make_config([camera])) as relay:
        await live(relay, "cam")
        async with client.connect(ws_url(relay, "cam")) as watcher:
            stream = watcher.frames()
            before = await take(stream, 10)
            states: list[str] = []

            async def restart() -> None:
                await asyncio.to_thread(cam.stop)
                await wait_for(lambda: _true(watcher.state == "offline"), timeout=20)
                states.append(watcher.state)
                await asyncio.to_thread(cam.restart)

            task = asyncio.create_task(restart())
            after: list[client.Frame] = []
            async with asyncio.timeout(60):
                async for frame in stream:
                    if task.done():
                        after.append(frame)
                        if len(after) == 10:
                            break
            await task
            assert watcher.connections == 1  # the relay kept the client; the camera came back
        assert states == ["offline"]
        restart_frame = after[0]
        assert restart_frame.keyframe and restart_frame.discontinuity
        assert restart_frame.received > before[-1].received
        numbers = counters(after)  # the new camera's frames, every one in order
        assert numbers == list(range(numbers[0], numbers[0] + len(after)))
        assert not any(f.discontinuity for f in after[1:])


async def _true(value: bool) -> bool:
    return value


async def test_follows_the_relay_through_a_restart() -> None:
    port = free_port()
    config = make_config({"demo": DEMO}, port=port)
    relay = Relay(config)
    await relay.startup()
    try:
        await live(relay, "demo")
        async with client.connect(ws_url(relay, "demo")) as watcher:
            stream = watcher.frames()
            await take(stream, 5)
            await relay.shutdown()
            relay = Relay(config)
            await relay.startup()
            frames = []
            async with asyncio.timeout(30):
                async for frame in stream:  # (frames the old relay sent before it went come first)
                    if watcher.connections == 2:
                        frames.append(frame)
                        if len(frames) == 5:
                            break
            assert frames[0].keyframe and frames[0].discontinuity
    finally:
        await relay.shutdown()


# --- pictures ----------------------------------------------------------------------------------


async def test_pictures_have_the_right_size_and_rate_and_the_first_is_live() -> None:
    async with running_relay(make_config({"demo": DEMO})) as relay:
        await live(relay, "demo")
        await asyncio.sleep(1.2)  # over half a GOP cached: catch-up would be 1 s old
        joined = time.time()
        async with client.connect(ws_url(relay, "demo")) as watcher:
            pictures = await take(watcher.pictures("rgb24", every=0.5, width=320), 6)
            async with asyncio.timeout(10):
                async for mid in watcher.frames():  # 5 frames past a keyframe (every 2 s)
                    if mid.pts % 2_000_000 == 200_000:
                        break
            gray = await take(watcher.pictures("gray", height=90), 3)
        for p in pictures:
            assert (p.width, p.height, p.format) == (320, 180, "rgb24")
            assert len(p.to_bytes()) == 320 * 180 * 3
        # The first one is a live frame, received after the client joined: the
        # catch-up before it was decoded, not shown.
        assert pictures[0].received >= joined
        gaps = [b.received - a.received for a, b in itertools.pairwise(pictures)]
        assert all(gap >= 0.5 for gap in gaps), gaps  # at most one per half second
        assert sum(gaps) / len(gaps) < 1.0, gaps  # ... and not many fewer
        assert [(p.width, p.height, p.format) for p in gray] == [(160, 90, "gray")] * 3
        # The second pictures() started mid-GOP on the same connection: the frames
        # since the keyframe are kept, so it did not wait 1.8 s for the next one.
        assert mid.pts < gray[0].pts < mid.pts + 1_000_000
        # Newer and newer (the newest each time: on a busy machine some are skipped).
        assert all(b.pts > a.pts for a, b in itertools.pairwise(gray))


async def test_pictures_show_the_picture_that_was_sent() -> None:
    """Decoded, a picture is the camera's picture: the demo's test pattern is
    not a blank or a grey frame (a broken decode gives one of those)."""
    async with running_relay(make_config({"demo": "demo://?size=160x90&fps=25"})) as relay:
        await live(relay, "demo")
        async with client.connect(ws_url(relay, "demo")) as watcher:
            (picture,) = await take(watcher.pictures("rgb24"), 1)
    pixels = picture.to_bytes()
    assert len(set(pixels)) > 50  # many different values: a real picture


@pytest.mark.rtsp
async def test_an_analytics_client_and_a_browser_share_one_rtsp_session(rtsp_camera) -> None:
    cam = rtsp_camera()
    async with running_relay(make_config({"cam": cam.url})) as relay:
        await live(relay, "cam")
        port = relay.server.port
        async with viewer(port, "cam") as browser, client.connect(ws_url(relay, "cam")) as worker:
            await browser.until(is_frame)
            pictures = worker.pictures(every=0.2)
            await take(pictures, 3)
            await browser.until(is_frame)
            assert (await api_camera(port, "cam"))["viewers"] == 2
            assert tcp_connections_to(cam.port) == 1


# --- refusals ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def guarded_relay() -> AsyncIterator[Relay]:
    cameras = [CameraConfig(name="lobby", url=DEMO),
               CameraConfig(name="door", url=DEMO, max_viewers=1)]
    config = make_config(cameras, allowed_origins=("https://shop.example.com",))
    config = Config(server=config.server, cameras=config.cameras, auth=AuthConfig(secret=SECRET))
    async with running_relay(config) as relay:
        yield relay


async def refusal(url: str, kind: type[client.ClientError], **kwargs: Any) -> str:
    with pytest.raises(kind) as info:
        async with client.connect(url, **kwargs):
            pass
    message = str(info.value)
    assert "\n" not in message and type(info.value) is kind
    return message


async def test_refusals_are_typed_one_line_errors_without_the_token() -> None:
    async with guarded_relay() as relay:
        lobby, door = ws_url(relay, "lobby"), ws_url(relay, "door")
        everything = mint_token(SECRET, "*", 60)
        just_door = mint_token(SECRET, ["door"], 60)
        messages = [
            await refusal(lobby, client.Unauthorized),
            await refusal(lobby, client.Unauthorized, token=just_door),
            await refusal(f"{lobby}?token={just_door}", client.Unauthorized),
            await refusal(ws_url(relay, "nope"), client.UnknownCamera, token=everything),
            await refusal(lobby, client.Refused, token=everything,
                          origin="https://evil.example.com"),
        ]
        assert messages[0] == f"{lobby}: unauthorized (401): a viewer token is required"
        assert messages[1].endswith("(401): token does not cover camera lobby")
        assert messages[3].endswith("unknown camera (404): no camera named 'nope'")
        assert messages[4].endswith("refused (403): origin https://evil.example.com is not allowed")
        async with client.connect(lobby, token=everything, origin="https://shop.example.com"):
            pass
        async with client.connect(door, token=just_door):
            messages.append(await refusal(door, client.Busy, token=just_door))
        assert messages[-1].endswith("busy (503): camera door has its maximum of 1 viewers")
        for message in messages:
            assert just_door not in message and everything not in message
    messages = [await refusal(f"ws://127.0.0.1:{free_port()}/ws/x", client.Unreachable)]
    assert "unreachable" in messages[0]


async def test_a_token_that_expires_while_watching() -> None:
    async with guarded_relay() as relay:
        lobby = ws_url(relay, "lobby")
        short = mint_token(SECRET, ["lobby"], 2)
        async with client.connect(lobby, token=short) as watcher:
            with pytest.raises(client.TokenExpired) as info:
                await take(watcher.frames(), 10_000, timeout=30)
        assert str(info.value) == f"{lobby}: token expired (1008): token expired"
        assert short not in repr(info.value)

        issued: list[float] = []

        def fresh_token() -> str:
            issued.append(time.monotonic())
            return mint_token(SECRET, ["lobby"], 2 if len(issued) == 1 else 60)

        async with client.connect(lobby, token=fresh_token) as watcher:
            stream = watcher.frames()
            async with asyncio.timeout(30):
                async for _ in stream:
                    if watcher.connections == 2:
                        break
            await take(stream, 5)
        assert len(issued) == 2


# --- the blocking wrapper ----------------------------------------------------------------------


async def test_blocking_wrapper_for_scripts_without_asyncio() -> None:
    async with running_relay(make_config({"demo": DEMO})) as relay:
        await live(relay, "demo")
        url = ws_url(relay, "demo")

        def script() -> tuple[list[client.Frame], client.Picture, str]:
            with client.open(url) as cam:
                frames = list(itertools.islice(cam.frames(), 5))
                picture = next(iter(cam.pictures("bgr24", width=64)))
            try:
                client.open(url.replace("/demo", "/nope"))
            except client.UnknownCamera as exc:
                return frames, picture, str(exc)
            raise AssertionError("no error for an unknown camera")

        frames, picture, error = await asyncio.to_thread(script)
        assert frames[0].keyframe and len(frames) == 5
        assert (picture.width, picture.height, picture.format) == (64, 36, "bgr24")
        assert error.endswith("unknown camera (404): no camera named 'nope'")
        threads = await asyncio.to_thread(_client_threads)
        assert threads == []


def _client_threads() -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        names = [t.name for t in threading.enumerate()
                 if t.name.startswith(("cxrelay-client", "cxrelay-decode"))]
        if not names:
            return []
        time.sleep(0.1)
    return names
