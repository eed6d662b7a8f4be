#!/usr/bin/env python3
"""The load generator of benchmarks/fanout.py: many WebSocket viewers in one
process, as cheap per message as a client can be.

Each viewer is a plain non-blocking socket on one epoll. For every message it
peeks at the first 27 bytes (the WebSocket header and protocol v1's 17-byte
header: flags, pts, ingest time), then discards the whole message in the
kernel with ``recv_into(..., MSG_TRUNC)``: the payload is never copied to user
space. Keepalive pings are answered. So a message costs the client two system
calls and a few lines of Python, well under what it costs the relay to send it.

Commands on stdin, one a line: ``start`` (begin counting), ``stop`` (print the
counts as one JSON line on stdout, then exit). On startup it prints ``READY``
once every viewer has its 101 response.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import socket
import sys
import time

PEEK = 27  # the longest WebSocket header (10) + protocol v1's header (17)
FLAG_CATCHUP = 0x02
FLAG_DISCONTINUITY = 0x04
BIN_US = 50  # latency histogram: 50 µs bins ...
BINS = 40_000  # ... up to 2 s; later ones count in the last bin


class Viewer:
    __slots__ = ("acc", "closed", "flagged", "frames", "last_pts", "lost", "skip", "sock")

    def __init__(self, sock: socket.socket, acc: bytes) -> None:
        self.sock = sock
        self.acc = acc  # bytes taken from the socket but not yet parsed (rare)
        self.skip = 0  # bytes of the current message still to discard
        self.last_pts: int | None = None
        self.frames = 0
        self.lost = 0
        self.flagged = 0
        self.closed = False


class Load:
    def __init__(self, frame_us: int) -> None:
        self.frame_us = frame_us
        self.counting = False
        self.histogram = [0] * BINS
        self.max_latency_us = 0
        self.messages = 0
        self.scratch = bytearray(1 << 20)
        self.view = memoryview(self.scratch)

    def message(self, v: Viewer, head: bytes, at: int) -> None:
        """A binary message's first 17 bytes (``at``: receive time, µs)."""
        flags = head[0]
        if flags & FLAG_CATCHUP:
            return
        pts = int.from_bytes(head[1:9], "big", signed=True)
        if v.last_pts is not None:
            gap = pts - v.last_pts
            if gap > self.frame_us * 3 // 2:
                v.lost += round(gap / self.frame_us) - 1
        v.last_pts = pts
        if flags & FLAG_DISCONTINUITY:
            v.flagged += 1
        if not self.counting:
            return
        v.frames += 1
        self.messages += 1
        latency = at - int.from_bytes(head[9:17], "big")
        if latency > self.max_latency_us:
            self.max_latency_us = latency
        self.histogram[min(BINS - 1, max(0, latency) // BIN_US)] += 1

    def readable(self, v: Viewer) -> None:
        sock = v.sock
        try:
            while True:
                if v.skip:
                    want = min(v.skip, len(self.scratch))
                    n = sock.recv_into(self.view, want, socket.MSG_TRUNC)
                    if n == 0:
                        v.closed = True
                        return
                    v.skip -= n
                    if n < want:
                        return
                    continue
                if v.acc:
                    buf = v.acc
                    peeked = False
                else:
                    buf = sock.recv(PEEK, socket.MSG_PEEK)
                    if not buf:
                        v.closed = True
                        return
                    peeked = True
                parsed = self.parse(buf)
                if parsed is not None and parsed[1] is None and buf[0] & 0x0F == 0x9:
                    # A keepalive ping: answered, or the relay rightly drops us.
                    total = parsed[0]
                    if peeked and len(buf) < total:
                        buf = sock.recv(total, socket.MSG_PEEK)
                    if len(buf) >= total:
                        payload = buf[total - (buf[1] & 0x7F):total]
                        sock.send(bytes((0x8A, 0x80 | len(payload))) + bytes(4) + payload)
                    else:
                        parsed = None
                if parsed is None:  # a header cut short: take it, wait for the rest
                    if peeked:
                        v.acc = sock.recv(len(buf))
                    more = sock.recv(PEEK)  # may raise BlockingIOError: wait
                    if not more:
                        v.closed = True
                        return
                    v.acc += more
                    continue
                total, head = parsed
                if head is not None:
                    self.message(v, head, time.time_ns() // 1000)
                if peeked:
                    v.skip = total
                elif len(buf) >= total:
                    v.acc = buf[total:]
                else:
                    v.acc = b""
                    v.skip = total - len(buf)
        except BlockingIOError:
            return
        except OSError:
            v.closed = True

    @staticmethod
    def parse(buf: bytes) -> tuple[int, bytes | None] | None:
        """(whole frame's length, the 17-byte header of a binary message) or
        None if ``buf`` does not hold enough yet."""
        if len(buf) < 2:
            return None
        opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
        head = 2
        if length == 126:
            head = 4
            if len(buf) < head:
                return None
            length = int.from_bytes(buf[2:4], "big")
        elif length == 127:
            head = 10
            if len(buf) < head:
                return None
            length = int.from_bytes(buf[2:10], "big")
        if opcode != 2:
            return head + length, None
        if len(buf) < head + 17:
            return None
        return head + length, buf[head:head + 17]


def request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


class Joining:
    """A viewer during its handshake (non-blocking: the ones already in are
    read meanwhile, or the relay would rightly drop them)."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.request = request(port, path)
        self.response = b""
        self.path = path

    def writable(self) -> None:
        self.sock.send(self.request)  # a few hundred bytes: one send

    def readable(self) -> Viewer | None:
        chunk = self.sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"{self.path}: closed during the handshake")
        self.response += chunk
        if b"\r\n\r\n" not in self.response:
            return None
        header, rest = self.response.split(b"\r\n\r\n", 1)
        if not header.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"{self.path}: {header.splitlines()[0].decode()}")
        return Viewer(self.sock, rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cameras", required=True, help="comma-separated camera names")
    parser.add_argument("--viewers", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0,
                        help="viewer i watches camera (offset + i) mod len(cameras)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--parallel", type=int, default=16, help="handshakes at a time")
    args = parser.parse_args()
    cameras = args.cameras.split(",")
    load = Load(int(1_000_000 / args.fps))
    poll = select.epoll()
    viewers: list[Viewer] = []
    by_fd: dict[int, Viewer] = {}
    joining: dict[int, Joining] = {}
    started = retries = 0
    while len(viewers) < args.viewers:
        while started < args.viewers and len(joining) < args.parallel:
            path = f"/ws/{cameras[(args.offset + started) % len(cameras)]}"
            j = Joining(args.port, path)
            joining[j.sock.fileno()] = j
            poll.register(j.sock.fileno(), select.EPOLLOUT)
            started += 1
        for fd, events in poll.poll(1.0):
            if fd in by_fd:
                load.readable(by_fd[fd])
                continue
            j = joining[fd]
            try:
                if events & select.EPOLLOUT:
                    j.writable()
                    poll.modify(fd, select.EPOLLIN)
                    continue
                viewer = j.readable()
            except (ConnectionError, OSError) as exc:  # the relay gave up on it: again
                retries += 1
                if retries > args.viewers // 10 + 10:
                    raise SystemExit(f"too many failed handshakes, the last: {exc}") from None
                poll.unregister(fd)
                j.sock.close()
                del joining[fd]
                again = Joining(args.port, j.path)
                joining[again.sock.fileno()] = again
                poll.register(again.sock.fileno(), select.EPOLLOUT)
                continue
            if viewer is not None:
                del joining[fd]
                viewers.append(viewer)
                by_fd[fd] = viewer
    stdin = sys.stdin.fileno()
    poll.register(stdin, select.EPOLLIN)
    print("READY", flush=True)
    command = b""
    while True:
        for fd, _ in poll.poll(1.0):
            if fd == stdin:
                chunk = os.read(stdin, 100)
                command += chunk
                if b"start" in command:
                    command = command.replace(b"start", b"")
                    load.counting = True
                    for v in viewers:
                        v.frames = v.lost = v.flagged = 0
                if b"stop" in command or not chunk:  # or the parent went away
                    report(load, viewers, retries)
                    return
                continue
            v = by_fd[fd]
            load.readable(v)
            if v.closed:
                poll.unregister(fd)
                v.sock.close()


def report(load: Load, viewers: list[Viewer], retries: int) -> None:
    print(json.dumps({
        "handshakes_retried": retries,
        "messages": load.messages,
        "frames_min": min((v.frames for v in viewers), default=0),
        "lost": sum(v.lost for v in viewers),
        "flagged": sum(v.flagged for v in viewers),
        "closed": sum(v.closed for v in viewers),
        "max_latency_us": load.max_latency_us,
        "histogram": {i: n for i, n in enumerate(load.histogram) if n},
    }), flush=True)


if __name__ == "__main__":
    main()
