"""A camera that sends garbage: a tiny RTSP server that answers OPTIONS, DESCRIBE, SETUP
and PLAY like a real H.264 camera (a valid SDP, SPS and PPS included), then sends RTP
packets, interleaved over TCP, whose headers are right and whose payloads are random.

Pure asyncio in the test's own loop (the relay reads it from its source thread):

    async with GarbageCamera() as camera:
        ... CameraConfig("junk", camera.url) ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import struct
from types import TracebackType

from cxrelay.h264 import NAL_PPS, NAL_SPS, nal_type, split_annexb
from tests.recordings import recording

PAYLOAD_TYPE = 96
CLOCK_RATE = 90_000


def sdp(host: str) -> str:
    """A true description of an H.264 stream (the parameter sets of a real encode)."""
    nals = split_annexb(recording("baseline").units[0])
    sps = next(n for n in nals if nal_type(n) == NAL_SPS)
    pps = next(n for n in nals if nal_type(n) == NAL_PPS)
    sets = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
    return (
        "v=0\r\n"
        f"o=- 1 1 IN IP4 {host}\r\n"
        "s=garbage\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=video 0 RTP/AVP {PAYLOAD_TYPE}\r\n"
        f"a=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK_RATE}\r\n"
        f"a=fmtp:{PAYLOAD_TYPE} packetization-mode=1;profile-level-id={sps[1:4].hex()};"
        f"sprop-parameter-sets={sets}\r\n"
        "a=control:track1\r\n"
    )


class GarbageCamera:
    """Speaks RTSP properly and H.264 not at all: `packets_per_second` RTP packets of
    random bytes (1 to `max_payload` long), seeded, so a failure can be replayed."""

    def __init__(self, seed: int = 0, packets_per_second: int = 200,
                 max_payload: int = 1400) -> None:
        self.rng = random.Random(seed)
        self.interval = 1 / packets_per_second
        self.max_payload = max_payload
        self.url = ""
        self.sessions = 0  # PLAYs answered
        self.packets_sent = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> GarbageCamera:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{port}/garbage"
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        sender: asyncio.Task[None] | None = None
        try:
            while request := await self._request(reader):
                method, headers = request
                reply = self._answer(method, headers)
                writer.write(reply.encode())
                await writer.drain()
                if method == "PLAY" and sender is None:
                    self.sessions += 1
                    sender = asyncio.create_task(self._send_garbage(writer))
                    self._tasks.add(sender)
                elif method == "TEARDOWN":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if sender is not None:
                sender.cancel()
                self._tasks.discard(sender)
            writer.close()
            self._tasks.discard(task)

    async def _request(self, reader: asyncio.StreamReader
                       ) -> tuple[str, dict[str, str]] | None:
        """The next RTSP request; the client's interleaved RTCP ($ frames) is skipped."""
        while True:
            first = await reader.read(1)
            if not first:
                return None
            if first == b"$":
                _, size = struct.unpack("!BH", await reader.readexactly(3))
                await reader.readexactly(size)
                continue
            head = first + await reader.readuntil(b"\r\n\r\n")
            lines = head.decode(errors="replace").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            return lines[0].split(" ", 1)[0], headers

    def _answer(self, method: str, headers: dict[str, str]) -> str:
        extra: dict[str, str] = {}
        body = ""
        if method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
        elif method == "DESCRIBE":
            body = sdp("127.0.0.1")
            extra["Content-Base"] = self.url + "/"
            extra["Content-Type"] = "application/sdp"
        elif method == "SETUP":
            if "interleaved" not in headers.get("transport", ""):
                return f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {headers.get('cseq')}\r\n\r\n"
            extra["Transport"] = "RTP/AVP/TCP;unicast;interleaved=0-1"
        if method in ("SETUP", "PLAY", "GET_PARAMETER"):
            extra["Session"] = "47112344;timeout=60"
        if method == "PLAY":
            extra["Range"] = "npt=0.000-"
        lines = ["RTSP/1.0 200 OK", f"CSeq: {headers.get('cseq', '0')}"]
        lines += [f"{name}: {value}" for name, value in extra.items()]
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    async def _send_garbage(self, writer: asyncio.StreamWriter) -> None:
        rng = self.rng
        sequence, timestamp, ssrc = rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32)
        while True:
            marker = rng.random() < 0.25  # about four packets a "picture"
            header = struct.pack("!BBHII", 0x80, (marker << 7) | PAYLOAD_TYPE,
                                 sequence, timestamp, ssrc)
            payload = rng.randbytes(rng.randint(1, self.max_payload))
            packet = header + payload
            writer.write(struct.pack("!BBH", ord("$"), 0, len(packet)) + packet)
            await writer.drain()
            self.packets_sent += 1
            sequence = (sequence + 1) & 0xFFFF
            if marker:
                timestamp = (timestamp + CLOCK_RATE // 25) & 0xFFFFFFFF
            await asyncio.sleep(self.interval)
