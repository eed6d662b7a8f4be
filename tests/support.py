"""Test helpers: a real relay on a loopback port, and a protocol v1 client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import IO, Any

from websockets.asyncio.client import ClientConnection, connect

from cxrelay.app import Relay
from cxrelay.config import CameraConfig, Config, ServerConfig
from cxrelay.protocol import Frame, decode_frame
from tests.camera.harness import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(cameras: dict[str, str] | list[CameraConfig], **server: Any) -> Config:
    cams = (
        tuple(CameraConfig(name=n, url=u) for n, u in cameras.items())
        if isinstance(cameras, dict)
        else tuple(cameras)
    )
    return Config(server=replace(ServerConfig(host="127.0.0.1", port=0), **server), cameras=cams)


@contextlib.asynccontextmanager
async def running_relay(config: Config, **kwargs: Any) -> AsyncIterator[Relay]:
    relay = Relay(config, **kwargs)
    await relay.startup()
    try:
        yield relay
    finally:
        await relay.shutdown()


class Viewer:
    """A protocol v1 client that keeps every message it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self, timeout: float = 10.0) -> dict[str, Any] | Frame:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(message, str):
            return json.loads(message)
        return decode_frame(message)

    async def recv_json(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert isinstance(message, dict), f"expected a text message, got a frame {message!r:.80}"
        return message

    async def recv_frame(self, timeout: float = 10.0) -> Frame:
        message = await self.recv(timeout)
        assert isinstance(message, Frame), f"expected a frame, got {message}"
        return message

    async def until(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any] | Frame]:
        """Read until predicate(message) holds; returns everything read, that one last."""
        seen: list[dict[str, Any] | Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            seen.append(message)
            if predicate(message):
                return seen


@contextlib.asynccontextmanager
async def viewer(port: int, camera: str, **kwargs: Any) -> AsyncIterator[Viewer]:
    async with connect(f"ws://127.0.0.1:{port}/ws/{camera}", compression=None,
                       max_size=None, **kwargs) as ws:
        yield Viewer(ws)


def is_init(m: Any) -> bool:
    return isinstance(m, dict) and m.get("type") == "init"


def is_status(state: str) -> Any:
    return lambda m: isinstance(m, dict) and m.get("type") == "status" and m["state"] == state


def is_frame(m: Any) -> bool:
    return isinstance(m, Frame)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def aget(port: int, path: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, port, path)


async def api_camera(port: int, name: str) -> dict[str, Any]:
    _, body = await aget(port, "/api/cameras")
    return next(c for c in json.loads(body) if c["name"] == name)


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


class RelayProcess:
    """`python -m cxrelay serve …` as a subprocess, for what only a process shows:
    exit codes, signals, memory, log lines.

    Its output is read as it comes (a full pipe would stall the relay), so a test can wait
    for a log line instead of sleeping: ``proc.reload()`` sends SIGHUP and returns the
    reload's own outcome line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.preexec_fn = preexec_fn  # run in the child before cxrelay (e.g. setrlimit)
        self.port = free_port()
        self.args = ["serve", "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-format", "json", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._arrived = threading.Condition()
        self._readers: list[threading.Thread] = []

    def start(self, timeout: float = 15.0) -> RelayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxrelay", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            preexec_fn=self.preexec_fn,
        )
        for stream, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            reader = threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            reader.start()
            self._readers.append(reader)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _, err = self.stop()[1:]
                raise AssertionError(f"cxrelay exited {self.proc.returncode}: {err}")
            with contextlib.suppress(OSError):
                if http_get(self.port, "/healthz", timeout=1)[0] == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError("cxrelay did not come up")

    def _read(self, stream: IO[bytes], lines: list[str]) -> None:
        for raw in stream:
            with self._arrived:
                lines.append(raw.decode(errors="replace"))
                self._arrived.notify_all()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        with self._arrived:
            return [json.loads(line) for line in self._out if line.startswith("{")]

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool], since: int = 0,
                       timeout: float = 20.0) -> dict[str, Any]:
        """The first JSON log line from the `since`-th on for which predicate holds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for line in self._out[since:]:
                    if line.startswith("{") and predicate(event := json.loads(line)):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None
                                      and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(f"no such log line within {timeout:g} s; "
                                         f"got {self._out[since:][-5:]}")
                self._arrived.wait(min(remaining, 0.5))

    def log_mark(self) -> int:
        """Where the log is now: wait_for_event(…, since=mark) looks only after it."""
        with self._arrived:
            return len(self._out)

    def reload(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGHUP, then the reload's outcome line: 'reloaded' or 'reload rejected, …'."""
        since = self.log_mark()
        self.signal(signal.SIGHUP)
        return self.wait_for_event(
            lambda e: e["event"] == "reloaded" or e["event"].startswith("reload rejected"),
            since, timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> tuple[int, str, str]:
        """SIGTERM (SIGKILL after `timeout`); the exit code and everything it printed."""
        assert self.proc is not None
        stop_process(self.proc, timeout)
        for reader in self._readers:
            reader.join(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        with self._arrived:
            return self.proc.returncode, "".join(self._out), "".join(self._err)

    def rss_kib(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

@contextlib.contextmanager
def relay_process(*args: str, **kwargs: Any) -> Iterator[RelayProcess]:
    proc = RelayProcess(*args, **kwargs).start()
    try:
        yield proc
    finally:
        proc.stop()


def tcp_connections_to(port: int) -> int:
    """Established TCP connections to a local port, from /proc (IPv4 and IPv6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                remote, state = fields[2], fields[3]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def stalled_client(port: int, camera: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads
    (a small receive buffer, so the kernel doesn't soak up megabytes)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(
        f"GET /ws/{camera} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return s
