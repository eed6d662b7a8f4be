#!/usr/bin/env python3
"""First-picture benchmark: how long a new <cxrelay-player> takes to show a picture, per engine
and path, when it joins mid-GOP (the relay's catch-up burst must be decoded first).

The GStreamer test camera sends a keyframe every 10 s; each run waits until the GOP is 2-6 s old
(50-150 catch-up frames), adds a player to a page that already has the player's script loaded,
and polls the player's pixels on every animation frame until they are not black. Runs are
spread over engines (chromium, firefox, webkit: tests/browser/engines.py) and paths (WebCodecs
on http://localhost, MSE on the non-secure http://cxrelay.test). Prints p50/p90/max per
engine and path, and each p50 as a ratio of chromium's WebCodecs p50 (the baseline) from the
same run.

    python3 benchmarks/first_picture.py                    # 5 runs of each, every engine
    python3 benchmarks/first_picture.py --runs 10 --engines chromium,firefox

A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import BLANK, Site, _Quiet, running  # noqa: E402
from tests.browser.engines import ENGINES, launch  # noqa: E402
from tests.browser.pages import ADD_PLAYERS_JS, IMPORT_JS, WATCH_JS  # noqa: E402
from tests.browser.test_player import HIDE_WEBCODECS_JS, INSECURE_MODE, join_mid_gop  # noqa: E402
from tests.camera.harness import RtspCamera  # noqa: E402

# Starts the clock when the player is added; stops it at the first animation frame whose
# picture (canvas, or video on the MSE path) is not black.
TIME_FIRST_PICTURE_JS = """(html) => new Promise((done) => {
  const probe = document.createElement('canvas');
  probe.width = 64; probe.height = 36;
  const x = probe.getContext('2d', {willReadFrequently: true});
  const t0 = performance.now();
  const poll = () => {
    const el = document.querySelector('cxrelay-player');
    const mode = el && el.stats.mode;
    const src = mode && el.shadowRoot.querySelector(mode === 'mse' ? 'video' : 'canvas');
    if (src && (mode !== 'mse' || src.readyState >= 2)) {
      x.drawImage(src, 0, 0, 64, 36);
      const d = x.getImageData(0, 0, 64, 36).data;
      for (let i = 0; i < d.length; i += 4) {
        if (Math.max(d[i], d[i + 1], d[i + 2]) > 60) {
          return done({ms: performance.now() - t0, mode, decoded: el.stats.decoded});
        }
      }
    }
    if (performance.now() - t0 > 20000) return done({ms: null, mode});
    requestAnimationFrame(poll);
  };
  window.addPlayers(html);
  requestAnimationFrame(poll);
})"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--engines", default=",".join(ENGINES))
    args = ap.parse_args()
    engines = args.engines.split(",")

    root = Path(tempfile.mkdtemp(prefix="cxrelay-site-"))
    (root / "blank.html").write_text(BLANK)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = Site(root, server.server_address[1])
    results: dict[tuple[str, str], list[float]] = {}
    try:
        with RtspCamera(gop=250, fps=25) as camera, \
                running("--camera", f"cam={camera.url}", *site.origins(), live="cam") as relay:
            for name in engines:
                engine = launch(name)
                try:
                    for path in ("webcodecs", "mse"):
                        base = site.secure if path == "webcodecs" else site.insecure
                        hide = path == "mse" and INSECURE_MODE[name] == "webcodecs"
                        for _ in range(args.runs):
                            page = engine.new_page()
                            try:
                                page.goto(f"{base}/blank.html")
                                page.evaluate(WATCH_JS)
                                if hide:
                                    page.evaluate(HIDE_WEBCODECS_JS)
                                page.evaluate(IMPORT_JS, f"{relay.url}/cxrelay.js")
                                page.evaluate(f"() => {{ window.addPlayers = {ADD_PLAYERS_JS}; }}")
                                catchup = join_mid_gop(relay)
                                first = page.evaluate(TIME_FIRST_PICTURE_JS,
                                                      '<cxrelay-player camera="cam">'
                                                      "</cxrelay-player>")
                            finally:
                                page.close()
                            print(f"{name:9} {path:9} catch-up {catchup:3} frames: "
                                  f"{first}", flush=True)
                            if first["ms"] is not None and first["mode"] == path:
                                results.setdefault((name, path), []).append(first["ms"])
                finally:
                    engine.close()
    finally:
        server.shutdown()

    baseline = results.get(("chromium", "webcodecs"))
    base_p50 = statistics.median(baseline) if baseline else None
    print(f"\nfirst picture after adding the player, joining 2-6 s into a 10 s GOP "
          f"({args.runs} runs each)")
    print(f"{'engine':9} {'path':9} {'n':>3} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7} "
          f"{'p50/baseline':>12}")
    for (name, path), values in results.items():
        p50 = statistics.median(values)
        ratio = f"{p50 / base_p50:.2f}" if base_p50 else "-"
        print(f"{name:9} {path:9} {len(values):3} {p50:7.0f} {percentile(values, 90):7.0f} "
              f"{max(values):7.0f} {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
