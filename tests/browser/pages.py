"""What the player tests do in a page, written once for every engine (see engines.py).

Everything is read in the page through the player's public API (state, stats, events,
attributes, shadow parts) and standard objects the page watches for the test (WebSockets,
VideoDecoders, MediaSources): no engine-specific hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.engines import Page

# What WebKitGTK's video element says when its MSE (GStreamer underneath) refuses a buffer.
WEBKIT_PUSH_FAILED = "video: Failed to push buffer"

# Before the player is loaded: keep its events, uncaught errors, and every WebSocket,
# VideoDecoder and MediaSource it makes (subclasses of the real ones, so nothing else changes).
WATCH_JS = """() => {
  window.events = [];
  window.uncaught = [];
  window.sockets = [];
  window.decoders = [];
  window.mediaSources = [];
  addEventListener('error', (e) => uncaught.push(String(e.message)));
  addEventListener('unhandledrejection', (e) => uncaught.push(String(e.reason)));
  const watch = (name, list) => {
    const Real = self[name];
    if (Real) window[name] = class extends Real {
      constructor(...a) { super(...a); list.push(this); }
    };
  };
  watch('WebSocket', sockets);
  watch('VideoDecoder', decoders);
  watch('MediaSource', mediaSources);
  watch('ManagedMediaSource', mediaSources);
}"""

# Puts the test's players into the page, recording their events from the start.
ADD_PLAYERS_JS = """(html) => {
  const box = document.createElement('div');
  box.id = 'test';
  box.innerHTML = html;
  for (const el of box.querySelectorAll('cxrelay-player')) {
    el.addEventListener('statechange', (e) => events.push(['statechange', e.detail.state,
                                                           e.detail.reason]));
    el.addEventListener('error', (e) => events.push(['error', e.detail.message,
                                                     e.detail.status, e.detail.detail]));
  }
  document.body.prepend(box);
}"""

IMPORT_JS = """async (url) => {
  await import(url);
  await customElements.whenDefined('cxrelay-player');
}"""

# The player's current picture (canvas, or video on the MSE path) sampled at 64x36 RGB.
SNAPSHOT_JS = """(selector, index = 0) => {
  const el = document.querySelectorAll(selector)[index];
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

STATS_JS = "(s) => document.querySelector(s).stats"


def open_player(page: Page, base: str, relay_url: str, players: str, before: str = "") -> None:
    """A blank page from `base` (an origin of the test site), the player loaded from the relay
    like any embedding page does, and the test's players in it. `before` is a JS function run
    before the player is loaded (to simulate a browser or a fault)."""
    page.goto(f"{base}/blank.html")
    page.evaluate(WATCH_JS)
    if before:
        page.evaluate(before)
    page.evaluate(IMPORT_JS, f"{relay_url}/cxrelay.js")
    page.evaluate(ADD_PLAYERS_JS, players)


def stats(page: Page, selector: str = "cxrelay-player") -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate(STATS_JS, selector)
    return value


def events(page: Page) -> list[list[Any]]:
    value: list[list[Any]] = page.evaluate("() => events")
    return value


def states(page: Page) -> list[str]:
    return [e[1] for e in events(page) if e[0] == "statechange"]


def snapshot(page: Page, selector: str = "cxrelay-player") -> list[int]:
    value: list[int] = page.evaluate(SNAPSHOT_JS, selector)
    return value


def is_picture(px: list[int]) -> bool:
    """Not a black box (the RTSP camera's picture is a white ball on black)."""
    return sum(1 for v in px if v > 60) >= 3


def changed(a: list[int], b: list[int]) -> int:
    """How many samples differ clearly between two snapshots."""
    return sum(1 for x, y in zip(a, b, strict=True) if abs(x - y) > 24)


def wait_state(page: Page, state: str, selector: str = "cxrelay-player", timeout: float = 20,
               mode: str | None = None) -> None:
    page.wait_for(
        "(s, st, m) => { const el = document.querySelector(s);"
        " return !!el && el.state === st && (!m || el.stats.mode === m); }",
        selector, state, mode, timeout=timeout,
        what=f"{selector} {state}{' over ' + mode if mode else ''}")


def wait_painted(page: Page, frames: int = 3, selector: str = "cxrelay-player",
                 timeout: float = 20) -> None:
    page.wait_for("(s, n) => document.querySelector(s)?.stats.painted >= n", selector, frames,
                  timeout=timeout, what=f"{frames} frames painted")


VIDEO_JS = """(s) => { const el = document.querySelector(s);
  const v = el.shadowRoot.querySelector('video'), b = v.buffered;
  return {readyState: v.readyState, paused: v.paused, seeking: v.seeking,
          currentTime: v.currentTime, buffered: b.length ? [b.start(0), b.end(b.length - 1)] : [],
          error: v.error && v.error.message, state: el.state, reason: el.reason,
          stats: el.stats}; }"""


def wait_video_playing(page: Page, selector: str = "cxrelay-player", timeout: float = 20) -> None:
    """The MSE path's video element has a picture and plays. In WebKitGTK, whose MSE now and
    then refuses every buffer of a stream (GStreamer underneath: "Failed to push buffer", seen
    only under load, late in a long session, never in a test run alone), the player tries a
    fresh MediaSource three times and then says playback failed: that, and only that, is an
    expected failure with its reason; anything else fails."""
    try:
        page.wait_for("(s) => { const v = document.querySelector(s).shadowRoot"
                      ".querySelector('video'); return v.readyState >= 2 && !v.paused; }",
                      selector, timeout=timeout, what="the video element playing")
    except AssertionError as e:
        state = page.evaluate(VIDEO_JS, selector)
        if page.engine == "webkit" and state["reason"] == WEBKIT_PUSH_FAILED:
            pytest.xfail(f"webkit: WebKitGTK's MSE refused the stream's buffers "
                         f"({WEBKIT_PUSH_FAILED!r}), four times in a row: {state}")
        raise AssertionError(f"{e}: {state}") from None


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1,
               sleep: Callable[[float], Any] = time.sleep) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        sleep(interval)


def assert_moving_picture(page: Page, selector: str = "cxrelay-player") -> None:
    """A picture (not black), and a different one a moment later. The first picture may take a
    moment to reach the screen after the player says it decoded one (WebKit's video element on a
    loaded machine)."""
    try:
        first = wait_until(lambda: (s := snapshot(page, selector)) and is_picture(s) and s,
                           15, "a picture")
    except AssertionError:
        raise AssertionError(f"{page.engine}: the player shows no picture: "
                             f"{stats(page, selector)}") from None
    # Another picture, not just a different sample: a <video> without a current frame (WebKit's
    # while it seeks, readyState 1) is drawn as nothing at all (HTML's drawImage), so a sample
    # taken then reads black.
    wait_until(lambda: (s := snapshot(page, selector)) and changed(first, s) > 5 and is_picture(s),
               10, f"{page.engine}: the picture to change")
