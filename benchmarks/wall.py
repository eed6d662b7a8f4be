#!/usr/bin/env python3
"""The store wall: N cameras on one screen, in headless Debian chromium (issue 10).

Makes two recordings with PyAV (libx264, 25 fps, a keyframe every 2 s): a main stream at
1280x720 and a sub-stream at 640x360, like a CCTV camera's two streams. Runs `cxrelay serve`
with N file cameras, each with both (every camera loops the files in real time, in a source
thread of its own), and opens the relay's wall page (`/`) in Debian's chromium through
Playwright. For N = 4, 16, 32 and three modes:

  main    every tile plays the main stream (`/?stream=main`): what a wall without
          sub-streams does, the baseline
  auto    every tile plays the stream that fits it (`stream="auto"`, the wall's default)
  stills  keyframes only, of the stream that fits (`/?frames=keyframes`)

it measures, over a window after all tiles show a picture: the browser's total CPU (every
chromium process, from /proc, % of one core), pictures painted per tile per second (median
and slowest tile), bytes the relay sent to the browser per second, the relay's CPU, and the
glass latency the players report. Then the focus switch: a tile of the auto wall is clicked
and the time to its first main-stream picture on screen (read off the tile's canvas) is taken,
against the way without `select`: a new player for the main stream (a new socket) over it.

    .venv/bin/python benchmarks/wall.py                       # the table, Markdown
    .venv/bin/python benchmarks/wall.py --cameras 4,16 --seconds 5 --json

This is a benchmark, not a test: numbers depend on the machine and on whatever else runs.
Compare rows of one run; read ratios rather than absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import RelayProcess, http_get  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
MODES = {"main": "?stream=main", "auto": "", "stills": "?frames=keyframes"}
MAIN = (1280, 720, 2000)  # width, height, kbit/s
SUB = (640, 360, 500)
FPS = 25
GOP_SECONDS = 2
CLIP_SECONDS = 12

# The first main-stream picture on a tile's canvas after a click on it (the canvas takes the
# picture's size), and the same for a new player made for the main stream (no select).
SWITCH_JS = """([index, mainWidth]) => new Promise((resolve) => {
  const figure = document.querySelectorAll('#wall figure')[index];
  const player = figure.querySelector('cxrelay-player');
  const canvas = player.shadowRoot.querySelector('canvas');
  const t0 = performance.now();
  figure.click();
  const poll = () => {
    const ms = performance.now() - t0;
    if (canvas.width === mainWidth && player.stats.stream === 'main') return resolve(ms);
    if (ms > 20000) return resolve(null);
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})"""
RECONNECT_JS = """([camera, mainWidth]) => new Promise((resolve) => {
  const player = document.createElement('cxrelay-player');
  player.setAttribute('camera', camera);
  player.setAttribute('stream', 'main');
  player.style.cssText = 'position:fixed;inset:0;width:100vw;height:100vh;z-index:9';
  const t0 = performance.now();
  document.body.append(player);
  const poll = () => {
    const ms = performance.now() - t0;
    const canvas = player.shadowRoot && player.shadowRoot.querySelector('canvas');
    if (canvas && canvas.width === mainWidth && player.stats.painted > 0) {
      player.remove();
      return resolve(ms);
    }
    if (ms > 20000) { player.remove(); return resolve(null); }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})"""
TILES_JS = """() => [...document.querySelectorAll('#wall cxrelay-player')].map((p) => {
  const s = p.stats; return [s.painted, s.stream, s.latency, s.dropped]; })"""


# -- measuring ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def find_process(marker: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise SystemExit("chromium's browser process not found")


def sent_bytes(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("cxrelay_sent_bytes_total "):
                return float(line.split()[1])
    return float("nan")


# -- the cameras ----------------------------------------------------------------------------


def make_clip(path: Path, width: int, height: int, kbps: int) -> Path:
    """A moving test pattern, H.264 without B-frames (as CCTV cameras send), in MP4."""
    if path.exists():
        return path
    import av
    from av.video.frame import PictureType

    source = av.open(f"testsrc2=size={width}x{height}:rate={FPS}", format="lavfi")
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.codec_context.time_base = Fraction(1, FPS)
        gop = FPS * GOP_SECONDS
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "main",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        for i, frame in enumerate(source.decode(video=0)):
            if i >= FPS * CLIP_SECONDS:
                break
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            frame.pict_type = PictureType.NONE  # lavfi marks every picture I: not a request
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    source.close()
    tmp.rename(path)
    return path


class Relay:
    """The relay with N cameras, each with both recordings, once every camera is live."""

    def __init__(self, cameras: int, main: Path, sub: Path, workdir: Path) -> None:
        self.names = [f"cam{i:02d}" for i in range(cameras)]
        config = workdir / f"wall-{cameras}.toml"
        config.write_text("".join(
            f'[[camera]]\nname = "{name}"\nurl = "{main}"\nsubstream = "{sub}"\nlinger = 2\n'
            for name in self.names))
        self.process = RelayProcess("--config", str(config), "--log-level", "warning").start()
        self.url = f"http://127.0.0.1:{self.process.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(c["state"] == "live" for c in json.loads(http_get(self.process.port,
                                                                      "/api/cameras")[1])):
                return
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"cxrelay did not get {cameras} cameras live in 60 s")

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def stop(self) -> None:
        self.process.stop()


# -- the wall -------------------------------------------------------------------------------


def run_mode(pw: Any, relay: Relay, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    marker = f"--cxrelay-bench={uuid.uuid4().hex}"
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, marker])
    try:
        width, height = args.viewport
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(relay.url + "/" + MODES[mode])
        tiles = len(relay.names)
        page.wait_for_function(
            f"document.querySelectorAll('#wall cxrelay-player').length === {tiles} && "
            "[...document.querySelectorAll('#wall cxrelay-player')]"
            ".every((p) => p.stats.painted > 0)", timeout=120_000)
        page.wait_for_timeout(args.warmup * 1000)
        pids = process_tree(find_process(marker))
        before = page.evaluate(TILES_JS)
        cpu0, relay0, bytes0, t0 = (cpu_seconds(pids), cpu_seconds([relay.pid]),
                                    sent_bytes(relay.url), time.monotonic())
        page.wait_for_timeout(args.seconds * 1000)
        pids = process_tree(find_process(marker))
        cpu1, relay1, bytes1, t1 = (cpu_seconds(pids), cpu_seconds([relay.pid]),
                                    sent_bytes(relay.url), time.monotonic())
        after = page.evaluate(TILES_JS)
        span = t1 - t0
        painted = [(b[0] - a[0]) / span for a, b in zip(before, after, strict=True)]
        result: dict[str, Any] = {
            "cameras": tiles, "mode": mode, "seconds": round(span, 1),
            "on_main": sum(1 for t in after if t[1] == "main"),
            "on_sub": sum(1 for t in after if t[1] == "sub"),
            "browser_cpu": 100 * (cpu1 - cpu0) / span,
            "painted_p50": statistics.median(painted), "painted_min": min(painted),
            "painted_total": sum(painted),
            "mbit_s": (bytes1 - bytes0) * 8 / span / 1e6,
            "relay_cpu": 100 * (relay1 - relay0) / span,
            "latency_p50": statistics.median(t[2] for t in after),
            "dropped": sum(b[3] - a[3] for a, b in zip(before, after, strict=True)),
        }
        if mode == "auto" and args.switches:
            result.update(focus_switches(page, relay, args.switches))
        return result
    finally:
        browser.close()


def focus_switches(page: Any, relay: Relay, count: int) -> dict[str, Any]:
    """Click a tile, time its first main-stream picture, Esc; then a new main-stream player
    instead, for the same cameras."""
    select, reconnect = [], []
    tiles = len(relay.names)
    for i in range(count):
        index = (i * 5 + 1) % tiles
        page.wait_for_timeout(1500)
        select.append(page.evaluate(SWITCH_JS, [index, MAIN[0]]))
        page.wait_for_timeout(1000)
        page.keyboard.press("Escape")
    for i in range(count):
        index = (i * 5 + 1) % tiles
        page.wait_for_timeout(1500)
        reconnect.append(page.evaluate(RECONNECT_JS, [relay.names[index], MAIN[0]]))
    return {"switch_select": select, "switch_reconnect": reconnect}


# -- output ---------------------------------------------------------------------------------


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same mode: numbers by their median, the focus
    switches all together."""
    merged = dict(rounds[0])
    for key, value in merged.items():
        if isinstance(value, float):
            merged[key] = statistics.median(r[key] for r in rounds)
        elif isinstance(value, list):
            merged[key] = [v for r in rounds for v in r[key]]
    merged["rounds"] = len(rounds)
    return merged


def fmt(value: float, digits: int = 0) -> str:
    return "—" if value != value else f"{value:.{digits}f}"  # NaN


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"Viewport {args.viewport[0]}x{args.viewport[1]}, main {MAIN[0]}x{MAIN[1]} "
          f"{MAIN[2]} kbit/s, sub {SUB[0]}x{SUB[1]} {SUB[2]} kbit/s, {FPS} fps, keyframe every "
          f"{GOP_SECONDS} s; {args.seconds:g} s windows; load average at the end "
          f"{os.getloadavg()[0]:.1f}.\n")
    print("| cameras | mode | tiles on main / sub | browser CPU (% of a core) | vs main "
          "| painted per tile (fps, median / slowest) | pictures per CPU-second "
          "| received (Mbit/s) | relay CPU (%) | glass latency p50 (ms) |")
    print("|---:|---|---|---:|---:|---|---:|---:|---:|---:|")
    base: dict[int, float] = {}
    for r in results:
        if r["mode"] == "main":
            base[r["cameras"]] = r["browser_cpu"]
        ratio = r["browser_cpu"] / base[r["cameras"]] if base.get(r["cameras"]) else float("nan")
        print(f"| {r['cameras']} | {r['mode']} | {r['on_main']} / {r['on_sub']} "
              f"| {fmt(r['browser_cpu'])} | {fmt(ratio, 2)} "
              f"| {fmt(r['painted_p50'], 1)} / {fmt(r['painted_min'], 1)} "
              f"| {fmt(r['painted_total'] / max(r['browser_cpu'], 1e-9) * 100)} "
              f"| {fmt(r['mbit_s'], 1)} | {fmt(r['relay_cpu'])} | {fmt(r['latency_p50'])} |")
    switches = [r for r in results if "switch_select" in r]
    if switches:
        print("\nFocus switch, click to the first main-stream picture on the tile (ms):\n")
        print("| cameras | select on the same socket p50 / max | new main-stream player p50 / max "
              "| ratio of p50 |")
        print("|---:|---|---|---:|")
        for r in switches:
            sel = [v for v in r["switch_select"] if v is not None]
            new = [v for v in r["switch_reconnect"] if v is not None]
            missed = len(r["switch_select"]) - len(sel) + len(r["switch_reconnect"]) - len(new)
            ratio = percentile(sel, 50) / percentile(new, 50) if sel and new else float("nan")
            nan = float("nan")
            print(f"| {r['cameras']} | {fmt(percentile(sel, 50))} / {fmt(max(sel, default=nan))} "
                  f"| {fmt(percentile(new, 50))} / {fmt(max(new, default=nan))} "
                  f"| {fmt(ratio, 2)} |" + (f" ({missed} timed out)" if missed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="4,16,32", help="wall sizes, comma-separated")
    parser.add_argument("--modes", default="main,auto,stills")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--warmup", type=float, default=4.0,
                        help="seconds after every tile shows a picture")
    parser.add_argument("--switches", type=int, default=5, help="focus switches per wall")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every mode this many times, interleaved; report medians")
    parser.add_argument("--viewport", default="1920x1080")
    parser.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "cxrelay-wall",
                        help="where the recordings are made (and kept for the next run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.viewport = tuple(int(v) for v in args.viewport.split("x"))
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; use {', '.join(MODES)}")
    args.media.mkdir(parents=True, exist_ok=True)
    main_clip = make_clip(args.media / "main-{}x{}-{}k.mp4".format(*MAIN), *MAIN)
    sub_clip = make_clip(args.media / "sub-{}x{}-{}k.mp4".format(*SUB), *SUB)

    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as pw:
        for cameras in (int(n) for n in args.cameras.split(",")):
            relay = Relay(cameras, main_clip, sub_clip, args.media)
            try:
                rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
                for _ in range(args.rounds):
                    for mode in modes:
                        result = run_mode(pw, relay, mode, args)
                        rounds[mode].append(result)
                        print(f"# {cameras} cameras, {mode}: browser "
                              f"{result['browser_cpu']:.0f} %, relay "
                              f"{result['relay_cpu']:.0f} %", file=sys.stderr)
                        time.sleep(3)  # the sub-streams' linger runs out between modes
                results.extend(medians(rounds[mode]) for mode in modes)
            finally:
                relay.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, args)


if __name__ == "__main__":
    main()
