"""Limits and misbehaving clients, against a real relay (issue 5): viewer
caps (503 before the upgrade), client messages (1003, 1009, text ignored),
a handshake that never finishes, and a peer that stops answering pings."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cxrelay.config import CameraConfig
from tests.support import api_camera, is_frame, make_config, running_relay, viewer, wait_for

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


async def test_dead_peer_is_dropped_by_ping_timeout() -> None:
    config = make_config(CAMERAS, ping_interval=0.3, ping_timeout=0.3)
    async with running_relay(config) as relay:
        port = relay.server.port
        # A client that completes the handshake, then neither reads nor answers pings.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ws/b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        try:
            async def joined() -> bool:
                return (await api_camera(port, "b"))["viewers"] == 1

            await wait_for(joined, timeout=5)

            async def dropped() -> bool:
                return (await api_camera(port, "b"))["viewers"] == 0

            await wait_for(dropped, timeout=10)
        finally:
            s.close()
