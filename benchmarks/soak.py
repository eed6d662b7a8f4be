#!/usr/bin/env python3
"""Soak: a relay under steady abuse for a long while (issue 14's "done when").

Runs `cxrelay serve` as a subprocess with one demo camera (640x360, 25 fps,
1.5 Mbit/s, encoded in the relay: a live camera without RTSP) and, for
``--minutes`` (30 by default), all at once:

- 5 steady viewers, which must lose no frame: the demo camera's timestamps
  go up one frame at a time, so a gap, a step back or a discontinuity flag is
  a lost frame;
- churn, about 20 connections a second: viewers that join and leave after
  their first frame, plain requests (/healthz, /api/cameras, /metrics, the
  player), requests that stop halfway and hang up after 1-3 s, upgrades cut
  right after they are sent;
- a ping flooder: a viewer that floods pings and never reads (the relay
  closes it; it comes back a second later, for the whole soak);
- 20 stalled viewers: upgraded, then never read (the relay drops them after
  drain_timeout; each is replaced as soon as it is gone);
- SIGHUP every ``--hup-every`` seconds, adding or removing a second camera;
- with ``--hogs N``, N processes that burn CPU in bursts (busy, then idle, for
  0.2 to 2 s each, at random): a box briefly starved by other work, which must
  not cost the steady viewers a frame.

Every ``--sample-every`` seconds it prints the relay's resident memory, open
file descriptors, CPU and what it has seen. At the end it compares the last
third of the run with the first (after a warm-up): memory and descriptors
must be flat, the steady viewers must have lost nothing, and SIGTERM must
stop the relay; it exits non-zero otherwise.

    .venv/bin/python benchmarks/soak.py                 # 30 minutes
    .venv/bin/python benchmarks/soak.py --minutes 3     # a quick look
    .venv/bin/python benchmarks/soak.py --json
    .venv/bin/python benchmarks/soak.py --minutes 10 --hogs 4 --baseline /tmp/base

This is a benchmark, not a test: it takes half an hour and its numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from fanout import cpu_times, rss_mib  # noqa: E402
from snapshot import pct  # noqa: E402

from cxrelay.protocol import FLAG_CATCHUP, FLAG_DISCONTINUITY, HEADER  # noqa: E402
from tests.support import free_port, stalled_client  # noqa: E402

FPS = 25
FRAME_US = 1_000_000 // FPS
CAMERA = f"demo://?size=640x360&fps={FPS}"
WARMUP = 60.0  # seconds before the first sample that counts
MEMORY_GROWTH_MIB = 16.0  # last third against the first, at most
DESCRIPTOR_GROWTH = 40  # likewise (connections come and go: compare the peaks)
TCP_ESTABLISHED = 1
STALLED_LIFE = 32.0  # seconds: just past the relay's drain_timeout (30 s)


@dataclass
class Tally:
    frames: int = 0
    lost: int = 0
    disconnected: int = 0
    churn: dict[str, int] = field(default_factory=dict)
    churn_failed: int = 0
    stalled_replaced: int = 0
    floods: int = 0
    pings_sent: int = 0
    hups: int = 0
    latency_ms: list[tuple[float, float]] = field(default_factory=list)  # (t, ms)
    # The soak's own event loop running late: past a second, its steady viewers
    # fall behind through no fault of the relay's (a machine short of CPU).
    own_lag_over_1s: int = 0
    own_lag_max: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)

    def count(self, kind: str) -> None:
        self.churn[kind] = self.churn.get(kind, 0) + 1


def config_text(extra: bool) -> str:
    text = f'[[camera]]\nname = "cam"\nurl = "{CAMERA}"\n'
    if extra:  # on demand: a reload adds and removes it, nobody watches it
        text += '[[camera]]\nname = "extra"\nurl = "demo://?size=160x90"\non_demand = true\n'
    return text


# --- the steady viewers -----------------------------------------------------------------------


async def steady(port: int, stop: asyncio.Event, tally: Tally, started: float) -> None:
    """One viewer that must see every frame, in order, for the whole soak."""
    async with connect(f"ws://127.0.0.1:{port}/ws/cam", max_size=None, compression=None,
                       open_timeout=30) as ws:
        last: int | None = None
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.recv(), 5)
            except TimeoutError:
                continue
            except ConnectionClosed:
                tally.disconnected += 1
                return
            if isinstance(message, str):
                continue
            flags, pts_us, ingest_us = HEADER.unpack_from(message)
            if last is not None:  # (the first frame of a camera just started is flagged too)
                step = pts_us - last
                if step != FRAME_US:
                    tally.lost += max(1, step // FRAME_US - 1)
                elif flags & FLAG_DISCONTINUITY:
                    tally.lost += 1
            last = pts_us
            tally.frames += 1
            if not flags & FLAG_CATCHUP and tally.frames % 10 == 0:
                now = time.time()
                tally.latency_ms.append((time.monotonic() - started,
                                         (now - ingest_us / 1e6) * 1000))


async def own_lag(stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        due = time.monotonic() + 0.1
        await asyncio.sleep(0.1)
        late = time.monotonic() - due
        tally.own_lag_max = max(tally.own_lag_max, late)
        tally.own_lag_over_1s += late > 1.0


# --- churn ------------------------------------------------------------------------------------

UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def one_churn(port: int, tally: Tally) -> None:
    kind = random.choices(["viewer", "http", "half", "cut"], [6, 2, 1, 1])[0]
    try:
        if kind == "viewer":
            async with connect(f"ws://127.0.0.1:{port}/ws/cam", max_size=None,
                               compression=None, open_timeout=20) as ws:
                async with asyncio.timeout(20):
                    while isinstance(await ws.recv(), str):
                        pass
        elif kind == "http":
            path = random.choice(["/healthz", "/api/cameras", "/metrics", "/cxrelay.js",
                                  "/ws/cam", "/nope"])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            async with asyncio.timeout(20):
                await reader.read()
            writer.close()
        elif kind == "half":
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /ws/cam HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await asyncio.sleep(random.uniform(1, 3))
            writer.close()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /ws/cam HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE}\r\n".encode())
            await writer.drain()
            writer.transport.abort()
        tally.count(kind)
    except (OSError, TimeoutError, ConnectionClosed, asyncio.IncompleteReadError):
        tally.churn_failed += 1


async def churn(port: int, rate: float, stop: asyncio.Event, tally: Tally) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        task = asyncio.create_task(one_churn(port, tally))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(random.expovariate(rate))
    await asyncio.gather(*tasks)


# --- the ping flooder (a thread: it blocks in sendall when the relay stops reading) -----------


def flooder(port: int, stop: threading.Event, tally: Tally) -> None:
    ping = b"\x89\xfd" + bytes(4) + bytes(125)  # masked, the largest payload
    batch = ping * 500
    while not stop.is_set():
        try:
            s = stalled_client(port, "cam")
        except OSError:
            stop.wait(1)
            continue
        tally.floods += 1
        s.settimeout(1.0)
        try:
            while not stop.is_set():
                try:
                    s.sendall(batch)
                    tally.pings_sent += 500
                except TimeoutError:
                    continue
        except OSError:
            pass  # closed by the relay: come back
        finally:
            s.close()
        stop.wait(1)


# --- stalled viewers --------------------------------------------------------------------------


def established(s: socket.socket) -> bool:
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return struct.unpack("B", info[:1])[0] == TCP_ESTABLISHED


async def stalled(port: int, count: int, stop: asyncio.Event, tally: Tally) -> None:
    """``count`` viewers that never read, at all times. The relay closes each
    after drain_timeout (30 s); its FIN then waits behind the unread video
    for a window that never opens, so the socket here still looks
    established: each is replaced after STALLED_LIFE instead."""
    held = [(stalled_client(port, "cam"), time.monotonic()) for _ in range(count)]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1)
        now = time.monotonic()
        for i, (s, since) in enumerate(held):
            if now - since > STALLED_LIFE or not established(s):
                s.close()
                held[i] = (stalled_client(port, "cam"), now)
                tally.stalled_replaced += 1
    for s, _ in held:
        s.close()


# --- other work on the box -------------------------------------------------------------------

# Busy, then idle, for 0.2 to 2 s each: the machine is starved now and then, as
# by other processes' bursts, not short of CPU for the relay's steady work.
# Each ends when the soak does, however it ends.
HOG = """
import os, random, time
parent = os.getppid()
while os.getppid() == parent:
    end = time.monotonic() + random.uniform(0.2, 2)
    while time.monotonic() < end:
        pass
    time.sleep(random.uniform(0.2, 2))
"""


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]


# --- the relay --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def healthz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return {}


def relay_loop_lags(port: int) -> tuple[float, float]:
    """How many times the relay's loop ran a timer over 0.25 s and over 1 s late."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return float("nan"), float("nan")
    buckets = {}
    for line in text.splitlines():
        if line.startswith("cxrelay_loop_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0)
    return total - buckets.get("0.25", total), total - buckets.get("1.0", total)


def metric_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def counter(text: str, name: str, labels: str) -> float:
    prefix = f"{name}{{{labels}}} "
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def bucket_quantile(text: str, name: str, q: float) -> float:
    """The bucket bound (seconds) below which ``q`` of a histogram's observations fall."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    return next((le for le, n in buckets if total and n >= q * total), float("nan"))


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def hups(proc: subprocess.Popen[bytes], config: Path, every: float,
               stop: asyncio.Event, tally: Tally) -> None:
    extra = False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        extra = not extra
        await asyncio.to_thread(config.write_text, config_text(extra))
        proc.send_signal(signal.SIGHUP)
        tally.hups += 1


async def sampler(pid: int, port: int, every: float, stop: asyncio.Event, tally: Tally,
                  started: float, quiet: bool) -> None:
    last_cpu, last_t = cpu_seconds(pid), time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        now = time.monotonic()
        cpu = cpu_seconds(pid)
        health = await asyncio.to_thread(healthz, port)
        lag_250ms, lag_1s = await asyncio.to_thread(relay_loop_lags, port)
        sample = {"t": round(now - started, 1), "rss_mib": round(rss_mib(pid), 1),
                  "fds": descriptors(pid),
                  "cpu_percent": round((cpu - last_cpu) / (now - last_t) * 100, 1),
                  "viewers": health.get("viewers", -1), "frames": tally.frames,
                  "lost": tally.lost, "relay_lag_over_250ms": lag_250ms,
                  "relay_lag_over_1s": lag_1s, "own_lag_over_1s": tally.own_lag_over_1s}
        last_cpu, last_t = cpu, now
        tally.samples.append(sample)
        if not quiet:
            print(" ".join(f"{k}={v}" for k, v in sample.items()), flush=True)


def start_relay(config: Path, log: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # From `root`: `-m` imports the cxrelay there first (another version, --baseline).
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrelay", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port), "--log-format", "json"],
        stdout=log.open("wb"), stderr=subprocess.PIPE, cwd=root)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the relay did not come up")


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


# --- verdict ----------------------------------------------------------------------------------


def thirds(samples: list[dict[str, float]], key: str) -> tuple[float, float]:
    """The peak of ``key`` in the first third of the samples after the
    warm-up, and in the last third."""
    counted = [s for s in samples if s["t"] >= WARMUP] or samples
    third = max(1, len(counted) // 3)
    return max(s[key] for s in counted[:third]), max(s[key] for s in counted[-third:])


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="cxrelay-soak-") as tmp:
        config, log = Path(tmp) / "cxrelay.toml", Path(tmp) / "relay.log"
        config.write_text(config_text(False))
        proc, port = start_relay(config, log, args.baseline or ROOT)
        hogs = start_hogs(args.hogs)
        started = time.monotonic()
        stop = asyncio.Event()
        flood_stop = threading.Event()
        flood = threading.Thread(target=flooder, args=(port, flood_stop, tally), daemon=True)
        tasks = [asyncio.create_task(steady(port, stop, tally, started))
                 for _ in range(args.steady)]
        tasks.append(asyncio.create_task(own_lag(stop, tally)))
        await asyncio.sleep(2)
        flood.start()
        tasks += [asyncio.create_task(churn(port, args.churn, stop, tally)),
                  asyncio.create_task(stalled(port, args.stalled, stop, tally)),
                  asyncio.create_task(hups(proc, config, args.hup_every, stop, tally)),
                  asyncio.create_task(sampler(proc.pid, port, args.sample_every, stop, tally,
                                              started, args.json))]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), args.minutes * 60)
        stop.set()
        flood_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(flood.join, 10)
        for hog in hogs:
            hog.kill()
            hog.wait()
        metrics = await asyncio.to_thread(metric_text, port)
        alive = proc.poll() is None
        sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        stop_seconds = time.monotonic() - sigterm
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        events = log_events(log)
        if args.keep_log:
            args.keep_log.write_bytes(log.read_bytes())
    steady_ids = [e["viewer"] for e in events if e["event"] == "viewer joined"][:args.steady]
    steady_drops = sum(e.get("frames", 0) for e in events
                       if e["event"] == "frames dropped" and e.get("viewer") in steady_ids)
    link_slow = [e for e in events if e["event"].startswith("link slow")]
    steady_slow = sum(1 for e in link_slow if e.get("viewer") in steady_ids)
    behind = [e for e in events if e["event"].startswith("relay behind")]
    reloads = [e for e in events if e["event"] == "reloaded"]
    rejected = [e for e in events if e["event"].startswith("reload rejected")]
    closed = [e for e in events if e["event"] == "viewer closed"]
    rss = thirds(tally.samples, "rss_mib")
    fds = thirds(tally.samples, "fds")
    early = [ms for t, ms in tally.latency_ms if t < args.minutes * 20]
    late = [ms for t, ms in tally.latency_ms if t >= args.minutes * 40]
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "relay_alive_at_end": alive,
        "steady_viewers": args.steady,
        "steady_frames": tally.frames,
        "steady_frames_lost": tally.lost,
        "steady_disconnected": tally.disconnected,
        "steady_frames_dropped_by_relay": steady_drops,
        "steady_link_slow_events": steady_slow,
        # The relay skipping every viewer to the next keyframe, itself too far behind.
        "relay_behind_events": len(behind),
        "relay_behind_ms_max": max((e.get("behind_ms", 0) for e in behind), default=0),
        "relay_busy_frames_dropped": counter(metrics, "cxrelay_frames_dropped_total",
                                             'reason="relay_busy"'),
        "link_slow_events_all_viewers": len(link_slow),
        "link_slow_kbps_zero": sum(1 for e in link_slow if e.get("link_kbps") == 0),
        # Bucket bounds, in ms: the loop's lag, and the part of it not spent waiting for a CPU.
        "relay_loop_lag_ms_p50_p99": [
            bucket_quantile(metrics, "cxrelay_loop_lag_seconds", q) * 1000 for q in (0.5, 0.99)],
        "relay_loop_lag_own_ms_p50_p99": [
            bucket_quantile(metrics, "cxrelay_loop_lag_own_seconds", q) * 1000
            for q in (0.5, 0.99)],
        "hogs": args.hogs,
        "soak_loop_late_over_1s": tally.own_lag_over_1s,
        "soak_loop_late_max_s": round(tally.own_lag_max, 2),
        "relay_loop_late_over_250ms": tally.samples[-1]["relay_lag_over_250ms"]
        if tally.samples else None,
        "relay_loop_late_over_1s": tally.samples[-1]["relay_lag_over_1s"]
        if tally.samples else None,
        "churn_connections": sum(tally.churn.values()),
        "churn_by_kind": tally.churn,
        "churn_per_second": round(sum(tally.churn.values()) / (args.minutes * 60), 1),
        "churn_failed": tally.churn_failed,
        "stalled_replaced": tally.stalled_replaced,
        "flooder_connections": tally.floods,
        "pings_flooded": tally.pings_sent,
        "viewers_closed_by_relay": {r: sum(1 for e in closed if e.get("reason", "").startswith(r))
                                    for r in sorted({e.get("reason", "").split(":")[0]
                                                     for e in closed})},
        "sighups": tally.hups,
        "reloads_logged": len(reloads),
        "reloads_rejected": len(rejected),
        "rss_mib_start_end": [tally.samples[0]["rss_mib"], tally.samples[-1]["rss_mib"]]
        if tally.samples else None,
        "fds_start_end": [tally.samples[0]["fds"], tally.samples[-1]["fds"]]
        if tally.samples else None,
        "rss_mib_peak_first_third": rss[0],
        "rss_mib_peak_last_third": rss[1],
        "fds_peak_first_third": fds[0],
        "fds_peak_last_third": fds[1],
        "cpu_percent_median": pct([s["cpu_percent"] for s in tally.samples], 50),
        "latency_ms_first_third_p50_p99": [round(pct(early, 50), 2), round(pct(early, 99), 2)],
        "latency_ms_last_third_p50_p99": [round(pct(late, 50), 2), round(pct(late, 99), 2)],
        "sigterm_exit_code": code,
        "sigterm_seconds": round(stop_seconds, 2),
        "stderr_lines": len(err.splitlines()),
    }
    failures = []
    if not alive:
        failures.append("the relay died")
    if tally.lost or tally.disconnected:
        failures.append(f"steady viewers lost {tally.lost} frames, {tally.disconnected} "
                        "were disconnected")
    if tally.frames < args.steady * FPS * args.minutes * 60 * 0.95:
        failures.append("steady viewers got too few frames")
    if rss[1] - rss[0] > MEMORY_GROWTH_MIB:
        failures.append(f"memory grew {rss[1] - rss[0]:.1f} MiB")
    if fds[1] - fds[0] > DESCRIPTOR_GROWTH:
        failures.append(f"descriptors grew by {fds[1] - fds[0]:g}")
    if rejected or len(reloads) < tally.hups:
        failures.append(f"{len(reloads)} reloads logged for {tally.hups} SIGHUPs")
    if code != 0 or stop_seconds >= 5:
        failures.append(f"SIGTERM: exit {code} after {stop_seconds:.2f} s")
    if "Traceback" in err:
        failures.append("a traceback on stderr")
    result["failures"] = failures
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--churn", type=float, default=20, help="connections a second")
    parser.add_argument("--steady", type=int, default=5)
    parser.add_argument("--stalled", type=int, default=20)
    parser.add_argument("--hup-every", type=float, default=60)
    parser.add_argument("--sample-every", type=float, default=30)
    parser.add_argument("--hogs", type=int, default=0,
                        help="processes burning CPU in bursts (a briefly starved box)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="run the relay of another cxrelay checkout")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-log", type=Path, metavar="FILE",
                        help="keep the relay's JSON log there")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("| measure | value |\n|---|---|")
        for key, value in result.items():
            print(f"| {key} | {value} |")
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
