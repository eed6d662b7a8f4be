"""Limits and misbehaving clients, against a real relay (issue 5): viewer
caps (503 before the upgrade), client messages (1003, 1009, text ignored),
a handshake that never finishes, a peer that stops reading at a bitrate that
fills its socket (issue 14, fault 2), and a ping flood (fault 1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cxrelay.config import CameraConfig
from cxrelay.protocol import Frame
from tests.support import (
    Viewer,
    api_camera,
    is_frame,
    make_config,
    running_relay,
    stalled_client,
    viewer,
    wait_for,
)

CAMERAS = [CameraConfig("a", "demo://?size=160x90&fps=10", max_viewers=2),
           CameraConfig("b", "demo://?size=160x90&fps=10")]


async def refused_status(port: int, camera: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{port}/ws/{camera}"):
            pass
    return info.value.response.status_code, info.value.response.body.decode()


async def test_viewer_limits_per_camera_and_in_total() -> None:
    async with running_relay(make_config(CAMERAS, max_viewers=3)) as relay:
        port = relay.server.port
        async with viewer(port, "a"), viewer(port, "a"):
            status, body = await refused_status(port, "a")
            assert status == 503 and "maximum of 2 viewers" in body
            async with viewer(port, "b"):
                status, body = await refused_status(port, "b")
                assert status == 503 and "the server has its maximum of 3" in body
        # Room again once they leave.
        async with viewer(port, "a") as v:
            await v.until(is_frame)


async def test_client_messages() -> None:
    async with running_relay(make_config(CAMERAS, max_message_size=256)) as relay:
        port = relay.server.port
        async with viewer(port, "b") as v:
            await v.ws.send('{"type": "hello-from-the-future"}')  # ignored
            await v.until(is_frame)
            await v.ws.send("x" * 1000)
            with pytest.raises(ConnectionClosed):
                while True:
                    await v.recv()
            assert v.ws.close_code == 1009
        async with viewer(port, "b") as v:
            await v.ws.send(b"\x00\x01")
            with pytest.raises(ConnectionClosed):
                while True:
                    await v.recv()
            assert v.ws.close_code == 1003
        assert (await api_camera(port, "b"))["viewers"] == 0


async def test_handshake_that_never_finishes_is_dropped() -> None:
    async with running_relay(make_config(CAMERAS, handshake_timeout=0.5)) as relay:
        port = relay.server.port

        def silent_client() -> float:
            """Seconds until the server hangs up (socket.timeout if it never does)."""
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /ws/b HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                s.settimeout(10)
                started = time.monotonic()
                while s.recv(4096):
                    pass
                return time.monotonic() - started

        assert await asyncio.to_thread(silent_client) < 5
        async with viewer(port, "b") as v:  # and the server is fine
            await v.until(is_frame)


def noisy_h264(path: Path, frames: int = 50, size: tuple[int, int] = (256, 192)) -> float:
    """A raw H.264 file of noise (it hardly compresses): about 2 MB/s at 25 fps,
    enough to fill a socket that is not read within seconds, as a real
    camera does. Returns its bytes per second."""
    rng = random.Random(7)
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "12", "g": "25", "preset": "ultrafast", "bf": "0"}
        for _ in range(frames):
            picture = av.VideoFrame(*size, "yuv420p")
            for plane in picture.planes:
                plane.update(rng.randbytes(plane.buffer_size))
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return os.path.getsize(path) / frames * 25


@contextlib.asynccontextmanager
async def reading(v: Viewer) -> AsyncIterator[list[Frame]]:
    """Keep reading in the background (a viewer that doesn't read gets
    dropped: that is the point); yields the frames read so far."""
    frames: list[Frame] = []

    async def read() -> None:
        while True:
            message = await v.recv()
            if isinstance(message, Frame):
                frames.append(message)

    task = asyncio.ensure_future(read())
    try:
        yield frames
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError("the reading viewer failed") from task.exception()


async def more_frames(frames: list[Frame], count: int) -> None:
    before = len(frames)

    async def arrived() -> bool:
        return len(frames) >= before + count

    await wait_for(arrived, timeout=20)


async def test_dead_peer_is_dropped_by_ping_timeout(tmp_path: Path) -> None:
    """A peer that completes the handshake, then neither reads nor answers
    pings, on a camera whose bitrate fills its socket within the first ping
    interval (a 1.5 Mbit/s camera does with the default 20 s): from then on
    keepalive pings queue behind the video and never go out, so without the
    drain timeout it would stay forever. A reading viewer is untouched."""
    rate = noisy_h264(tmp_path / "noise.h264")
    assert rate > 1_000_000
    config = make_config([CameraConfig("n", str(tmp_path / "noise.h264"))],
                         ping_interval=5, ping_timeout=5, drain_timeout=1.0)
    async with running_relay(config) as relay:
        port = relay.server.port
        async with viewer(port, "n") as healthy, reading(healthy) as frames:
            with capture_logs() as logs:
                dead = stalled_client(port, "n")
                try:
                    async def joined() -> bool:
                        return (await api_camera(port, "n"))["viewers"] == 2

                    await wait_for(joined, timeout=10)

                    async def dropped() -> bool:
                        return (await api_camera(port, "n"))["viewers"] == 1

                    await wait_for(dropped, timeout=30)
                finally:
                    dead.close()
            closed = [e for e in logs if e["event"] == "viewer closed"]
            assert len(closed) == 1 and "has not drained for 1 s" in closed[0]["reason"]
            assert closed[0]["code"] == 1008
            await more_frames(frames, 10)  # still served


async def test_ping_flood_without_reading_is_closed() -> None:
    """A client that sends pings as fast as it can and never reads the pongs:
    the pongs waiting for it are bounded, then it is closed (1008) with a log
    line, and the other viewers see nothing of it."""
    async with running_relay(make_config(CAMERAS)) as relay:
        port = relay.server.port
        async with viewer(port, "b") as healthy, reading(healthy) as frames:
            with capture_logs() as logs:
                flooder = stalled_client(port, "b")
                stop = threading.Event()
                sent = [0]

                def flood() -> None:
                    # Masked pings with 125-byte payloads (the largest), 500 per write.
                    ping = b"\x89\xfd" + bytes(4) + bytes(125)
                    batch = ping * 500
                    try:
                        flooder.settimeout(1.0)
                        while not stop.is_set():
                            try:
                                flooder.sendall(batch)
                                sent[0] += 500
                            except TimeoutError:  # the relay stopped reading from us
                                continue
                    except OSError:
                        pass  # closed by the relay

                thread = threading.Thread(target=flood, daemon=True)
                thread.start()
                most = 0  # bytes waiting in the relay's transports, at most
                try:
                    async def dropped() -> bool:
                        nonlocal most
                        most = max([most] + [v.transport.get_write_buffer_size()  # type: ignore
                                             for v in relay.cameras["b"].viewers])
                        return (await api_camera(port, "b"))["viewers"] == 1

                    await wait_for(dropped, timeout=60)
                finally:
                    stop.set()
                    await asyncio.to_thread(thread.join, 5)
                    flooder.close()
            closed = [e for e in logs if e["event"] == "viewer closed"]
            assert len(closed) == 1 and closed[0]["code"] == 1008
            assert "pings" in closed[0]["reason"]
            assert sent[0] > 2000  # it really flooded
            assert most < 2 * 1024 * 1024, f"{most} bytes waited for it"
            await more_frames(frames, 5)  # still served
