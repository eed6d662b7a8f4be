#!/usr/bin/env python3
"""Glass: capture-to-screen latency, read from the pixels, in every engine.

The test camera draws each picture's capture time into it (`rtsp_camera.py --glass`:
a strip of black and white blocks with a CRC, tests/camera/glass.py). The same camera
is read, one after the other, for --seconds each:

  floor      GStreamer's own client: rtspsrc latency=0 -> avdec_h264 -> the code read from
             each decoded picture (benchmarks/glass_floor.py). No screen: decode is the end.
  webcodecs  cxrelay -> <cxrelay-player> on a secure origin (http://localhost), its WebCodecs
             path: the code read off the player's canvas on every animation frame
  mse        the same on a non-secure origin (http://cxrelay.test, like a plain http:// LAN
             page; WebKitGTK, which offers WebCodecs there too, gets VideoDecoder deleted), so
             the player takes its Media Source Extensions path: the code read off the <video>
             on every frame it presents (requestVideoFrameCallback, at its expected display
             time)

in each engine (chromium, firefox, webkit: the test suite's page drivers,
tests/browser/engines.py), and prints, side by side, capture -> screen p50/p90/p99 per
engine and path, the player's own latency figure (stats.latency: relay ingest -> paint) at
the same moments, and where the browser's time goes: arrival of the WebSocket message,
decoder output, the canvas paint (WebCodecs), measured by hooks the page puts around
WebSocket, VideoDecoder and drawImage before the player loads.

    .venv/bin/python benchmarks/glass.py                  # 20 s per path, Markdown
    .venv/bin/python benchmarks/glass.py --engines chromium --seconds 30 --size 1280x720 --json
    .venv/bin/python benchmarks/glass.py --paths mse --player /tmp/cxrelay.js  # a change, beside

A benchmark, not a test: numbers depend on the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.wall import percentile  # noqa: E402
from tests.browser.conftest import BLANK, Daemon, Site, _Quiet, running  # noqa: E402
from tests.browser.engines import ENGINES, Page, launch  # noqa: E402
from tests.browser.pages import IMPORT_JS  # noqa: E402
from tests.browser.test_player import HIDE_WEBCODECS_JS, INSECURE_MODE  # noqa: E402
from tests.camera.glass import unwrap_ms  # noqa: E402
from tests.camera.harness import SYSTEM_PYTHON, RtspCamera  # noqa: E402

FLOOR = Path(__file__).resolve().parent / "glass_floor.py"
PATHS = ("floor", "webcodecs", "mse")
VARIANT = "player-variant.js"  # --player, served by the test site

# Put in the page before anything else runs. Records, in ms on the page's wall clock
# (performance.timeOrigin + performance.now(), the same clock as the camera's):
#   arrivals  [pts, arrived, ingest]           every binary message
#   decoded   [pts, decoded, capture_low32]    every VideoDecoder output (code read off it)
#   painted   [pts, painted]                   every VideoFrame drawn on a canvas
#   shown     [capture_low32, counter, shown, player_latency]  every new code seen on screen:
#             on the canvas, dated with the animation frame it was painted in (it is
#             presented at the end of that frame); on the <video>, with the time
#             requestVideoFrameCallback expects it to be displayed
GLASS_JS = r"""() => {
  const G = (window.__glass = {
    arrivals: [], decoded: [], painted: [], shown: [], ahead: [], mode: null });
  const now = () => performance.timeOrigin + performance.now();

  // The glass code: 3 rows of 32 cells; bit i is cells 2i (white for 1) and 2i+1.
  const scratch = new OffscreenCanvas(128, 12);
  const sctx = scratch.getContext('2d', { willReadFrequently: true });
  function crc8(bytes) {
    let crc = 0;
    for (const b of bytes) {
      crc ^= b;
      for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    }
    return crc;
  }
  function readCode(source, width) {
    if (!width) return null;
    const cell = Math.floor(width / 32);
    sctx.drawImage(source, 0, 0, cell * 32, cell * 3, 0, 0, 128, 12);
    const px = sctx.getImageData(0, 0, 128, 12).data;
    const level = (i) => {
      const row = Math.floor(i / 32), col = i % 32;
      const x = col * 4 + 2, y = row * 4 + 2;
      return px[(y * 128 + x) * 4];
    };
    const bytes = new Uint8Array(6);
    for (let bit = 0; bit < 48; bit++) {
      const a = level(2 * bit), b = level(2 * bit + 1);
      if (Math.abs(a - b) < 60) return null;
      if (a > b) bytes[bit >> 3] |= 0x80 >> (bit & 7);
    }
    if (crc8(bytes.subarray(0, 5)) !== bytes[5]) return null;
    const ms = ((bytes[0] << 24) >>> 0) + (bytes[1] << 16) + (bytes[2] << 8) + bytes[3];
    return [ms, bytes[4]];
  }

  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        if (typeof e.data === 'string' || e.data.byteLength <= 17) return;
        const dv = new DataView(e.data);
        if (dv.getUint8(0) & 2) return; // catch-up
        G.arrivals.push([Number(dv.getBigInt64(1)), now(), Number(dv.getBigUint64(9)) / 1000]);
      });
    }
  };

  if (window.VideoDecoder) {
    const VD = window.VideoDecoder;
    window.VideoDecoder = class extends VD {
      constructor(init) {
        const output = init.output;
        super({ ...init, output: (frame) => {
          const t = now();
          const code = readCode(frame, frame.displayWidth);
          G.decoded.push([frame.timestamp, t, code ? code[0] : null]);
          output(frame);
        } });
      }
    };
  }

  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (image, ...rest) {
    if (window.VideoFrame && image instanceof VideoFrame) G.painted.push([image.timestamp, now()]);
    return draw.call(this, image, ...rest);
  };

  let last = null;
  function seen(source, width, at, player) {
    const code = readCode(source, width);
    if (!code || (last && code[0] === last[0] && code[1] === last[1])) return;
    last = code;
    G.shown.push([code[0], code[1], at, player.stats.latency]);
  }
  function watch() {
    const player = document.querySelector('cxrelay-player');
    const root = player && player.shadowRoot;
    if (!root) return setTimeout(watch, 50);
    const canvas = root.querySelector('canvas');
    const video = root.querySelector('video');
    const onFrame = (_t, meta) => {
      G.mode = 'mse';
      const b = video.buffered;  // what the element holds beyond the frame it shows
      if (b.length) G.ahead.push((b.end(b.length - 1) - meta.mediaTime) * 1000);
      seen(video, video.videoWidth, performance.timeOrigin + meta.expectedDisplayTime, player);
      video.requestVideoFrameCallback(onFrame);
    };
    const frameCallbacks = video && !!video.requestVideoFrameCallback;
    if (frameCallbacks) video.requestVideoFrameCallback(onFrame);
    // The player paints in an animation frame callback registered after ours: read the
    // canvas once every callback of the frame has run, and date it with that frame. (A
    // <video> without requestVideoFrameCallback is read the same way.)
    const onAnimation = (frameTime) => {
      setTimeout(() => {
        const mode = player.stats.mode;
        if (mode === 'webcodecs' && canvas.width) {
          G.mode = mode;
          seen(canvas, canvas.width, performance.timeOrigin + frameTime, player);
        } else if (mode === 'mse' && !frameCallbacks) {
          G.mode = mode;
          seen(video, video.videoWidth, performance.timeOrigin + frameTime, player);
        }
      }, 0);
      requestAnimationFrame(onAnimation);
    };
    requestAnimationFrame(onAnimation);
  }
  watch();
}"""

# A blank page of the test site, the player loaded (from the relay, or the --player variant
# from the site, told where the relay is), and one player put in.
ADD_PLAYER = """(width, height, server) => {
  const player = document.createElement('cxrelay-player');
  player.setAttribute('camera', 'cam');
  if (server) player.setAttribute('server', server);
  player.style.cssText = `width:${width}px;height:${height}px;display:block`;
  document.body.append(player);
}"""
RESET_JS = """() => { const G = window.__glass;
  for (const k of ['arrivals', 'decoded', 'painted', 'shown', 'ahead']) G[k].length = 0; }"""
COLLECT_JS = """() => ({...window.__glass,
  stats: document.querySelector('cxrelay-player').stats})"""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the paths ------------------------------------------------------------------------------


def run_floor(camera_url: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run([SYSTEM_PYTHON, str(FLOOR), camera_url, str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0 and not out.stdout.strip():
        return {"error": out.stderr.strip()[-300:]}
    data: dict[str, Any] = json.loads(out.stdout)
    return {"glass_ms": data["latency_ms"], "frames": data["decoded"], "unread": data["unread"]}


def run_page(page: Page, site: Site, relay: Daemon, mode: str, seconds: float,
             size: tuple[int, int], warmup: float, variant: bool) -> dict[str, Any]:
    base = site.secure if mode == "webcodecs" else site.insecure
    page.goto(f"{base}/blank.html")
    if mode == "mse" and INSECURE_MODE[page.engine] == "webcodecs":
        page.evaluate(HIDE_WEBCODECS_JS)
    page.evaluate(GLASS_JS)
    page.evaluate(IMPORT_JS, f"{base}/{VARIANT}" if variant else f"{relay.url}/cxrelay.js")
    page.evaluate(ADD_PLAYER, *size, relay.url if variant else "")
    page.sleep(warmup)
    page.evaluate(RESET_JS)
    page.sleep(seconds)
    return summarize_page(page.evaluate(COLLECT_JS), mode)


def summarize_page(data: dict[str, Any], mode: str) -> dict[str, Any]:
    shown = data["shown"]
    glass = [at - unwrap_ms(code_ms, at) for code_ms, _counter, at, _player in shown]
    player = [p for *_, p in shown if p]
    result: dict[str, Any] = {"glass_ms": glass, "player_ms": player, "frames": len(shown),
                              "mode": data.get("mode"), "stats": data.get("stats")}
    if data.get("mode") != mode:
        result["error"] = f"the player played {data.get('mode')}, not {mode}"
    # Where the time goes, frame by frame, joined on the presentation timestamp.
    arrivals = {pts: (at, ingest) for pts, at, ingest in data["arrivals"]}
    painted = {pts: at for pts, at in data["painted"]}
    shown_at = {code_ms: at for code_ms, _counter, at, _player in shown}
    stages: dict[str, list[float]] = {"capture->ingest": [], "ingest->arrival": [],
                                      "arrival->decoded": [], "decoded->painted": [],
                                      "painted->frame": []}
    for pts, decoded_at, code_ms in data["decoded"]:
        if pts not in arrivals or code_ms is None:
            continue
        arrived, ingest = arrivals[pts]
        capture = unwrap_ms(code_ms, decoded_at)
        stages["capture->ingest"].append(ingest - capture)
        stages["ingest->arrival"].append(arrived - ingest)
        stages["arrival->decoded"].append(decoded_at - arrived)
        if pts in painted:
            stages["decoded->painted"].append(painted[pts] - decoded_at)
            if code_ms in shown_at:
                stages["painted->frame"].append(shown_at[code_ms] - painted[pts])
    result["decoded"] = len(data["decoded"])
    if mode == "mse":  # no decoder to hook; what the <video> holds ahead of its picture
        stages = {"ingest->arrival": [at - ingest for at, ingest in arrivals.values()],
                  "buffered ahead of the picture": data["ahead"]}
    result["stages"] = {name: round(median(v), 1) for name, v in stages.items() if v}
    return result


# -- output ---------------------------------------------------------------------------------


def row(path: str, result: dict[str, Any], floor_p50: float) -> dict[str, Any]:
    glass = result.get("glass_ms", [])
    p50 = percentile(glass, 50)
    return {
        "path": path,
        "frames": result.get("frames", 0),
        "p50_ms": round(p50, 1),
        "p90_ms": round(percentile(glass, 90), 1),
        "p99_ms": round(percentile(glass, 99), 1),
        "vs_floor_p50": round(p50 / floor_p50, 2) if floor_p50 == floor_p50 else None,
        "player_says_p50_ms": round(median(result.get("player_ms", [])), 1)
        if result.get("player_ms") else None,
        "stages_p50_ms": result.get("stages", {}),
        "error": result.get("error"),
    }


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=50)
    parser.add_argument("--player", type=Path,
                        help="also run each browser path with this file as the player, beside "
                             "the relay's own (compare a change to the player)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    paths = args.paths.split(",")
    players = ["relay"] + (["variant"] if args.player else [])
    camera = RtspCamera(glass=True, width=width, height=height, fps=args.fps, gop=args.gop,
                        bitrate=max(1000, width * height * args.fps // 10_000))
    root = Path(tempfile.mkdtemp(prefix="cxrelay-glass-"))
    (root / "blank.html").write_text(BLANK)
    if args.player:
        shutil.copy(args.player, root / VARIANT)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = Site(root, server.server_address[1])
    loads = [load()]
    results: dict[str, dict[str, Any]] = {}
    try:
        with camera, running("--camera", f"cam={camera.url}", *site.origins(),
                             live="cam") as relay:
            if "floor" in paths:
                print("glass: floor...", file=sys.stderr, flush=True)
                results["floor"] = run_floor(camera.url, args.seconds + args.warmup)
            for name in args.engines.split(","):
                engine = launch(name)
                try:
                    for path in (p for p in paths if p != "floor"):
                        for player in players:
                            label = f"{name} {path}" + (f" ({args.player.name})"
                                                        if player == "variant" else "")
                            print(f"glass: {label}...", file=sys.stderr, flush=True)
                            page = engine.new_page()
                            try:
                                results[label] = run_page(
                                    page, site, relay, path, args.seconds, (width, height),
                                    args.warmup, player == "variant")
                            except AssertionError as e:  # a page that broke: say so, go on
                                results[label] = {"error": str(e)[:300]}
                            finally:
                                page.close()
                            results[label]["engine"] = engine.version
                finally:
                    engine.close()
    finally:
        server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    loads.append(load())
    floor_p50 = percentile(results.get("floor", {}).get("glass_ms", []), 50)
    rows = [row(path, result, floor_p50) for path, result in results.items()]
    if args.json:
        print(json.dumps({"load": loads, "rows": rows}, indent=1))
        return
    versions = sorted({r["engine"] for r in results.values() if r.get("engine")})
    print(f"Capture to screen, {args.size} at {args.fps} fps, {args.seconds:g} s per path "
          f"({', '.join(versions)}); load average (1/5/15 min) {loads[0]} before, "
          f"{loads[1]} after\n")
    print("| path | frames | p50 ms | p90 ms | p99 ms | p50 vs floor | player says (p50) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['frames']} | {r['p50_ms']} | {r['p90_ms']} | "
              f"{r['p99_ms']} | {r['vs_floor_p50']} | {r['player_says_p50_ms']} |")
    print()
    for r in rows:
        if r["stages_p50_ms"]:
            stages = ", ".join(f"{k} {v} ms" for k, v in r["stages_p50_ms"].items())
            print(f"- {r['path']} (medians): {stages}")
        if r["error"]:
            print(f"- {r['path']}: {r['error']}")


if __name__ == "__main__":
    main()
