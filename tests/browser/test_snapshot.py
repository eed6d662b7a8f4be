"""player.snapshot(type) in every engine: a Blob of the picture on screen, on both paths."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Daemon, Site
from tests.browser.engines import Page
from tests.browser.pages import (
    assert_moving_picture,
    is_picture,
    open_player,
    wait_painted,
    wait_state,
    wait_video_playing,
)
from tests.browser.test_player import mse_page

pytestmark = pytest.mark.browser

# Takes a snapshot and, in the same task, samples what is on screen (64x36 RGB); then decodes
# the Blob and samples it the same way. PNG is lossless: the two samples must be the same.
SNAPSHOT_AND_SCREEN = """async (sel, type) => {
  const el = document.querySelector(sel);
  const r = el.shadowRoot;
  const screen = el.stats.mode === 'mse' ? r.querySelector('video') : r.querySelector('canvas');
  const sample = (src) => {
    const c = document.createElement('canvas');
    c.width = 64; c.height = 36;
    const x = c.getContext('2d');
    x.drawImage(src, 0, 0, 64, 36);
    return Array.from(x.getImageData(0, 0, 64, 36).data).filter((_, i) => i % 4 !== 3);
  };
  const pending = el.snapshot(type);
  const onScreen = sample(screen);
  const blob = await pending;
  const image = await createImageBitmap(blob);
  return {type: blob.type, size: blob.size, width: image.width, height: image.height,
          onScreen, inBlob: sample(image)};
}"""

PLAYER = '<cxrelay-player camera="demo"></cxrelay-player>'


@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
def test_snapshot_is_the_picture_on_screen(page: Page, site: Site, demo: Daemon,
                                           mode: str) -> None:
    if mode == "mse":
        mse_page(page, site, demo, PLAYER)
        wait_state(page, "live", mode=mode)
        wait_video_playing(page)
    else:
        open_player(page, site.secure, demo.url, PLAYER)
        wait_state(page, "live", mode=mode)
        wait_painted(page)
    # a picture on screen first (WebKit's video can be black for a moment after its seek)
    assert_moving_picture(page)
    shot = page.evaluate(SNAPSHOT_AND_SCREEN, "cxrelay-player", "image/png")
    assert shot["type"] == "image/png" and shot["size"] > 1000
    assert (shot["width"], shot["height"]) == (640, 360)  # the stream's size, not the element's
    assert is_picture(shot["inBlob"])
    diffs = [abs(a - b) for a, b in zip(shot["onScreen"], shot["inBlob"], strict=True)]
    differ = sum(1 for d in diffs if d > 8)
    # A canvas holds still; a video element may show the next picture between two draws in
    # one task (the compositor presents frames), so there only the still parts must match.
    allowed = len(diffs) // 100 if mode == "webcodecs" else len(diffs) // 3
    assert differ <= allowed, f"{differ} of {len(diffs)} samples differ from the screen"
    jpeg = page.evaluate(SNAPSHOT_AND_SCREEN, "cxrelay-player", "image/jpeg")
    assert jpeg["type"] == "image/jpeg" and (jpeg["width"], jpeg["height"]) == (640, 360)


def test_snapshot_without_a_picture_rejects(page: Page, site: Site, demo: Daemon) -> None:
    open_player(page, site.secure, demo.url, '<cxrelay-player camera="nope"></cxrelay-player>')
    wait_state(page, "error")
    message = page.evaluate("""() => document.querySelector('cxrelay-player').snapshot()
        .then(() => 'resolved', (e) => e.message)""")
    assert message == "snapshot: no picture on screen yet"
