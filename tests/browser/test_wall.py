"""The store wall in a real browser (Debian's headless chromium only, for now: these tests use
Playwright's keyboard, locators and socket frames; see chromium_only.py) against the real daemon and
real RTSP cameras (issue 10): sub-streams picked by tile size, switches without a black or
broken picture, stills, focus and return, and what players report back.

Each RTSP camera draws its picture number into every picture (blocks at the top left), so the
pictures the player paints are read back and checked, not only the absence of errors.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.chromium_only import open_page, wait_state, wait_until
from tests.browser.conftest import Daemon, running
from tests.recordings import recording

pytestmark = [pytest.mark.rtsp, pytest.mark.browser]


@pytest.fixture
def page(chromium_page: Any) -> Any:
    return chromium_page

# Every animation frame, reads the picture number drawn into the player's canvas (the blocks of
# tests/camera/stamp.py: a 1010 marker, then 24 bits, each block 1/40 of the width) and what
# stream it belongs to. A black or broken picture reads as null.
SAMPLER = """(el) => {
  window.samples = [];
  const probe = document.createElement('canvas');
  const x = probe.getContext('2d', {willReadFrequently: true});
  const read = () => {
    const v = el.shadowRoot.querySelector('video');
    const mse = el.stats.mode === 'mse';
    const c = mse ? v : el.shadowRoot.querySelector('canvas');
    const width = mse ? v.videoWidth : c.width;
    if (width > 16 && (!mse || v.readyState >= 2)) {
      probe.width = width; probe.height = mse ? v.videoHeight : c.height;
      x.drawImage(c, 0, 0);
      const block = width / 40;
      const row = x.getImageData(0, Math.floor(block / 2), width, 1).data;
      const bits = [];
      for (let i = 0; i < 28; i++) {
        const p = Math.floor((i + 0.5) * block) * 4;
        bits.push((row[p] + row[p + 1] + row[p + 2]) / 3 > 128 ? 1 : 0);
      }
      const ok = bits.slice(0, 4).join('') === '1010';
      const n = ok ? parseInt(bits.slice(4).join(''), 2) : null;
      samples.push([width, n, el.stats.stream]);
    }
    if (!window.stopSampling) requestAnimationFrame(read);
  };
  requestAnimationFrame(read);
}"""


@pytest.fixture(scope="module")
def cameras() -> Iterator[tuple[Any, Any]]:
    """A main stream (640x360) and a sub-stream (320x180), keyframes every second, each
    picture numbered."""
    from tests.camera.harness import RtspCamera

    main = RtspCamera(width=640, height=360, gop=25, draw_counter=True)
    sub = RtspCamera(width=320, height=180, gop=25, bitrate=300, draw_counter=True)
    try:
        yield main.start(), sub.start()
    finally:
        main.stop()
        sub.stop()


@pytest.fixture(scope="module")
def relay(cameras: tuple[Any, Any]) -> Iterator[Daemon]:
    """Cameras a and b (main and sub-stream), plain (no sub-stream), broken (a sub-stream
    nobody answers)."""
    main, sub = cameras
    args = ["--camera", f"a={main.url}", "--substream", f"a={sub.url}",
            "--camera", f"b={main.url}", "--substream", f"b={sub.url}",
            "--camera", f"plain={main.url}",
            "--camera", f"broken={main.url}", "--substream", "broken=rtsp://127.0.0.1:9/none"]
    with running(*args, live="a") as daemon:
        yield daemon


def stats(page: Any, selector: str = "cxrelay-player") -> dict[str, Any]:
    return page.eval_on_selector(selector, "el => el.stats")


def wait_stream(page: Any, stream: str, selector: str = "cxrelay-player",
                painted: int = 3) -> None:
    page.eval_on_selector(selector, "el => { el.paintedBefore = el.stats.painted; }")
    page.wait_for_function(
        "([s, st, n]) => { const el = document.querySelector(s); return el.state === 'live'"
        " && el.stats.stream === st && el.stats.painted >= el.paintedBefore + n; }",
        arg=[selector, stream, painted], timeout=20000)


@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
def test_small_tile_plays_the_substream_and_grows_into_main(page: Any, relay: Daemon,
                                                            mode: str) -> None:
    """A small player picks the sub-stream; made big, it switches to the main stream on the same
    socket, and every picture shown across the switch is a whole camera picture: no black,
    no broken one, the numbers rising within each stream."""
    if mode == "mse":
        page.add_init_script("delete window.VideoDecoder; delete window.VideoFrame;")
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    open_page(page, relay,
              '<cxrelay-player camera="a" style="width:320px;height:180px"></cxrelay-player>')
    wait_stream(page, "sub")
    assert (stats(page)["width"], stats(page)["height"]) == (320, 180)
    assert stats(page)["mode"] == mode
    page.eval_on_selector("cxrelay-player", SAMPLER)
    page.wait_for_timeout(500)
    page.eval_on_selector("cxrelay-player", "el => { el.style.width = '960px';"
                          " el.style.height = '540px'; }")
    wait_stream(page, "main", painted=10)
    # The player's count of painted pictures runs ahead of the screen on MSE (a picture handed to
    # the video element is shown when its time comes): wait for the main stream's pixels.
    page.wait_for_function("samples.filter(s => s[0] === 640).length >= 5", timeout=20000)
    page.evaluate("window.stopSampling = true")
    samples = page.evaluate("samples")
    assert len(sockets) == 1, "the switch opened another socket"
    assert {s[2] for s in samples} == {"sub", "main"}
    bad = [s for s in samples if s[1] is None]
    assert not bad, f"{len(bad)} of {len(samples)} painted pictures unreadable: {bad[:5]}"
    assert {s[0] for s in samples} == {320, 640}
    for width in (320, 640):  # each camera's own numbers never go back
        numbers = [s[1] for s in samples if s[0] == width]
        assert numbers == sorted(numbers), (width, numbers)
    # The main stream's pictures come after the sub-stream's, never interleaved.
    widths = [s[0] for s in samples]
    assert widths == sorted(widths, key=lambda w: w == 640)
    assert stats(page)["stream"] == "main"
    # ... and back down when it shrinks.
    page.eval_on_selector("cxrelay-player", "el => { el.style.width = '200px';"
                          " el.style.height = '112px'; }")
    wait_stream(page, "sub")
    assert len(sockets) == 1


@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
def test_attributes_pick_the_stream_and_stills(page: Any, relay: Daemon, mode: str) -> None:
    """stream="main" on a small player, and frames="keyframes": only keyframes arrive (their
    flags say so) and they are painted, on either path."""
    if mode == "mse":
        page.add_init_script("delete window.VideoDecoder; delete window.VideoFrame;")
    flags: list[int] = []

    def on_socket(ws: Any) -> None:
        ws.on("framereceived", lambda payload: isinstance(payload, bytes) and
              flags.append(payload[0]))

    page.on("websocket", on_socket)
    open_page(page, relay, '<cxrelay-player camera="a" stream="main" frames="keyframes"'
                           ' style="width:200px;height:112px"></cxrelay-player>')
    wait_state(page, "live")
    # On MSE the engine counts a still shown after its 40 ms as dropped (Chromium's
    # getVideoPlaybackQuality), so its pixels are checked below instead.
    shown = "painted" if mode == "webcodecs" else "decoded"
    page.wait_for_function(f"document.querySelector('cxrelay-player').stats.{shown} >= 4",
                           timeout=20000)
    assert stats(page)["stream"] == "main" and stats(page)["frames"] == "keyframes"
    assert stats(page)["mode"] == mode
    if mode == "mse":  # the video element shows each still in turn, not the first one only
        page.eval_on_selector("cxrelay-player", SAMPLER)
        page.wait_for_function("new Set(samples.map((s) => s[1])).size >= 3", timeout=20000)
        page.evaluate("window.stopSampling = true")
        numbers = [s[1] for s in page.evaluate("samples")]
        assert None not in numbers and numbers == sorted(numbers), numbers
    assert len(flags) >= 4 and all(f & 0x01 for f in flags), flags
    assert not any(f & 0x02 for f in flags), "a still is shown, not skipped as catch-up"
    # Every frame again, on the same socket.
    page.eval_on_selector("cxrelay-player", "el => el.setAttribute('frames', 'all')")
    wait_stream(page, "main", painted=20)
    assert not all(f & 0x01 for f in flags[-20:])


def test_wall_focus_and_return(page: Any, relay: Daemon) -> None:
    page.set_viewport_size({"width": 720, "height": 380})
    page.goto(relay.url + "/?cameras=b,a,plain,broken&stats=1")
    tiles = page.locator("#wall figure")
    wait_until(lambda: tiles.count() == 4, 10, "four tiles", page=page)
    assert [tiles.nth(i).locator(".name").text_content() for i in range(4)] == \
        ["b", "a", "plain", "broken"]
    # 2x2, filling the window
    boxes = [tiles.nth(i).bounding_box() for i in range(4)]
    assert len({round(b["x"]) for b in boxes}) == 2 and len({round(b["y"]) for b in boxes}) == 2
    assert boxes[3]["y"] + boxes[3]["height"] > 380 - 10 and boxes[3]["height"] < 180
    a = "figure:nth-child(2) cxrelay-player"
    wait_stream(page, "sub", a)
    wait_stream(page, "main", "figure:nth-child(3) cxrelay-player")  # plain: no sub-stream
    # The broken camera's sub-stream is offline on its tile; its neighbours play.
    page.wait_for_function(
        "document.querySelector('figure:nth-child(4) .state').dataset.state === 'offline'",
        timeout=30000)
    assert page.text_content("figure:nth-child(2) .state").startswith("live")
    assert "fps" in page.text_content("figure:nth-child(2) .stats")

    # Keyboard: Tab to the first tile, arrow to the second, Enter fills the window with it.
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#wall').classList.contains('focused')")
    box = tiles.nth(1).bounding_box()
    assert box["width"] > 700 and box["height"] > 320
    assert not tiles.nth(0).is_visible() and not tiles.nth(2).is_visible()
    wait_stream(page, "main", a)
    page.wait_for_function(  # the overlay, twice a second
        "document.querySelector('figure:nth-child(2) .stats').textContent.includes('main')")
    # The hidden tiles turn to stills at once, and hidden for a while, let go of their
    # sockets and decoders.
    assert page.evaluate("[...document.querySelectorAll('figure:not(.focus) cxrelay-player')]"
                         ".every((p) => p.getAttribute('frames') === 'keyframes')")
    page.wait_for_function(
        "[...document.querySelectorAll('figure:not(.focus) cxrelay-player')]"
        ".every((p) => p.state === 'idle')", timeout=15000)
    # Esc: back to the wall, the keyboard where it was, the small tile on the sub-stream.
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('#wall').classList.contains('focused')")
    assert page.evaluate("document.activeElement === document.querySelector('figure:nth-child(2)')")
    wait_stream(page, "sub", a)
    wait_stream(page, "sub", "figure:nth-child(1) cxrelay-player")
    assert stats(page, "figure:nth-child(1) cxrelay-player")["frames"] == "all"
    # A click does the same; the broken camera's main stream plays when focused.
    tiles.nth(3).click()
    wait_stream(page, "main", "figure:nth-child(4) cxrelay-player")
    tiles.nth(3).click()
    page.wait_for_function("!document.querySelector('#wall').classList.contains('focused')")


def test_stale_badge_and_reported_latency(page: Any, relay: Daemon,
                                          cameras: tuple[Any, Any]) -> None:
    page.set_viewport_size({"width": 720, "height": 200})  # two tiles side by side, on sub
    page.goto(relay.url + "/?cameras=a,b")
    wait_stream(page, "sub", "figure:nth-child(1) cxrelay-player")
    page.wait_for_timeout(5500)  # a stats report goes every 5 s
    metrics = urllib.request.urlopen(relay.url + "/metrics", timeout=5).read().decode()
    count = re.search(r'cxrelay_glass_latency_seconds_count\{camera="a",stream="sub"\} (\S+)',
                      metrics)
    assert count and float(count.group(1)) > 0, "no latency reported"
    total = re.search(r'cxrelay_glass_latency_seconds_sum\{camera="a",stream="sub"\} (\S+)',
                      metrics)
    assert total and 0 < float(total.group(1)) / float(count.group(1)) < 5, "implausible"
    offset = stats(page, "figure:nth-child(1) cxrelay-player")["clockOffset"]
    assert offset is not None and abs(offset) < 1000  # one machine: the same clock
    # The sub-stream camera stops sending: both tiles say so, with the age.
    sub = cameras[1]
    os.kill(sub._process.pid, signal.SIGSTOP)
    try:
        page.wait_for_function(
            "[...document.querySelectorAll('.stale')].every((s) => !s.hidden"
            " && /^stale \\d+(\\.\\d)? s$/.test(s.textContent))", timeout=10000)
    finally:
        os.kill(sub._process.pid, signal.SIGCONT)
    page.wait_for_function("[...document.querySelectorAll('.stale')].every((s) => s.hidden)",
                           timeout=30000)


def send_recording(page: Any, socket: Any, late_ms: float, start: int) -> None:
    """The recorded stream (60 pictures, keyframes at 0, 25 and 50), at 25 fps, each
    stamped as received by the relay ``late_ms`` ago."""
    for i, packet in enumerate(recording("baseline").packets):
        ingest_us = int((time.time() * 1000 - late_ms) * 1000)
        header = bytes([1 if packet.keyframe else 0]) + (start + packet.pts).to_bytes(8, "big") \
            + ingest_us.to_bytes(8, "big")
        socket.send(header + packet.data)
        if i % 5 == 4:
            page.wait_for_timeout(200)


def test_late_frames_and_a_slow_decoder_never_let_latency_drift(page: Any, relay: Daemon) -> None:
    """Frames that arrive already late (a busy page: its messages queued) are skipped up to
    the next keyframe; a decoder so far behind that a keyframe would queue is reset there.
    Either way a slow machine shows fewer pictures, never older ones."""
    sockets: list[Any] = []
    page.route_web_socket(re.compile(r".*/ws/fake(\?.*)?$"), lambda ws: sockets.append(ws))
    page.add_init_script("""(() => {
        const real = Object.getOwnPropertyDescriptor(VideoDecoder.prototype, 'decodeQueueSize');
        Object.defineProperty(VideoDecoder.prototype, 'decodeQueueSize', {
            get() { return window.slowDecoder ? 50 : real.get.call(this); } });
        const reset = VideoDecoder.prototype.reset;
        window.resets = 0;
        VideoDecoder.prototype.reset = function () { window.resets++; return reset.call(this); };
    })();""")
    open_page(page, relay, '<cxrelay-player camera="fake"></cxrelay-player>')
    wait_until(lambda: sockets, 5, "the player's socket", page=page)
    socket = sockets[0]
    socket.send(json.dumps({"type": "init", "protocol": 1, "camera": "fake",
                            "codec": "avc1.42c01e", "width": 640, "height": 360,
                            "stream": "main", "streams": [], "time": int(time.time() * 1e6)}))
    socket.send(json.dumps({"type": "status", "state": "live"}))
    send_recording(page, socket, late_ms=0, start=0)  # on time: every picture
    page.wait_for_function("document.querySelector('cxrelay-player').stats.decoded >= 55")
    before = stats(page)
    assert before["dropped"] <= 2, before
    send_recording(page, socket, late_ms=5000, start=10_000_000)  # 5 s late: keyframes only
    page.wait_for_timeout(500)
    late = stats(page)
    assert late["decoded"] - before["decoded"] <= 3, late  # the three keyframes
    assert late["dropped"] - before["dropped"] >= 55, late
    assert page.evaluate("resets") == 0
    page.evaluate("window.slowDecoder = true")
    send_recording(page, socket, late_ms=0, start=20_000_000)  # decoder 50 behind: reset
    page.wait_for_timeout(500)
    assert page.evaluate("resets") == 3  # at each keyframe
    assert stats(page)["decoded"] > late["decoded"]
