"""H.265 in <cxrelay-player>, in every engine: clean pictures where the engine decodes H.265,
a message naming the codec where it can't.

What each engine here (Debian 12 packages) does with H.265 is pinned below, so that a decoder
that goes missing (say gstreamer1.0-libav) fails the run instead of quietly turning into the
message. "Clean" is checked against the truth: the pictures on screen are compared with
FFmpeg's decode of the very file the camera plays (tests/data/h265_main.h265, lavfi testsrc2:
colour and detail everywhere), 8x8-pixel box averages, colour-converted both ways (an
untagged stream is BT.601 to WebKit and BT.709 to Firefox). A clean picture is within a few
levels of one of the file's pictures (about 5 here, where neighbouring pictures differ by about
4); pictures decoded from damaged data are 11 to 31 away (see CLEAN).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import cache

import av
import pytest

from tests.browser.conftest import ROOT, Daemon, Site, running
from tests.browser.engines import Page
from tests.browser.pages import (
    WEBKIT_PUSH_FAILED,
    assert_moving_picture,
    open_player,
    states,
    stats,
    wait_painted,
    wait_state,
    wait_video_playing,
)
from tests.browser.test_player import mse_page

pytestmark = pytest.mark.browser

FILE = "tests/data/h265_main.h265"
CODEC = "hvc1.1.6.L63.90"  # what the relay announces for it
# The path each engine plays H.265 on, on a secure page (None: it can't decode H.265). Chromium:
# Debian's has no HEVC decoder and there is no hardware here. Firefox ESR 153: VideoDecoder
# refuses hvc1, Media Source takes it (FFmpeg). WebKitGTK 2.50: both, through GStreamer's
# avdec_h265 (gstreamer1.0-libav).
H265_MODE = {"chromium": None, "firefox": "mse", "webkit": "webcodecs"}
# Mean difference (0-255 levels) from the closest picture of the file, at most. Measured: 5.1
# (Firefox), 5.6 (WebKit); the same file decoded by FFmpeg with a few bytes of three pictures
# flipped: 11 to 31.
CLEAN = 9.0
BOX = 8

# The player's picture at its full size (canvas, or the video element on the MSE path), as
# averages of BOX x BOX pixels, RGB.
BOXES_JS = """(box) => {
  const el = document.querySelector('cxrelay-player'), root = el.shadowRoot;
  const src = root.querySelector(el.stats.mode === 'mse' ? 'video' : 'canvas');
  const w = el.stats.width, h = el.stats.height;
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  const x = c.getContext('2d');
  x.drawImage(src, 0, 0, w, h);
  const d = x.getImageData(0, 0, w, h).data, out = [];
  for (let by = 0; by < h / box; by++) for (let bx = 0; bx < w / box; bx++) {
    for (let ch = 0; ch < 3; ch++) {
      let sum = 0;
      for (let y = by * box; y < by * box + box; y++) {
        for (let xx = bx * box; xx < bx * box + box; xx++) sum += d[(y * w + xx) * 4 + ch];
      }
      out.push(Math.round(sum / (box * box)));
    }
  }
  return out;
}"""

MESSAGE_JS = """() => { const m = document.querySelector('cxrelay-player').shadowRoot
    .querySelector('[part=message]'); return m.hidden ? null : m.textContent; }"""


@cache
def references() -> list[bytes]:
    """Every picture of FILE as FFmpeg decodes it, box-averaged like BOXES_JS, in BT.601 and in
    BT.709."""
    out = []
    for colorspace in ("ITU601", "ITU709"):
        with av.open(str(ROOT / FILE)) as container:
            for frame in container.decode(video=0):
                small = frame.reformat(width=frame.width // BOX, height=frame.height // BOX,
                                       format="rgb24", interpolation="AREA",
                                       src_colorspace=colorspace)
                plane = small.planes[0]
                rows = memoryview(plane)
                out.append(b"".join(bytes(rows[y * plane.line_size:
                                                y * plane.line_size + small.width * 3])
                                    for y in range(small.height)))
    return out


def closest(sample: list[int]) -> tuple[float, int]:
    """The mean difference from the closest of the file's pictures, and which one it is."""
    refs = references()
    assert len(sample) == len(refs[0]), "the picture is not the file's size"
    score, index = min((sum(abs(a - b) for a, b in zip(sample, ref, strict=True)) / len(ref), i)
                       for i, ref in enumerate(refs))
    return score, index % (len(refs) // 2)


def assert_clean_pictures(page: Page, samples: int = 8) -> None:
    """Every picture sampled over about 3 s is one of the file's, and they move on."""
    seen = []
    for _ in range(samples):
        score, index = closest(page.evaluate(BOXES_JS, BOX))
        seen.append((round(score, 1), index))
        time.sleep(0.4)
    assert all(score <= CLEAN for score, _ in seen), f"{page.engine}: not clean: {seen}"
    assert len({index for _, index in seen}) >= 3, f"{page.engine}: not moving: {seen}"


def assert_cannot_decode(page: Page) -> None:
    """The message over the picture names the codec, in `reason` and the `error` event too;
    nothing was decoded."""
    wait_state(page, "error")
    message = page.evaluate(MESSAGE_JS)
    assert message == ("This browser can't play this camera's video: it can't decode "
                       f"H.265 ({CODEC})."), message
    assert page.evaluate("() => document.querySelector('cxrelay-player').reason") == \
        f"can't decode H.265 ({CODEC})"
    errors = page.evaluate("() => events.filter((e) => e[0] === 'error').map((e) => e[1])")
    assert errors == [message]
    time.sleep(1)  # frames keep coming: none is fed to anything
    played = stats(page)
    assert played["mode"] is None and played["decoded"] == played["painted"] == 0, played
    assert states(page)[-1] == "error"


@pytest.fixture(scope="module")
def h265_relay(site: Site) -> Iterator[Daemon]:
    with running("--camera", f"h265={FILE}", *site.origins(), live="h265") as daemon:
        yield daemon


PLAYER = '<cxrelay-player camera="{camera}"></cxrelay-player>'


def test_h265_plays_clean_pictures_or_says_it_cannot(page: Page, site: Site,
                                                     h265_relay: Daemon) -> None:
    """A secure page: the engine's best path, or the message."""
    open_player(page, site.secure, h265_relay.url, PLAYER.format(camera="h265"))
    mode = H265_MODE[page.engine]
    if mode is None:
        return assert_cannot_decode(page)
    wait_state(page, "live", mode=mode)
    assert stats(page)["codec"] == CODEC
    wait_painted(page)  # the canvas is blank before the first paint
    assert_clean_pictures(page)
    assert page.evaluate("() => events.filter((e) => e[0] === 'error')") == []


def test_h265_over_mse_plays_clean_pictures_or_says_it_cannot(page: Page, site: Site,
                                                              h265_relay: Daemon) -> None:
    """A plain http:// page without WebCodecs: Media Source, hvc1 + hvcC fMP4 (WebKit too)."""
    mse_page(page, site, h265_relay, PLAYER.format(camera="h265"))
    if H265_MODE[page.engine] is None:
        return assert_cannot_decode(page)
    wait_state(page, "live", mode="mse")
    wait_video_playing(page)
    assert_clean_pictures(page)
    errors = page.evaluate("() => events.filter((e) => e[0] === 'error').map((e) => e[1])")
    if page.engine == "webkit":
        # WebKitGTK's MSE (GStreamer underneath) now and then fails on a busy machine, the
        # player starts a fresh MediaSource at the next keyframe, and the pictures stay clean
        # (checked above): the engine's error, not the stream's.
        errors = [e for e in errors if e != WEBKIT_PUSH_FAILED]
    assert errors == []
    assert page.evaluate("() => document.querySelector('cxrelay-player').state") == "live"


NO_DECODERS_JS = """() => { for (const name of ['VideoDecoder', 'VideoFrame', 'MediaSource',
    'ManagedMediaSource']) delete window[name]; }"""


def test_h265_without_any_decoder_says_so(page: Page, site: Site, h265_relay: Daemon) -> None:
    """Neither WebCodecs nor Media Source takes it (hidden here, in every engine): the message."""
    open_player(page, site.secure, h265_relay.url, PLAYER.format(camera="h265"), NO_DECODERS_JS)
    assert_cannot_decode(page)


@pytest.fixture(scope="module")
def h265_rtsp_relay(site: Site) -> Iterator[Daemon]:
    """The GStreamer test camera's H.265 mount (x265enc, two slices a picture, parameter sets
    in band and in the SDP), relayed."""
    from tests.camera.harness import SYSTEM_PYTHON, RtspCamera

    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"Debian's {SYSTEM_PYTHON} (with the GStreamer bindings) is missing: "
                    "`make deps` installs it", pytrace=False)
    with RtspCamera(codec="h265", gop=25, fps=25) as camera, \
            running("--camera", f"cam={camera.url}", *site.origins(), live="cam") as daemon:
        yield daemon


def test_h265_rtsp_camera_plays_or_says_it_cannot(page: Page, site: Site,
                                                  h265_rtsp_relay: Daemon) -> None:
    open_player(page, site.secure, h265_rtsp_relay.url, PLAYER.format(camera="cam"))
    mode = H265_MODE[page.engine]
    if mode is None:
        wait_state(page, "error")
        message = page.evaluate(MESSAGE_JS)
        assert message and "can't decode H.265 (hvc1." in message, message
        return
    wait_state(page, "live", mode=mode)
    assert stats(page)["codec"].startswith("hvc1.")
    page.wait_for("() => document.querySelector('cxrelay-player').stats.decoded >= 10",
                  what="10 pictures decoded")
    assert_moving_picture(page)
    assert page.evaluate("() => events.filter((e) => e[0] === 'error')") == []


# --- a camera with an H.264 sub-stream --------------------------------------------------------

SUB = "tests/data/baseline.h264"  # 640x360 H.264 Constrained Baseline
NOTE = f"playing the H.264 sub stream: this browser can't decode H.265 ({CODEC})"


@pytest.fixture(scope="module")
def h265_with_sub_relay(site: Site) -> Iterator[Daemon]:
    with running("--camera", f"cam={FILE}", "--substream", f"cam={SUB}", *site.origins(),
                 live="cam") as daemon:
        yield daemon


def test_h265_falls_back_to_the_h264_sub_stream(page: Page, site: Site,
                                                h265_with_sub_relay: Daemon) -> None:
    """A player that wants the main stream gets the H.265 one where the engine decodes it,
    else the camera's H.264 sub-stream, and says so: in `reason` and the overlay, with no
    message over the picture and no error event."""
    open_player(page, site.secure, h265_with_sub_relay.url,
                '<cxrelay-player camera="cam" stream="main"></cxrelay-player>')
    mode = H265_MODE[page.engine]
    if mode is not None:
        page.wait_for("(c) => { const el = document.querySelector('cxrelay-player');"
                      " return el.state === 'live' && el.stats.codec === c"
                      " && el.stats.painted >= 3; }", CODEC, what="H.265 playing")
        assert (stats(page)["stream"], stats(page)["mode"]) == ("main", mode)
        assert page.evaluate("() => document.querySelector('cxrelay-player').reason") == ""
        return
    page.wait_for("(n) => { const el = document.querySelector('cxrelay-player');"
                  " return el.state === 'live' && el.reason === n && el.stats.painted >= 3; }",
                  NOTE, timeout=30, what="the sub-stream playing")
    played = stats(page)
    assert (played["stream"], played["codec"][:5]) == ("sub", "avc1."), played
    assert_moving_picture(page)
    overlay = page.evaluate("""() => document.querySelector('cxrelay-player').shadowRoot
        .querySelector('[part=overlay]').textContent""")
    assert overlay == f"live — {NOTE}"
    assert page.evaluate(MESSAGE_JS) is None
    assert page.evaluate("() => events.filter((e) => e[0] === 'error')") == []
    assert "error" not in states(page)


def test_wall_tile_says_it_plays_the_sub_stream(page: Page, h265_with_sub_relay: Daemon) -> None:
    """The wall's focused tile (stream="main"): the caption says which stream plays, and why."""
    page.goto(h265_with_sub_relay.url + "/")
    tile = "figure cxrelay-player[camera=cam]"
    page.wait_for("(s) => !!document.querySelector(s)", tile, what="the camera's tile")
    page.evaluate("(s) => document.querySelector(s).closest('figure').click()", tile)
    page.wait_for("(s) => document.querySelector(s).getAttribute('stream') === 'main'", tile,
                  what="the tile focused on the main stream")
    mode = H265_MODE[page.engine]
    expected = "live · 640\u00d7360" + ("" if mode else f" · {NOTE}")
    page.wait_for("(e) => document.querySelector('figure .state').textContent === e", expected,
                  timeout=30, what=f"the caption {expected!r}")
