"""H.264 profiles on both paths, in every engine: recorded streams (tests/data) of the Baseline,
Main (four slices a picture) and High (B-frames, 1280x720) profiles, played to a player by a
fake relay. These are the "tested here" cells of docs/player.md's compatibility table."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.browser.conftest import Daemon, FakeRelay, Site
from tests.browser.engines import Page
from tests.browser.pages import (
    VIDEO_JS,
    changed,
    events,
    is_picture,
    open_player,
    snapshot,
    stats,
    wait_state,
    wait_until,
)
from tests.browser.test_player import mse_page
from tests.recordings import recording

pytestmark = pytest.mark.browser

PROFILES = {"baseline": "baseline", "main": "slices4", "high": "bframes"}


def messages(name: str, loops: int) -> list[bytes]:
    """The recording as protocol v1 frames, looped with pts running on."""
    rec = recording(name)
    span = max(p.pts for p in rec.packets) + 40_000
    out = []
    for loop in range(loops):
        for packet in rec.packets:
            header = (bytes([1 if packet.keyframe else 0])
                      + (loop * span + packet.pts).to_bytes(8, "big", signed=True)
                      + int(time.time() * 1e6).to_bytes(8, "big"))
            out.append(header + packet.data)
    return out


HIGH_MSE = ("the player's fMP4 of the B-frame recording (High, 1280x720) is taken without an "
            "error but nothing is decoded (getVideoPlaybackQuality 0); an open finding, not an "
            "engine limit: the same fMP4 decodes under FFmpeg (tests/unit/test_player_mux.py)")
WEBKIT_MSE = ("WebKitGTK 2.50's MSE stalls after a few frames or fails ('Failed to push buffer') "
              "on the recorded streams fed in real time, while the live cameras play over the "
              "same path (test_player.py); an open finding")


@pytest.mark.xfail_in(chromium_high_mse=HIGH_MSE, firefox_high_mse=HIGH_MSE,
                      webkit_mse=WEBKIT_MSE)
@pytest.mark.parametrize("mode", ["webcodecs", "mse"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_plays(page: Page, site: Site, demo: Daemon, fake_relay: FakeRelay,
                       profile: str, mode: str) -> None:
    name = PROFILES[profile]
    meta = recording(name).meta
    player = f'<cxrelay-player src="{fake_relay.url}" style="width:640px"></cxrelay-player>'
    if mode == "webcodecs":
        open_player(page, site.secure, demo.url, player)
    else:
        mse_page(page, site, demo, player)
    wait_until(lambda: fake_relay.sockets, 10, "the player's socket")
    ws = fake_relay.sockets[0]
    ws.send(json.dumps({"type": "init", "protocol": 1, "camera": "fake", "codec": meta["codec"],
                        "width": meta["width"], "height": meta["height"]}))
    ws.send(json.dumps({"type": "status", "state": "live"}))
    wait_state(page, "live", mode=mode)
    frames = messages(name, 4)
    pictures = []
    for i, message in enumerate(frames):  # in real time, 25 fps; a picture every 25 frames
        ws.send(message)
        time.sleep(0.04)
        if i % 25 == 24 and i > len(frames) // 3:
            pictures.append(snapshot(page))
    s = stats(page)
    if mode == "mse":
        s["video"] = page.evaluate(VIDEO_JS, "cxrelay-player")
    assert [e for e in events(page) if e[0] == "error"] == [], (events(page), s)
    assert s["decoded"] >= len(frames) // 4 and s["painted"] > 0, s
    assert all(is_picture(p) for p in pictures), s
    moved = sum(1 for a, b in itertools.pairwise(pictures) if changed(a, b) > 5)
    assert moved >= (len(pictures) - 1) // 2, (moved, len(pictures), s)
