#!/usr/bin/env python3
"""The floor of benchmarks/fanout.py: the least a Python program on uvloop can
do to send the same bytes to the same number of WebSocket viewers.

It answers the handshake of ``/ws/<camera>`` with a bare 101, loads the file's
pictures once, and for every camera, at the file's frame rate, builds each
frame's WebSocket message once (the 17-byte protocol v1 header, ingest time
stamped there and then, and the picture) and writes that bytes object to every
viewer of the camera with ``transport.write``: no backlog, no flow control, no
metrics. What the relay spends above this is its own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import struct
import time
from pathlib import Path

import uvloop

from cxrelay.sources.pyav import annexb_packets, open_input, video_stream

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEADER = struct.Struct(">BqQ")


def ws_binary_header(length: int) -> bytes:
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def pictures(path: Path) -> list[tuple[bytes, bool]]:
    container = open_input(str(path), options={}, open_timeout=5, read_timeout=5)
    try:
        stream = video_stream(container)
        return [(bytes(p), bool(p.is_keyframe)) for p in annexb_packets(container, stream)]
    finally:
        container.close()


class Viewer(asyncio.Protocol):
    def __init__(self, groups: dict[str, set[asyncio.Transport]]) -> None:
        self.groups = groups
        self.request = b""
        self.group: set[asyncio.Transport] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def data_received(self, data: bytes) -> None:
        if self.group is not None:
            return  # what a viewer sends after the handshake: ignored
        self.request += data
        if b"\r\n\r\n" not in self.request:
            return
        assert self.transport is not None
        lines = self.request.split(b"\r\n")
        path = lines[0].split()[1].decode()
        key = next(line.split(b":", 1)[1].strip() for line in lines
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n")
        self.group = self.groups.setdefault(path.removeprefix("/ws/"), set())
        self.group.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.group is not None and self.transport is not None:
            self.group.discard(self.transport)


async def camera(viewers: set[asyncio.Transport], units: list[tuple[bytes, bool]],
                 fps: float) -> None:
    loop = asyncio.get_running_loop()
    frame_us = int(1_000_000 / fps)
    start = loop.time()
    index = 0
    while True:
        payload, keyframe = units[index % len(units)]
        message = HEADER.pack(1 if keyframe else 0, index * frame_us,
                              time.time_ns() // 1000) + payload
        wire = ws_binary_header(len(message)) + message
        for transport in viewers:
            transport.write(wire)
        index += 1
        await asyncio.sleep(max(0.0, start + index / fps - loop.time()))


async def serve(args: argparse.Namespace) -> None:
    units = pictures(args.file)
    groups: dict[str, set[asyncio.Transport]] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Viewer(groups), "127.0.0.1", args.port,
                                      backlog=4096)
    names = [f"c{i}" for i in range(args.cameras)]
    tasks = [asyncio.ensure_future(camera(groups.setdefault(n, set()), units, args.fps))
             for n in names]
    print("READY", flush=True)
    try:
        await asyncio.Future()
    finally:
        for task in tasks:
            task.cancel()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cameras", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--fps", type=float, default=25.0)
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
