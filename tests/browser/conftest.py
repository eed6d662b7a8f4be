"""Fixtures for the real-browser tests: every test runs in each engine of engines.ENGINES
(chromium, firefox, webkit), against the cxrelay daemon (and a GStreamer RTSP test camera) as
subprocesses on loopback ports, with its pages served by a small test site.

A browser, driver or runtime that is missing fails the tests that need it (`make test` installs
them all); nothing here is ever skipped. Where an engine cannot do something on this machine, the
test carries `@pytest.mark.xfail_in(engine="exact reason")`, a strict expected failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from tests.browser.engines import (
    ENGINES,
    INSECURE_HOST,
    ROOT,
    BrowserMissing,
    Chromium,
    Engine,
    Page,
    launch,
)
from tests.browser.pages import wait_until
from tests.support import free_port

BLANK = '<!doctype html><meta charset="utf-8"><title>cxrelay test</title><body style="margin:0">'


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`xfail_in(engine=reason)` makes that engine's runs of a test strict expected failures;
    `xfail_in(engine_param=reason)` only those also parametrized with `param` (e.g.
    `firefox_webcodecs` of a test parametrized over modes)."""
    for item in items:
        marker = item.get_closest_marker("xfail_in")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None:
            continue
        ids = set(callspec.id.split("-"))
        for key, reason in marker.kwargs.items():
            if set(key.split("_")) <= ids:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"{key}: {reason}"))
                break


@pytest.fixture(scope="session", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    try:
        browser = launch(request.param)
    except BrowserMissing as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def page(engine: Engine) -> Iterator[Page]:
    pg = engine.new_page()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's chromium alone, for the tests that still use Playwright's own page API."""
    try:
        browser = Chromium()
    except BrowserMissing as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def chromium_page(chromium: Chromium) -> Iterator[Any]:
    context, pg = chromium.new_playwright_page()
    try:
        yield pg
    finally:
        context.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


# --- the test site: the pages the players are put in ------------------------------------------

class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    """A static web server on loopback, reachable as two origins: `secure`
    (http://localhost:port, a secure context: WebCodecs) and `insecure`
    (http://cxrelay.test:port, which the engines map to 127.0.0.1 but which is not a secure
    context, like a plain http:// LAN page: MSE)."""

    root: Path
    port: int

    @property
    def secure(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def insecure(self) -> str:
        return f"http://{INSECURE_HOST}:{self.port}"

    def origins(self) -> list[str]:
        return ["--allowed-origin", self.secure, "--allowed-origin", self.insecure]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    (root / "blank.html").write_text(BLANK)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


# --- the relay -------------------------------------------------------------------------------

class Daemon:
    """`python -m cxrelay serve` on a fixed loopback port; restartable on the same port."""

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
def demo(site: Site) -> Iterator[Daemon]:
    with running("--demo", *site.origins(), live="demo") as daemon:
        yield daemon


@pytest.fixture
def fresh_demo(site: Site) -> Iterator[Daemon]:
    """A daemon of its own, for tests that kill and restart it."""
    with running("--demo", *site.origins(), live="demo") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def long_gop_camera() -> Iterator[Any]:
    """The GStreamer RTSP camera (tests/camera) with a 10 s keyframe interval (250 frames at
    25 fps), for the module: joining mid-GOP needs a catch-up burst."""
    from tests.camera.harness import SYSTEM_PYTHON, RtspCamera

    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"Debian's {SYSTEM_PYTHON} (with the GStreamer bindings) is missing: "
                    "`make deps` installs it", pytrace=False)
    with RtspCamera(gop=250, fps=25) as camera:
        yield camera


@pytest.fixture(scope="module")
def rtsp_relay(long_gop_camera: Any, site: Site) -> Iterator[Daemon]:
    with running("--camera", f"cam={long_gop_camera.url}", *site.origins(),
                 live="cam") as daemon:
        yield daemon


# --- a fake relay -----------------------------------------------------------------------------

class FakeRelay:
    """A WebSocket server that plays a script to each player: the test's stand-in for a relay
    that sends what the real one would not."""

    def __init__(self) -> None:
        self.script: Any = None
        self.sockets: list[ServerConnection] = []
        self._server: Server = serve(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/ws/demo"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handle(self, ws: ServerConnection) -> None:
        self.sockets.append(ws)
        if self.script:
            self.script(ws)
        for _ in ws:  # until the player goes
            pass

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def fake_relay() -> Iterator[FakeRelay]:
    relay = FakeRelay()
    try:
        yield relay
    finally:
        relay.close()
