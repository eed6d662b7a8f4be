"""Fixtures for the real-browser tests: Debian's headless chromium driven by Playwright, and the
cxrelay daemon (and a GStreamer RTSP test camera) as subprocesses on loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1,
               page: Any = None) -> Any:
    """Polls `predicate`. With a `page`, sleeps in Playwright so that its events (websocket
    opened/closed...) keep being delivered to the test meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if page is not None:
            page.wait_for_timeout(interval * 1000)
        else:
            time.sleep(interval)


class Daemon:
    """`python3 -m cxrelay serve` on a fixed loopback port; restartable on the same port."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        # lives as long as the daemon object, across restarts: no context manager fits
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="cxrelay-", suffix=".log", delete=False)

    def start(self) -> Daemon:
        cmd = [sys.executable, "-m", "cxrelay", "serve", *self.args,
               "--port", str(self.port), "--host", "127.0.0.1", "--log-format", "json"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 20, f"{self.url}/healthz\n{self.tail()}")
        return self

    def _healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"cxrelay exited with {self.proc.returncode}\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # like a crash or a power cut: no goodbye to the viewers
            self.proc.wait(10)
        self.proc = None

    def cameras(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in get_json(f"{self.url}/api/cameras")}

    def wait_live(self, camera: str, timeout: float = 40) -> None:
        wait_until(lambda: self.cameras()[camera]["state"] == "live", timeout,
                   f"camera {camera} live\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1024, "height": 720})
    pg = context.new_page()
    pg.set_default_timeout(15000)
    yield pg
    context.close()


@contextmanager
def running(*args: str, live: str) -> Iterator[Daemon]:
    """A daemon with `args`, once camera `live` is live; always stopped afterwards."""
    daemon = Daemon(*args)
    try:
        daemon.start().wait_live(live)
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[Daemon]:
    with running("--demo", live="demo") as daemon:
        yield daemon


@pytest.fixture
def fresh_demo() -> Iterator[Daemon]:
    """A daemon of its own, for tests that kill and restart it."""
    with running("--demo", live="demo") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def rtsp_camera() -> Iterator[Any]:
    """The GStreamer RTSP camera with a 10 s keyframe interval (250 frames at 25 fps)."""
    from tests.camera.harness import SYSTEM_PYTHON, RtspCamera

    if not shutil.which(SYSTEM_PYTHON):
        pytest.skip("Debian's python3 (with the GStreamer bindings) is missing")
    cam = RtspCamera(port=0, gop=250, fps=25)
    try:
        yield cam.start()
    finally:
        cam.stop()


@pytest.fixture(scope="module")
def rtsp_relay(rtsp_camera: Any) -> Iterator[Daemon]:
    with running("--camera", f"cam={rtsp_camera.url}", live="cam") as daemon:
        yield daemon
