#!/usr/bin/env python3
"""Snapshot benchmark: request -> JPEG, the picture's age, and a burst of requests.

For each size it starts the GStreamer test camera (25 fps, a keyframe every 2 s,
each picture's number drawn into it) and `cxrelay serve` as a subprocess, keeps
one WebSocket viewer on the camera (to know the newest frame), and measures:

- **cxrelay**: `GET /api/cameras/cam/snapshot.jpg`, one request at a time at
  random moments (so at random points of the GOP): request -> JPEG in hand, the
  picture's age (`X-Cxrelay-Age`: camera frame received by the relay -> answer),
  and how many frames the picture is behind the newest one the viewer had when
  the answer came (read from the number drawn in the JPEG).
- **cold decode**: what a snapshot costs when its decoder is cold (30 s without
  a request): decoding one whole GOP and encoding the JPEG, in this process,
  with the relay's decoder settings (one thread).
- **baseline, wait for a keyframe** (what go2rtc's frame.jpeg does): from the
  request, wait for the next keyframe on the viewer's connection, decode it
  alone, encode the JPEG.
- **burst**: 20 requests at once: each one's request -> JPEG, the relay's CPU
  time for the burst, and how many decodes it ran (`/metrics`), against the
  CPU time of one request.

    .venv/bin/python benchmarks/snapshot.py
    .venv/bin/python benchmarks/snapshot.py --sizes 640x360 --requests 20 --json

A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cxrelay.decoding import Decoder, encode_jpeg  # noqa: E402
from tests.camera.harness import RtspCamera  # noqa: E402
from tests.camera.stamp import find_stamp, read_drawn_counter  # noqa: E402
from tests.support import RelayProcess  # noqa: E402

HEADER = 17
FPS = 25
GOP = 50  # frames: 2 s


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns resolution (schedstat), not
    /proc/pid/stat's 10 ms ticks: one snapshot costs about that much."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def drawn(jpeg: bytes) -> int | None:
    pictures = av.CodecContext.create("mjpeg", "r").decode(av.Packet(jpeg))
    gray = pictures[-1].reformat(format="gray")
    plane = gray.planes[0]
    return read_drawn_counter(bytes(plane), gray.width, plane.line_size)


@dataclass
class Watcher:
    """One WebSocket viewer: the newest frame's counter, keyframes, a whole GOP."""

    codec: str = ""
    newest: int = 0
    keyframes: list[tuple[asyncio.Future[None], list[bytes]]] = field(default_factory=list)
    gop: list[bytes] = field(default_factory=list)
    gops: list[list[bytes]] = field(default_factory=list)

    async def run(self, url: str) -> None:
        async with connect(url, compression=None, max_size=None) as ws:
            async for message in ws:
                if isinstance(message, str):
                    info = json.loads(message)
                    if info.get("type") == "init":
                        self.codec = info["codec"]
                    continue
                stamp = find_stamp(message[HEADER:])
                if stamp is not None:
                    self.newest = stamp[1]
                keyframe, catchup = message[0] & 1, message[0] & 2
                if keyframe and not catchup:
                    if self.gop and self.gop[0][0] & 1 and not self.gop[0][0] & 2:
                        self.gops = [*self.gops[-4:], self.gop]
                    for waiter, box in self.keyframes:
                        box.append(message)
                        if not waiter.done():
                            waiter.set_result(None)
                    self.keyframes = []
                if keyframe:
                    self.gop = [message]
                elif self.gop:
                    self.gop.append(message)

    async def next_keyframe(self) -> bytes:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        box: list[bytes] = []
        self.keyframes.append((waiter, box))
        await waiter
        return box[0]


def keyframe_jpeg(codec: str, message: bytes) -> bytes:
    decoder = Decoder(codec, threads=1)
    out = decoder.decode([(message[HEADER:], 0, None)]) or decoder.drain()
    assert out is not None
    return encode_jpeg(out[0])


def cold_jpeg(codec: str, gop: list[bytes]) -> bytes:
    decoder = Decoder(codec, threads=1)
    out = decoder.decode((m[HEADER:], i, None) for i, m in enumerate(gop))
    out = out or decoder.drain()
    assert out is not None
    return encode_jpeg(out[0])


async def decodes(port: int) -> float:
    _, _, body = await http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("cxrelay_snapshot_decodes_total "):
            return float(line.split()[1])
    return float("nan")


async def measure(width: int, height: int, requests: int, burst: int, bursts: int
                  ) -> dict[str, Any]:
    bitrate = 1000 if width <= 1280 else 4000
    camera = RtspCamera(width=width, height=height, fps=FPS, gop=GOP, stamp=True,
                        draw_counter=True, bitrate=bitrate)
    await asyncio.to_thread(camera.start)
    relay = RelayProcess("--camera", f"cam={camera.url}", "--log-level", "warning")
    try:
        await asyncio.to_thread(relay.start)
        assert relay.proc is not None
        pid, port = relay.proc.pid, relay.port
        path = "/api/cameras/cam/snapshot.jpg"
        watcher = Watcher()
        task = asyncio.create_task(watcher.run(f"ws://127.0.0.1:{port}/ws/cam"))
        await asyncio.sleep(3 * GOP / FPS)  # a few GOPs in: camera and relay settled
        rng = random.Random(1)
        results: dict[str, Any] = {"size": f"{width}x{height}"}

        latency, age, behind, cpu = [], [], [], []
        for _ in range(requests):
            await asyncio.sleep(rng.uniform(0.1, GOP / FPS))  # any point of the GOP
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            status, headers, body = await http_get(port, path)
            t1, c1 = time.perf_counter(), cpu_seconds(pid)
            assert status == 200, (status, body[:200])
            shown = drawn(body)
            latency.append((t1 - t0) * 1000)
            cpu.append((c1 - c0) * 1000)
            age.append(float(headers["x-cxrelay-age"]) * 1000)
            if shown is not None:
                behind.append(watcher.newest - shown)
        results["cxrelay"] = summary(latency, age, behind)
        results["jpeg_bytes"] = len(body)

        cold = []
        for gop in watcher.gops[-3:]:
            t0 = time.perf_counter()
            await asyncio.to_thread(cold_jpeg, watcher.codec, gop)
            cold.append((time.perf_counter() - t0) * 1000)
        results["cold_gop_decode_ms"] = {"p50": pct(cold, 50), "max": max(cold, default=0),
                                         "frames": GOP}

        latency, age = [], []
        for _ in range(max(5, requests // 3)):
            await asyncio.sleep(rng.uniform(0.1, GOP / FPS))  # any point of the GOP
            t0 = time.perf_counter()
            key = await watcher.next_keyframe()
            await asyncio.to_thread(keyframe_jpeg, watcher.codec, key)
            latency.append((time.perf_counter() - t0) * 1000)
            age.append(time.time() * 1000 - int.from_bytes(key[9:17], "big") / 1000)
        results["keyframe_wait"] = summary(latency, age, [])

        one_cpu = pct(cpu, 50)
        rows = []
        for _ in range(bursts):
            await asyncio.sleep(rng.uniform(0.5, 1.0))
            d0, c0, t0 = await decodes(port), cpu_seconds(pid), time.perf_counter()

            async def timed(started: float) -> float:
                status, _, _ = await http_get(port, path)
                assert status == 200
                return (time.perf_counter() - started) * 1000

            times = await asyncio.gather(*(timed(t0) for _ in range(burst)))
            c1, d1 = cpu_seconds(pid), await decodes(port)
            rows.append((pct(list(times), 50), max(times), (c1 - c0) * 1000, d1 - d0))
        results["burst"] = {
            "requests": burst,
            "latency_p50_ms": pct([r[0] for r in rows], 50),
            "latency_max_ms": pct([r[1] for r in rows], 50),
            "cpu_ms": pct([r[2] for r in rows], 50),
            "decodes": pct([r[3] for r in rows], 50),
            "one_request_cpu_ms": one_cpu,
        }
        _, _, body = await http_get(port, "/api/cameras")
        results["camera_fps"] = json.loads(body)[0]["fps"]
        _, _, body = await http_get(port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith("cxrelay_camera_keyframe_interval_seconds{"):
                results["keyframe_interval_s"] = float(line.split()[-1])
        task.cancel()
        return results
    finally:
        await asyncio.to_thread(relay.stop)
        await asyncio.to_thread(camera.stop)


def summary(latency: list[float], age: list[float], behind: list[float]) -> dict[str, Any]:
    return {
        "n": len(latency),
        "latency_ms": {"p50": pct(latency, 50), "p90": pct(latency, 90), "max": max(latency)},
        "age_ms": {"p50": pct(age, 50), "p90": pct(age, 90), "max": max(age)},
        "frames_behind": {"p50": pct(behind, 50), "max": max(behind)} if behind else None,
    }


def table(all_results: list[dict[str, Any]]) -> str:
    out = [
        "| size | method | request → JPEG p50 / p90 / max | picture age p50 / p90 | "
        "frames behind p50 / max |",
        "|---|---|---:|---:|---:|",
    ]
    for r in all_results:
        for key, label in (("cxrelay", "cxrelay snapshot"),
                           ("keyframe_wait", "baseline: wait for the next keyframe")):
            s = r[key]
            lat, age, behind = s["latency_ms"], s["age_ms"], s["frames_behind"]
            out.append(
                f"| {r['size']} | {label} | {lat['p50']:.0f} / {lat['p90']:.0f} / "
                f"{lat['max']:.0f} ms | {age['p50']:.0f} / {age['p90']:.0f} ms | "
                + (f"{behind['p50']:.0f} / {behind['max']:.0f} |" if behind else "- |"))
        wait = r["keyframe_wait"]["latency_ms"]["p50"]
        ratio = wait / max(0.1, r["cxrelay"]["latency_ms"]["p50"])
        out.append(f"| {r['size']} | ratio baseline / cxrelay (p50) | {ratio:.0f}x | | |")
    out += ["", "| size | camera as the relay saw it | cold snapshot: decode a whole GOP + "
            "JPEG (p50 / max) | JPEG size |", "|---|---|---:|---:|"]
    for r in all_results:
        c = r["cold_gop_decode_ms"]
        out.append(f"| {r['size']} | {r.get('camera_fps') or 0:.1f} fps, keyframe every "
                   f"{r.get('keyframe_interval_s', float('nan')):.1f} s "
                   f"| {c['p50']:.0f} / {c['max']:.0f} ms ({c['frames']} frames) "
                   f"| {r['jpeg_bytes'] / 1024:.0f} KiB |")
    out += ["", "| size | burst of N at once: request → JPEG p50 / max | relay CPU for the burst"
            " | decodes | relay CPU for one request |", "|---|---:|---:|---:|---:|"]
    for r in all_results:
        b = r["burst"]
        out.append(f"| {r['size']} | {b['requests']}: {b['latency_p50_ms']:.0f} / "
                   f"{b['latency_max_ms']:.0f} ms | {b['cpu_ms']:.0f} ms | {b['decodes']:.0f} | "
                   f"{b['one_request_cpu_ms']:.0f} ms |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1920x1080")
    parser.add_argument("--requests", type=int, default=30, help="single requests per size")
    parser.add_argument("--burst", type=int, default=20, help="requests at once")
    parser.add_argument("--bursts", type=int, default=5, help="bursts per size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for size in args.sizes.split(","):
        width, height = (int(x) for x in size.split("x"))
        results.append(asyncio.run(measure(width, height, args.requests, args.burst,
                                           args.bursts)))
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
