"""One small page driver over three browser engines, so that each player test is written once.

- chromium: Debian's /usr/bin/chromium, driven by Playwright (Python).
- firefox: Debian's /usr/bin/firefox-esr, driven by puppeteer-core (npm) over WebDriver BiDi,
  through a line-oriented JSON bridge (firefox.mjs) run by node.
- webkit: WebKitGTK's MiniBrowser, driven by WebKitWebDriver (W3C WebDriver over HTTP, spoken
  here with urllib), on an Xvfb display: WebKitGTK has no headless mode.

A `Page` only goes to a URL, evaluates a JS function (given as source) with JSON arguments and
returns its JSON result (promises are awaited), polls a JS condition, and closes. Everything else
a test needs (events, sockets, pixels) it reads in the page, so it works the same in every engine.

`INSECURE_HOST` is a name every engine resolves to 127.0.0.1 without being a secure context (no
WebCodecs there): chromium by its host-resolver rules, firefox by `network.dns.localDomains`,
WebKit through `HostMapProxy`, a tiny HTTP proxy (WebKitGTK has no host-resolver switch).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("chromium", "firefox", "webkit")
INSECURE_HOST = "cxrelay.test"
VIEWPORT = {"width": 1024, "height": 720}

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
    f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
]
FIREFOX = "/usr/bin/firefox-esr"
FIREFOX_PREFS = {
    "network.dns.localDomains": INSECURE_HOST,
    "media.autoplay.default": 0,
}
NODE = "node"
FIREFOX_BRIDGE = Path(__file__).with_name("firefox.mjs")
WEBKIT_DRIVER = "WebKitWebDriver"
XVFB = "Xvfb"


def minibrowser() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/webkit2gtk-4.1/MiniBrowser"))
    return found[0] if found else None


class BrowserMissing(Exception):
    """A browser, driver or runtime the suite needs is not installed (`make test` installs it)."""


def require(path: str | None, what: str) -> str:
    if not path or not (os.path.exists(path) or shutil.which(path)):
        raise BrowserMissing(f"{what} is missing ({path or 'not found'}): `make deps` installs it")
    return path


class Page:
    """What a test may do with a page, the same in every engine."""

    engine: str

    def goto(self, url: str) -> None:
        raise NotImplementedError

    def evaluate(self, fn: str, *args: Any) -> Any:
        """Calls the JS function `fn` (source, e.g. "(a, b) => a + b") with JSON `args` in the
        page and returns its JSON result, awaiting a promise."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def wait_for(self, fn: str, *args: Any, timeout: float = 15, what: str = "",
                 interval: float = 0.1) -> Any:
        """Polls `fn(*args)` until it returns something truthy, and returns that."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(fn, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.engine}: timed out after {timeout} s waiting for "
                                     f"{what or fn}")
            self.sleep(interval)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# --- chromium: Playwright ------------------------------------------------------------------------

class ChromiumPage(Page):
    engine = "chromium"

    def __init__(self, context: Any) -> None:
        self._context = context
        self._page = context.new_page()
        self._page.set_default_timeout(30000)

    def goto(self, url: str) -> None:
        self._page.goto(url)

    def evaluate(self, fn: str, *args: Any) -> Any:
        from playwright.sync_api import Error

        try:
            return self._page.evaluate(f"(args) => ({fn})(...args)", list(args))
        except Error as e:
            raise AssertionError(f"chromium: {e.message}") from None

    def sleep(self, seconds: float) -> None:
        # inside Playwright, whose sync API only makes progress while it is called
        self._page.wait_for_timeout(seconds * 1000)

    def close(self) -> None:
        self._context.close()


class Chromium:
    name = "chromium"

    def __init__(self) -> None:
        require(CHROMIUM, "Debian's chromium")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise BrowserMissing(f"Playwright is missing ({e}): `make deps` installs it") from e
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.version = f"Chromium {self._browser.version}"

    def new_page(self) -> Page:
        return ChromiumPage(self._new_context())

    def new_playwright_page(self) -> tuple[Any, Any]:
        """A context and Playwright's own page in it, for tests not yet written for every
        engine (chromium_only.py)."""
        context = self._new_context()
        page = context.new_page()
        page.set_default_timeout(15000)
        return context, page

    def _new_context(self) -> Any:
        return self._browser.new_context(
            viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]})

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


# --- firefox: puppeteer-core over WebDriver BiDi, through node -----------------------------------

class NodeBridge:
    """firefox.mjs as a child process: one JSON request per line in, one answer per line out."""

    def __init__(self, log: IO[bytes]) -> None:
        require(shutil.which(NODE), "node (Debian's nodejs)")
        require(FIREFOX, "Debian's firefox-esr")
        if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
            raise BrowserMissing("puppeteer-core is missing (node_modules): `make deps` runs "
                                 "`npm ci`")
        self._proc = subprocess.Popen(
            [NODE, str(FIREFOX_BRIDGE), FIREFOX, json.dumps(FIREFOX_PREFS),
             json.dumps(VIEWPORT)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._ids = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.version = str(self._next(90).get("ready"))

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"firefox: no answer from the bridge in {timeout} s") from None
        if answer is None:
            raise AssertionError(f"firefox: the bridge exited ({self._proc.wait(5)})")
        return answer

    def call(self, op: str, timeout: float = 60, **kwargs: Any) -> Any:
        assert self._proc.stdin is not None
        self._ids += 1
        self._proc.stdin.write(json.dumps({"id": self._ids, "op": op, **kwargs}).encode() + b"\n")
        self._proc.stdin.flush()
        while True:
            answer = self._next(timeout)
            if answer.get("id") == self._ids:
                break
        if "error" in answer:
            raise AssertionError(f"firefox: {op}: {answer['error']}")
        return answer.get("value")

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # the bridge closes the browser and exits
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class FirefoxPage(Page):
    engine = "firefox"

    def __init__(self, bridge: NodeBridge) -> None:
        self._bridge = bridge
        self._id = bridge.call("newPage")

    def goto(self, url: str) -> None:
        self._bridge.call("goto", page=self._id, url=url)

    def evaluate(self, fn: str, *args: Any) -> Any:
        return self._bridge.call("evaluate", page=self._id, fn=fn, args=list(args))

    def close(self) -> None:
        self._bridge.call("close", page=self._id)


class Firefox:
    name = "firefox"

    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the browser
        self._bridge = NodeBridge(self._log)
        self.version = f"Firefox {self._bridge.version.split('/')[-1]}"

    def new_page(self) -> Page:
        return FirefoxPage(self._bridge)

    def close(self) -> None:
        self._bridge.close()
        self._log.close()


# --- webkit: WebKitWebDriver (W3C WebDriver over HTTP) on Xvfb ---------------------------------

# Runs a page's function for WebDriver's "execute async script": JSON in, JSON (or the page's
# error) out.
_EXECUTE = """const done = arguments[arguments.length - 1];
Promise.resolve().then(() => (0, eval)('(' + arguments[0] + ')')(...arguments[1]))
  .then((value) => done({value: value === undefined ? null : value}),
        (e) => done({error: e instanceof Error ? `${e.name}: ${e.message}` : String(e)}));"""


class WebDriverError(AssertionError):
    pass


def _webdriver(method: str, url: str, body: Any = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.load(r)["value"]
    except urllib.error.HTTPError as e:
        value = json.load(e).get("value", {})
        raise WebDriverError(f"webkit: {method} {url.rsplit('/', 1)[-1]}: "
                             f"{value.get('error')}: {value.get('message')}") from None


class WebKitPage(Page):
    """A fresh window (a top-level browsing context) of the engine's one WebDriver session:
    starting a browser per test would cost more and, under load, sometimes hangs the driver."""

    engine = "webkit"

    def __init__(self, session: str, home: str) -> None:
        self._session = session
        self._home = home
        self._handle = _webdriver("POST", f"{session}/window/new", {"type": "window"})["handle"]
        _webdriver("POST", f"{session}/window", {"handle": self._handle})
        _webdriver("POST", f"{session}/window/rect", VIEWPORT)

    def goto(self, url: str) -> None:
        _webdriver("POST", f"{self._session}/url", {"url": url})

    def evaluate(self, fn: str, *args: Any) -> Any:
        answer = _webdriver("POST", f"{self._session}/execute/async",
                            {"script": _EXECUTE, "args": [fn, list(args)]})
        if "error" in answer:
            raise AssertionError(f"webkit: {answer['error']}")
        return answer["value"]

    def close(self) -> None:
        _webdriver("DELETE", f"{self._session}/window")
        _webdriver("POST", f"{self._session}/window", {"handle": self._home})


class WebKit:
    name = "webkit"

    def __init__(self) -> None:
        browser = require(minibrowser(), "WebKitGTK's MiniBrowser (libwebkit2gtk-4.1-0)")
        require(shutil.which(WEBKIT_DRIVER), "WebKitWebDriver (webkit2gtk-driver)")
        require(shutil.which(XVFB), "Xvfb (xvfb)")
        self._procs: list[subprocess.Popen[bytes]] = []
        self._session = ""
        self._proxy = HostMapProxy({INSECURE_HOST: "127.0.0.1"})
        capabilities = {
            "webkitgtk:browserOptions": {
                "binary": browser,
                "args": ["--automation", "--autoplay-policy=allow"],
            },
            "proxy": {"proxyType": "manual", "httpProxy": f"127.0.0.1:{self._proxy.port}",
                      "noProxy": ["127.0.0.1", "localhost"]},
            "timeouts": {"script": 60000, "pageLoad": 30000},
        }
        try:
            display = self._xvfb()
            port = free_port()
            env = {**os.environ, "DISPLAY": display}
            self._procs.append(subprocess.Popen(
                [WEBKIT_DRIVER, f"--port={port}"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            driver = f"http://127.0.0.1:{port}"
            self._wait_driver(driver)
            session = _webdriver("POST", f"{driver}/session", {"capabilities": {
                "alwaysMatch": capabilities}})
            self._session = f"{driver}/session/{session['sessionId']}"
            self._home = _webdriver("GET", f"{self._session}/window")  # the first window
        except BaseException:
            self.close()
            raise
        self.version = f"WebKitGTK {session['capabilities'].get('browserVersion', '?')}"

    def _xvfb(self) -> str:
        read, write = os.pipe()
        proc = subprocess.Popen(
            [XVFB, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        os.close(write)
        with os.fdopen(read) as f:
            number = f.readline().strip()
        if not number:
            raise AssertionError(f"Xvfb did not start ({proc.wait(5)})")
        return f":{number}"

    def _wait_driver(self, driver: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                _webdriver("GET", f"{driver}/status", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("WebKitWebDriver did not start") from None
                time.sleep(0.1)

    def new_page(self) -> Page:
        return WebKitPage(self._session, self._home)

    def close(self) -> None:
        if self._session:
            with contextlib.suppress(WebDriverError, OSError):
                _webdriver("DELETE", self._session, timeout=20)
            self._session = ""
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        self._proxy.close()


Engine = Chromium | Firefox | WebKit


def launch(name: str) -> Engine:
    kinds: dict[str, type[Engine]] = {"chromium": Chromium, "firefox": Firefox, "webkit": WebKit}
    return kinds[name]()


# --- a host-mapping HTTP proxy ---------------------------------------------------------------

class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path = None
        else:
            url = urlsplit(target)
            host, port = url.hostname or "", str(url.port or 80)
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
        address = self.server.hosts.get(host)
        if address is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection((address, int(port)), timeout=10) as upstream:
            upstream.settimeout(None)
            if path is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                # one request per connection: the browser may send the next one elsewhere
                kept = [h for h in headers if not h.lower().startswith(
                    ("proxy-connection:", "keep-alive:"))]
                if not any(h.lower().startswith("upgrade:") for h in kept):
                    kept = [h for h in kept if not h.lower().startswith("connection:")]
                    kept.append("Connection: close")
                upstream.sendall(
                    "\r\n".join([f"{method} {path} {version}", *kept, "", ""]).encode("latin-1")
                    + rest)
            _splice(client, upstream)


def _splice(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    hosts: dict[str, str]


class HostMapProxy:
    """An HTTP proxy on loopback that forwards requests and tunnels (CONNECT) for the mapped host
    names only, to the given addresses, and refuses everything else."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.hosts = hosts
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
