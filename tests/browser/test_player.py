"""<cxrelay-player> in a real browser (Debian's headless chromium) against the real daemon.

Pictures are checked by reading pixels back from the player's canvas (or video element, on the
MSE path), never only by the absence of errors.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.browser.conftest import ROOT, Daemon, running, wait_until

# Samples the player's current picture (canvas, or video on the MSE path) at 64x36 RGB.
SNAPSHOT_JS = """(el) => {
  const r = el.shadowRoot;
  const src = el.stats.mode === 'mse' ? r.querySelector('video') : r.querySelector('canvas');
  const c = document.createElement('canvas');
  c.width = 64; c.height = 36;
  const x = c.getContext('2d');
  x.drawImage(src, 0, 0, 64, 36);
  const d = x.getImageData(0, 0, 64, 36).data;
  const out = [];
  for (let i = 0; i < d.length; i += 4) out.push(d[i], d[i + 1], d[i + 2]);
  return out;
}"""

# Time from navigation start (performance.now()'s origin) to the first frame with a picture on
# the first player's canvas, found by polling its pixels on every animation frame.
FIRST_PAINT = """window.firstPaint = null;
(() => {
  const probe = document.createElement('canvas');
  probe.width = 64; probe.height = 36;
  const x = probe.getContext('2d', {willReadFrequently: true});
  const poll = () => {
    const el = document.querySelector('cxrelay-player');
    const c = el && el.shadowRoot && el.shadowRoot.querySelector('canvas');
    if (c) {
      x.drawImage(c, 0, 0, 64, 36);
      const d = x.getImageData(0, 0, 64, 36).data;
      for (let i = 0; i < d.length; i += 4) {
        if (Math.max(d[i], d[i + 1], d[i + 2]) > 60) {
          window.firstPaint = {ms: performance.now(), stats: el.stats};
          return;
        }
      }
    }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})();"""

# Puts the test's players into the page, recording their events from the start.
ADD_PLAYERS = """(html) => {
  window.events = [];
  const box = document.createElement('div');
  box.id = 'test';
  box.innerHTML = html;
  for (const el of box.querySelectorAll('cxrelay-player')) {
    el.addEventListener('statechange', (e) => events.push(['statechange', e.detail.state,
                                                           e.detail.reason]));
    el.addEventListener('error', (e) => events.push(['error', e.detail.message]));
  }
  document.body.prepend(box);
}"""


def open_page(page: Any, daemon: Daemon, players: str) -> None:
    """The daemon's own page, with an empty wall, and the test's players in it.

    The page comes from the daemon for real: same origin as the relay, a secure context on
    127.0.0.1, and chromium's local-network-access checks see a loopback document (a page
    fulfilled by Playwright would count as public and be refused its WebSockets)."""
    page.route(daemon.url + "/api/cameras", lambda route: route.fulfill(json=[]))
    page.goto(daemon.url + "/")
    page.wait_for_function("!!customElements.get('cxrelay-player')")
    page.evaluate(ADD_PLAYERS, players)


def plain_page(player: str, script: str) -> str:
    return (f'<!doctype html><meta charset="utf-8"><script type="module" src="{script}">'
            f'</script><body style="margin:0">{player}</body>')


def snapshot(page: Any, selector: str = "cxrelay-player") -> list[int]:
    return page.eval_on_selector(selector, SNAPSHOT_JS)


def is_picture(px: list[int]) -> bool:
    """Not a black box (the RTSP camera's picture is a white ball on black)."""
    return sum(1 for v in px if v > 60) >= 3


def changed(a: list[int], b: list[int]) -> int:
    """How many samples differ clearly between two snapshots."""
    return sum(1 for x, y in zip(a, b, strict=True) if abs(x - y) > 24)


def wait_state(page: Any, state: str, selector: str = "cxrelay-player", timeout: float = 15000,
               mode: str | None = None) -> None:
    page.wait_for_function(
        "([s, st, m]) => { const el = document.querySelector(s);"
        " return el && el.state === st && (!m || el.stats.mode === m); }",
        arg=[selector, state, mode], timeout=timeout)


def wait_painted(page: Any, frames: int = 3, selector: str = "cxrelay-player") -> None:
    page.wait_for_function(
        "([s, n]) => document.querySelector(s)?.stats.painted >= n", arg=[selector, frames])


def assert_moving_picture(page: Any, selector: str = "cxrelay-player") -> None:
    first = snapshot(page, selector)
    stats = page.eval_on_selector(selector, "el => el.stats")
    assert is_picture(first), f"the player shows no picture: {stats}"
    second = wait_until(lambda: (s := snapshot(page, selector)) and changed(first, s) > 5 and s,
                        5, "the picture to change", interval=0.2)
    assert is_picture(second)


def test_wall_plays_every_camera(page: Any, demo: Daemon) -> None:
    page.goto(demo.url + "/")
    tile = "figure cxrelay-player[camera=demo]"
    page.wait_for_selector(tile, state="attached")
    assert page.text_content("figure .name") == "demo"
    wait_state(page, "live", tile, mode="webcodecs")
    wait_painted(page, 3, tile)
    assert_moving_picture(page, tile)
    page.wait_for_function("document.querySelector('figure .state').textContent.startsWith('live')")
    assert "640\u00d7360" in page.text_content("figure .state")


def test_stats_state_and_events(page: Any, demo: Daemon) -> None:
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "live", mode="webcodecs")
    page.wait_for_function("document.querySelector('cxrelay-player').stats.fps > 0")
    stats = page.eval_on_selector("cxrelay-player", "el => el.stats")
    assert stats["mode"] == "webcodecs"
    assert stats["codec"].startswith("avc1.")
    assert (stats["width"], stats["height"]) == (640, 360)
    assert 10 <= stats["fps"] <= 40  # the demo camera runs at 25 fps
    assert stats["bitrate"] > 50_000
    assert stats["decoded"] >= stats["painted"] > 0
    assert 0 <= stats["latency"] < 5000
    events = page.evaluate("events")
    states = [e[1] for e in events if e[0] == "statechange"]
    assert states[:1] == ["connecting"] and states[-1] == "live", events
    assert not [e for e in events if e[0] == "error"]
    # read-only: assignments are ignored (the page's scripts are not strict mode)
    assert page.evaluate("(() => { const p = document.querySelector('cxrelay-player');"
                         " p.state = 'idle'; p.stats = 1; return [p.state, typeof p.stats]; })()"
                         ) == ["live", "object"]
    # the element sizes like a video: a CSS width and the camera's aspect ratio
    box = page.eval_on_selector("cxrelay-player", "el => el.getBoundingClientRect().toJSON()")
    assert box["width"] == 300 and abs(box["height"] - 300 * 360 / 640) < 1


def test_mse_fallback_stays_at_live_edge(page: Any, demo: Daemon) -> None:
    page.add_init_script("delete window.VideoDecoder; delete window.VideoFrame;")
    open_page(page, demo,
              '<cxrelay-player camera="demo" style="width:640px"></cxrelay-player>')
    wait_state(page, "live", mode="mse")
    page.wait_for_function("""() => { const v = document.querySelector('cxrelay-player')
        .shadowRoot.querySelector('video'); return v.readyState >= 2 && v.currentTime > 0.5; }""")
    assert page.eval_on_selector("cxrelay-player",
                                 "el => el.shadowRoot.querySelector('canvas').hidden")
    assert_moving_picture(page)
    behind = []
    for _ in range(6):
        behind.append(page.eval_on_selector("cxrelay-player", """el => {
            const v = el.shadowRoot.querySelector('video'), b = v.buffered;
            return [b.end(b.length - 1) - v.currentTime, v.paused]; }"""))
        page.wait_for_timeout(300)
    assert not any(paused for _, paused in behind), behind
    # Chrome targets < 0.5 s; a loaded CI machine gets some slack
    assert max(b for b, _ in behind) < 1.0, behind
    stats = page.eval_on_selector("cxrelay-player", "el => el.stats")
    assert stats["mode"] == "mse" and stats["decoded"] > 0 and stats["fps"] > 0


def test_slow_decoder_drops_to_the_next_keyframe(page: Any, demo: Daemon) -> None:
    """When the decoder's queue grows, delta frames are skipped up to the next keyframe (the
    demo camera sends one every 2 s) instead of letting latency drift; once the decoder keeps
    up again, every frame is shown again."""
    page.add_init_script("""(() => {
        const real = Object.getOwnPropertyDescriptor(VideoDecoder.prototype, 'decodeQueueSize');
        Object.defineProperty(VideoDecoder.prototype, 'decodeQueueSize', {
            get() { return window.slowDecoder ? 50 : real.get.call(this); } });
    })();""")
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "live", mode="webcodecs")
    wait_painted(page, 10)
    stats = "document.querySelector('cxrelay-player').stats"
    before = page.evaluate(stats)
    page.evaluate("window.slowDecoder = true")
    page.wait_for_timeout(2500)  # more than a GOP
    slow = page.evaluate(stats)
    dropped = slow["dropped"] - before["dropped"]
    shown = slow["painted"] - before["painted"]
    assert dropped >= 20, (before, slow)  # most of 2.5 s at 25 fps was skipped...
    assert 1 <= shown <= 10, (before, slow)  # ...but the keyframes still came through
    page.evaluate("window.slowDecoder = false")
    page.wait_for_timeout(2500)  # the next keyframe ends the skipping
    fast = page.evaluate(stats)
    page.wait_for_timeout(1000)
    after = page.evaluate(stats)
    assert after["dropped"] == fast["dropped"], (fast, after)
    assert after["painted"] - fast["painted"] >= 15, (fast, after)


@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
def test_recovers_when_the_daemon_restarts(page: Any, fresh_demo: Daemon, mode: str) -> None:
    if mode == "mse":
        page.add_init_script("delete window.VideoDecoder;")
    open_page(page, fresh_demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "live", mode=mode)
    wait_painted(page)
    fresh_demo.stop()
    wait_state(page, "offline")
    before = snapshot(page)
    assert is_picture(before), "the last picture must stay while offline"
    fresh_demo.start()
    wait_state(page, "live", timeout=20000)
    wait_until(lambda: changed(before, snapshot(page)) > 5, 10, "a new picture", interval=0.2)
    states = [e[1] for e in page.evaluate("events") if e[0] == "statechange"]
    assert "offline" in states and states[-1] == "live", states


def test_unsupported_codec_shows_a_message(page: Any, demo: Daemon) -> None:
    def fake_server(ws: Any) -> None:
        ws.send(json.dumps({"type": "init", "protocol": 1, "camera": "demo",
                            "codec": "hvc1.1.6.L93.B0", "width": 1920, "height": 1080}))
        ws.send(json.dumps({"type": "status", "state": "live"}))
        ws.send(b"\x01" + bytes(16) + b"\x00\x00\x00\x01\x40\x01\x0c")  # must be ignored

    page.route_web_socket(re.compile(r".*/ws/demo(\?.*)?$"), fake_server)
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "error")
    message = page.eval_on_selector("cxrelay-player", """el => {
        const m = el.shadowRoot.querySelector('[part=message]');
        return m.hidden ? null : m.textContent; }""")
    assert message and "can't play" in message and "hvc1.1.6.L93.B0" in message
    reason = page.eval_on_selector("cxrelay-player", "el => el.reason")
    assert "hvc1" in reason
    errors = [e for e in page.evaluate("events") if e[0] == "error"]
    assert errors and "hvc1.1.6.L93.B0" in errors[0][1]
    # the picture area is not a black box: the message covers it, visibly
    shown = page.locator("cxrelay-player").locator("[part=message]")
    assert shown.is_visible() and shown.bounding_box()["width"] > 200


@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
def test_garbage_video_is_reported_not_thrown(page: Any, demo: Daemon, mode: str) -> None:
    """A stream that can't be decoded raises error events, never an uncaught exception."""
    junk = bytes(range(7, 250)) * 4
    keyframe = (b"\x01" + bytes(16) + b"\x00\x00\x00\x01\x67\x42\xc0\x1e" + junk
                + b"\x00\x00\x00\x01\x68" + junk + b"\x00\x00\x00\x01\x65" + junk)

    sockets: list[Any] = []

    def fake_server(ws: Any) -> None:
        ws.send(json.dumps({"type": "init", "protocol": 1, "camera": "demo",
                            "codec": "avc1.42c01e", "width": 640, "height": 360}))
        ws.send(json.dumps({"type": "status", "state": "live"}))
        sockets.append(ws)

    uncaught: list[str] = []
    page.on("pageerror", lambda e: uncaught.append(str(e)))
    if mode == "mse":
        page.add_init_script("delete window.VideoDecoder;")
    page.route_web_socket(re.compile(r".*/ws/demo(\?.*)?$"), fake_server)
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_until(lambda: sockets, 5, "the player's socket", page=page)
    for i in range(8):  # a keyframe every 200 ms: each gives a fresh decoder something to fail
        sockets[0].send(keyframe[:1] + (i * 200_000).to_bytes(8, "big") + keyframe[9:])
        page.wait_for_timeout(200)
    page.wait_for_function("events.filter((e) => e[0] === 'error').length >= 2")
    if mode == "mse":  # gives up after a few fresh MediaSources, and says so
        wait_state(page, "error")
        assert page.eval_on_selector("cxrelay-player",
                                     "el => el.shadowRoot.querySelector('[part=message]').hidden"
                                     ) is False
    page.wait_for_timeout(300)
    assert uncaught == []
    assert page.eval_on_selector("cxrelay-player", "el => el.stats.painted") == 0


def test_removing_the_player_releases_everything(page: Any, demo: Daemon) -> None:
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "live")
    wait_until(lambda: demo.cameras()["demo"]["viewers"] >= 1, 5, "a viewer on the server")
    assert len(sockets) == 1 and not sockets[0].is_closed()
    page.evaluate("""() => { window.removed = document.querySelector('cxrelay-player');
        window.output = removed._output; window.decoder = output._decoder; removed.remove(); }""")
    wait_until(lambda: sockets[0].is_closed(), 5, "the socket to close", page=page)
    wait_until(lambda: demo.cameras()["demo"]["viewers"] == 0, 5, "no viewers on the server")
    left = page.evaluate("""() => { const p = window.removed, out = window.output;
        return {state: p.state, socket: !!p._socket, output: !!p._output,
                decoder: decoder.state, observer: !!p._observer, retry: !!p._retryTimer,
                verdict: !!p._verdictRequest, paint: !!out._paintRequest,
                pending: !!out._pending}; }""")
    assert left == {"state": "idle", "socket": False, "output": False, "decoder": "closed",
                    "observer": False, "retry": False, "verdict": False, "paint": False,
                    "pending": False}
    page.wait_for_timeout(1200)  # longer than the first reconnect delay: nothing may come back
    assert len(sockets) == 1


def test_mse_player_removed_releases_media_source(page: Any, demo: Daemon) -> None:
    page.add_init_script("delete window.VideoDecoder;")
    open_page(page, demo, '<cxrelay-player camera="demo"></cxrelay-player>')
    wait_state(page, "live", mode="mse")
    page.wait_for_function("document.querySelector('cxrelay-player').stats.decoded > 0")
    left = page.evaluate("""() => { const p = document.querySelector('cxrelay-player');
        const v = p.shadowRoot.querySelector('video'), out = p._output; p.remove();
        return {output: !!p._output, ms: !!out._mediaSource, sb: !!out._sourceBuffer,
                src: v.getAttribute('src'), url: out._objectUrl}; }""")
    assert left == {"output": False, "ms": False, "sb": False, "src": None, "url": None}
    wait_until(lambda: demo.cameras()["demo"]["viewers"] == 0, 5, "no viewers on the server")


def test_streams_only_while_visible(page: Any, demo: Daemon) -> None:
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    open_page(page, demo,
              '<div style="height:3000px"></div><cxrelay-player camera="demo"></cxrelay-player>')
    page.wait_for_function("!!customElements.get('cxrelay-player')")
    page.wait_for_timeout(500)
    assert sockets == [] and page.eval_on_selector("cxrelay-player", "el => el.state") == "idle"
    page.eval_on_selector("cxrelay-player", "el => el.scrollIntoView()")
    wait_state(page, "live")
    assert len(sockets) == 1
    page.evaluate("window.scrollTo(0, 0)")
    wait_state(page, "idle")
    wait_until(lambda: sockets[0].is_closed(), 5, "the socket to close", page=page)
    # a hidden tab stops streaming too
    page.eval_on_selector("cxrelay-player", "el => el.scrollIntoView()")
    wait_state(page, "live")
    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange')); }""")
    wait_state(page, "idle")
    wait_until(lambda: sockets[1].is_closed(), 5, "the socket to close", page=page)
    page.evaluate("""() => { delete document.visibilityState;
        document.dispatchEvent(new Event('visibilitychange')); }""")
    wait_state(page, "live")
    assert len(sockets) == 3


def test_attributes_build_the_socket_url(page: Any, demo: Daemon) -> None:
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    open_page(page, demo,
              f'<cxrelay-player id="a" camera="demo" server="{demo.url}/" stream="main">'
              '</cxrelay-player>')
    wait_state(page, "live", "#a")
    assert urls == [f"ws://127.0.0.1:{demo.port}/ws/demo"]
    page.eval_on_selector("#a", "el => el.setAttribute('token', 'a b&c')")
    wait_until(lambda: len(urls) == 2, 5, "a reconnect with the token", page=page)
    assert urls[1] == f"ws://127.0.0.1:{demo.port}/ws/demo?token=a%20b%26c"
    src = f"ws://127.0.0.1:{demo.port}/ws/demo"
    page.eval_on_selector("#a", f"el => el.setAttribute('src', '{src}?x=1')")
    wait_until(lambda: len(urls) == 3, 5, "a reconnect to src", page=page)
    assert urls[2] == f"{src}?x=1&token=a%20b%26c"
    wait_state(page, "live", "#a")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class OtherSite:
    """A plain static web server on another port (a different origin from the relay), and a
    relay that allows that origin to embed its cameras."""

    base: str
    root: Path
    relay: Daemon


@pytest.fixture(scope="module")
def other_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtherSite]:
    root = tmp_path_factory.mktemp("site")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # localhost: a secure context (WebCodecs), and not the same origin as 127.0.0.1
    base = f"http://localhost:{server.server_address[1]}"
    config = root / "cxrelay.toml"
    config.write_text(f'[server]\nallowed_origins = ["{base}"]\n')
    try:
        with running("--demo", "--config", str(config), live="demo") as relay:
            yield OtherSite(base, root, relay)
    finally:
        server.shutdown()
        server.server_close()


def test_embed_example_from_another_origin(page: Any, other_site: OtherSite) -> None:
    """examples/embed.html, pointed at the test relay, plays from another origin."""
    relay = other_site.relay
    html = (ROOT / "examples" / "embed.html").read_text()
    assert "https://edge-box.example:8443" in html
    html = html.replace("https://edge-box.example:8443", relay.url)
    html = re.sub(r'camera="[^"]+"', 'camera="demo"', html)
    (other_site.root / "embed.html").write_text(html)
    page.goto(f"{other_site.base}/embed.html")
    assert page.evaluate("location.origin") == other_site.base
    players = page.locator("cxrelay-player")
    assert players.count() == 2
    for i in range(2):
        page.wait_for_function("([i]) => document.querySelectorAll('cxrelay-player')[i]"
                               ".stats?.painted > 2", arg=[i])
        assert is_picture(players.nth(i).evaluate(SNAPSHOT_JS)), f"player {i}"
    wait_until(lambda: relay.cameras()["demo"]["viewers"] == 2, 5, "two viewers")


def test_server_defaults_to_the_script_origin(page: Any, other_site: OtherSite) -> None:
    relay = other_site.relay
    (other_site.root / "p.html").write_text(plain_page(
        '<cxrelay-player camera="demo"></cxrelay-player>', f"{relay.url}/cxrelay.js"))
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.goto(f"{other_site.base}/p.html")
    wait_state(page, "live", mode="webcodecs")
    wait_painted(page)
    assert [url.split("?")[0] for url in urls] == [f"ws://127.0.0.1:{relay.port}/ws/demo"]
    assert_moving_picture(page)


def test_rtsp_camera_first_picture_within_a_second(page: Any, rtsp_relay: Daemon) -> None:
    """The issue's requirement: a picture within 1 s of page load although the camera sends a
    keyframe only every 10 s. The viewer must join mid-GOP for this to mean anything, so first
    make sure the relay's current GOP is at least 2 s old (>= 50 catch-up frames)."""
    with connect(f"ws://127.0.0.1:{rtsp_relay.port}/ws/cam") as ws:
        catchup = 0
        while True:
            msg = ws.recv(timeout=5)
            if isinstance(msg, bytes):
                if not msg[0] & 0x02:
                    break
                catchup += 1
    if catchup < 50:
        time.sleep((50 - catchup) / 25)
    # the real page: the relay's own camera wall, loaded by a real navigation
    page.add_init_script(FIRST_PAINT)
    page.goto(rtsp_relay.url + "/")
    page.wait_for_function("window.firstPaint", timeout=10000)
    first = page.evaluate("firstPaint")
    # joined mid-GOP: the first painted frame needed the catch-up backlog decoded first
    assert first["stats"]["decoded"] >= 40, first
    assert first["stats"]["mode"] == "webcodecs"
    print(f"first picture {first['ms']:.0f} ms after navigation, {catchup} catch-up frames "
          f"before joining, {first['stats']['decoded']} decoded at first paint")
    assert first["ms"] < 1000, f"first picture after {first['ms']:.0f} ms: {first}"


def test_rtsp_camera_picture_moves(page: Any, rtsp_relay: Daemon) -> None:
    open_page(page, rtsp_relay, '<cxrelay-player camera="cam"></cxrelay-player>')
    wait_state(page, "live", mode="webcodecs")
    wait_painted(page)
    assert_moving_picture(page)
    # joined mid-GOP: the catch-up frames got it going, nothing waited for the next keyframe
    stats = page.eval_on_selector("cxrelay-player", "el => el.stats")
    assert stats["dropped"] <= 2, stats


def test_rtsp_camera_over_mse(page: Any, rtsp_relay: Daemon) -> None:
    page.add_init_script("delete window.VideoDecoder;")
    open_page(page, rtsp_relay, '<cxrelay-player camera="cam"></cxrelay-player>')
    wait_state(page, "live", mode="mse")
    page.wait_for_function("""() => { const v = document.querySelector('cxrelay-player')
        .shadowRoot.querySelector('video'); return v.readyState >= 2 && !v.paused; }""")
    assert_moving_picture(page)
    # the catch-up burst must not pass for falling behind (which skips up to the next keyframe,
    # 10 s away)
    stats = page.eval_on_selector("cxrelay-player", "el => el.stats")
    assert stats["dropped"] <= 2, stats
