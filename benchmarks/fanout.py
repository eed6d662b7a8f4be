#!/usr/bin/env python3
"""Fan-out benchmark: one camera, many viewers, some of them stalled.

Runs `cxrelay serve` as a subprocess on a recorded file (looped in real time,
like a live camera), connects N reading viewers and S viewers that never read,
and prints, for the relay process: CPU (% of one core), resident memory at
the start and the end of the window, and the relay latency the reading viewers
see (receive time minus the ingest time in each frame's header), p50/p90/p99.

    .venv/bin/python benchmarks/fanout.py --viewers 50 --stalled 5 --seconds 20

This is a benchmark, not a test: numbers depend on the machine. Compare runs
on the same machine, and read ratios rather than absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port, stalled_client  # noqa: E402

DEFAULT_FILE = ROOT / "tests" / "data" / "baseline.h264"
HEADER = 17


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def reader(url: str, stop: asyncio.Event, delays: list[float], counts: list[int]) -> None:
    async with connect(url, compression=None, max_size=None) as ws:
        frames = 0
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            if isinstance(message, bytes) and not message[0] & 0x02:  # skip catch-up
                ingest_us = int.from_bytes(message[9:17], "big")
                delays.append(time.time() * 1000 - ingest_us / 1000)
                frames += 1
        counts.append(frames)


def start_relay(file: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrelay", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--camera", f"bench={file}", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1.0)
    return proc, port


async def measure(pid: int, port: int, args: argparse.Namespace) -> dict[str, object]:
    stop = asyncio.Event()
    delays: list[float] = []
    counts: list[int] = []
    url = f"ws://127.0.0.1:{port}/ws/bench"
    tasks = [asyncio.create_task(reader(url, stop, delays, counts)) for _ in range(args.viewers)]
    stalled = [stalled_client(port, "bench") for _ in range(args.stalled)]
    await asyncio.sleep(2.0)  # joins and catch-up bursts are not the steady state
    delays.clear()
    rss_start, cpu_start, t0 = rss_mib(pid), cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu = (cpu_seconds(pid) - cpu_start) / (time.monotonic() - t0) * 100
    rss_end = rss_mib(pid)
    stop.set()
    await asyncio.gather(*tasks)
    for s in stalled:
        s.close()
    return {
        "viewers": args.viewers,
        "stalled": args.stalled,
        "seconds": args.seconds,
        "relay_cpu_percent": round(cpu, 1),
        "relay_rss_mib_start": round(rss_start, 1),
        "relay_rss_mib_end": round(rss_end, 1),
        "latency_ms_p50": round(pct(delays, 50), 2),
        "latency_ms_p90": round(pct(delays, 90), 2),
        "latency_ms_p99": round(pct(delays, 99), 2),
        "frames_per_viewer_min": min(counts) if counts else 0,
        "frames_per_viewer_mean": round(statistics.mean(counts), 1) if counts else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--stalled", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    proc, port = start_relay(args.file)
    try:
        result = asyncio.run(measure(proc.pid, port, args))
    finally:
        proc.terminate()
        proc.wait(10)
    if args.json:
        print(json.dumps(result))
        return
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
