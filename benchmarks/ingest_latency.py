#!/usr/bin/env python3
"""Ingest latency: how long after the camera stamps a picture is it in a reader's hands?

Starts the stamped GStreamer test camera (tests/camera/rtsp_camera.py) and reads it, one
reader after the other, for --seconds each:

  a  GStreamer's own client (rtspsrc latency=0, units cut at the RTP marker bit)
  b  PyAV with default options (FFmpeg's parser assembles the access units)
  c  PyAV with fflags=+noparse+nofillin (RTP payloads as they come; a unit is in hand
     when the last packet of its picture has arrived)
  d  cxrelay's WebSocket output (`python3 -m cxrelay serve`), one viewer
     (d' and d": the ingest time in each message's header against the stamp, and
     the relay's own part: message in hand - ingest time; d also the relay's CPU)
  e  the same from another checkout of cxrelay (--baseline DIR): before/after in one run

Each sample is (wall clock when the unit is in hand) - (wall clock the camera wrote into
the unit's stamp SEI just before payloading it). Prints a Markdown table, or --json. For
cxrelay (d, e) it also reads the relay's /metrics: pictures its ingest dropped as partial
or corrupt (a picture cut short by an early idle flush shows up there: the rest of its
last NAL unit arrives as orphan bytes).

    # the idle flush on a loaded machine: small packets (FU-A), busy loops beside it
    flock /work/bench.lock nice .venv/bin/python benchmarks/ingest_latency.py \
        --mtu 500 --baseline /tmp/base --rows dede

    .venv/bin/python benchmarks/ingest_latency.py --seconds 20
    git archive main | tar -x -C /tmp/base    # then, interleaved:
    .venv/bin/python benchmarks/ingest_latency.py --baseline /tmp/base --rows dede

A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.camera.stamp import count_slices, find_stamps  # noqa: E402
from tests.support import free_port  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
WS_HEADER = 17
ROWS = "abcd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def now_us() -> int:
    return time.time_ns() // 1000


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Recorder:
    """Collects (arrival - stamp) per stamped unit, after a warm-up period.

    The warm-up drops the start of each session: clients probe the stream for a while
    (FFmpeg's find_stream_info) and then drain what queued up meanwhile, which says
    nothing about steady-state delay.
    """

    slices: int
    warmup_s: float
    delays_us: list[int] = field(default_factory=list)
    split: int = 0  # stamped units whose packet/message lacks some of the picture's slices
    merged: int = 0  # packets/messages holding more than one stamp
    units: int = 0
    first_at: float | None = None

    def warming_up(self) -> bool:
        if self.first_at is None:
            self.first_at = time.monotonic()
        return time.monotonic() - self.first_at < self.warmup_s

    def unit(self, arrival_us: int, data: bytes) -> None:
        """One packet/message that should be one whole access unit."""
        if self.warming_up():
            return
        stamps = find_stamps(data)
        if len(stamps) > 1:
            self.merged += 1
        if not stamps:
            return
        self.units += 1
        if count_slices(data) < self.slices:
            self.split += 1
        self.delays_us.append(arrival_us - stamps[0][0])

    def delay(self, delay_us: int) -> None:
        """A delay measured some other way (not against the camera's stamp)."""
        if not self.warming_up():
            self.units += 1
            self.delays_us.append(delay_us)

    def assembled(self, arrival_us: int, data: bytes, pieces: int) -> None:
        """A unit the reader put together from `pieces` packets; in hand at arrival_us."""
        if self.warming_up():
            return
        stamps = find_stamps(data)
        if not stamps:
            return
        self.units += 1
        if pieces > 1:
            self.split += 1
        self.delays_us.append(arrival_us - stamps[0][0])


@dataclass
class Row:
    reader: str
    samples: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    split: int = 0
    merged: int = 0
    error: str | None = None
    cpu_pct: float | None = None  # the relay's CPU (user + system) while read, % of one core
    ingest_drops: int | None = None  # cxrelay's pictures dropped as partial or corrupt
    whole_units: bool = True  # its samples are units (for the split/merged table)

    @classmethod
    def of(cls, reader: str, recorder: Recorder) -> Row:
        ordered = sorted(recorder.delays_us)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1000, 1)

        return cls(
            reader=reader,
            samples=len(ordered),
            p50_ms=pct(50),
            p90_ms=pct(90),
            p99_ms=pct(99),
            split=recorder.split,
            merged=recorder.merged,
            error=None if ordered else "no stamped unit received",
        )


# -- a: GStreamer client (runs in a /usr/bin/python3 subprocess) -------------------------


def gst_client(url: str, seconds: float, slices: int, warmup: float) -> None:
    """Read with rtspsrc and print the Recorder as JSON (this is the subprocess side)."""
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import GLib, Gst

    Gst.init(None)
    recorder = Recorder(slices, warmup)
    pipeline = Gst.parse_launch(
        f"rtspsrc location={url} latency=0 protocols=tcp ! rtph264depay ! "
        "video/x-h264,stream-format=byte-stream,alignment=au ! "
        "appsink name=sink sync=false emit-signals=true max-buffers=100"
    )
    loop = GLib.MainLoop()

    def on_sample(sink: Any) -> Any:
        sample = sink.emit("pull-sample")
        arrival = now_us()
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(info.data)
            buf.unmap(info)
            recorder.unit(arrival, data)
        return Gst.FlowReturn.OK

    def on_error(_bus: Any, message: Any) -> None:
        error, _ = message.parse_error()
        print(json.dumps({"error": error.message}), flush=True)
        loop.quit()

    pipeline.get_by_name("sink").connect("new-sample", on_sample)
    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message::error", on_error)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int((seconds + warmup) * 1000), loop.quit)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    print(json.dumps(asdict(recorder)), flush=True)


def run_gst(url: str, args: argparse.Namespace) -> Row:
    name = "a. GStreamer rtspsrc latency=0 (AU at marker bit)"
    command = [
        SYSTEM_PYTHON, __file__, "--gst-client", url, "--seconds", str(args.seconds),
        "--slices", str(args.slices), "--warmup", str(args.warmup),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.seconds + args.warmup + 30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Row(name, error=f"GStreamer client failed: {exc}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        return Row(name, error=f"GStreamer client: no output; {done.stderr.strip()[-300:]}")
    result = json.loads(lines[-1])
    if "error" in result:
        return Row(name, error=f"GStreamer client: {result['error']}")
    recorder = Recorder(args.slices, args.warmup)
    for key in ("delays_us", "split", "merged", "units"):
        setattr(recorder, key, result[key])
    return Row.of(name, recorder)


# -- b, c: PyAV --------------------------------------------------------------------------


def open_av(url: str, options: dict[str, str]) -> Any:
    import av

    return av.open(url, options={"rtsp_transport": "tcp", **options}, timeout=(10, 10))


def run_pyav_default(url: str, args: argparse.Namespace) -> Row:
    name = "b. PyAV defaults (FFmpeg parser)"
    recorder = Recorder(args.slices, args.warmup)
    try:
        with open_av(url, {}) as container:
            stream = container.streams.video[0]
            deadline = time.monotonic() + args.seconds + args.warmup
            for packet in container.demux(stream):
                arrival = now_us()
                if packet.size:
                    recorder.unit(arrival, bytes(packet))
                if time.monotonic() > deadline:
                    break
    except Exception as exc:  # a benchmark row reports its failure and the others go on
        return Row(name, error=f"{type(exc).__name__}: {exc}")
    return Row.of(name, recorder)


def run_pyav_noparse(url: str, args: argparse.Namespace) -> Row:
    """Packets are RTP payloads (whole NAL units, STAP-A groups or FU-A fragments); the
    unit is in hand when the last packet with its timestamp has arrived, which we only
    learn when the next picture's first packet comes: record that last arrival time."""
    name = "c. PyAV fflags=+noparse+nofillin (last slice in)"
    recorder = Recorder(args.slices, args.warmup)
    pending: list[bytes] = []
    pending_pts: int | None = None
    last_arrival = 0
    try:
        with open_av(url, {"fflags": "+noparse+nofillin"}) as container:
            stream = container.streams.video[0]
            deadline = time.monotonic() + args.seconds + args.warmup
            for packet in container.demux(stream):
                arrival = now_us()
                if not packet.size:
                    continue
                if packet.pts != pending_pts and pending:
                    recorder.assembled(last_arrival, b"".join(pending), len(pending))
                    pending = []
                pending.append(bytes(packet))
                pending_pts, last_arrival = packet.pts, arrival
                if time.monotonic() > deadline:
                    break
    except Exception as exc:
        return Row(name, error=f"{type(exc).__name__}: {exc}")
    return Row.of(name, recorder)


# -- d: cxrelay ---------------------------------------------------------------------------


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """None once something accepts on the port, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.1)
    return f"not listening after {timeout:.0f} s"


async def read_relay(port: int, args: argparse.Namespace) -> tuple[Recorder, ...]:
    """Per binary message: (arrival - stamp), (header ingest time - stamp), and
    (arrival - header ingest time): the relay's own part, camera and network aside."""
    from websockets.asyncio.client import connect

    delivered = Recorder(args.slices, args.warmup)
    ingested = Recorder(args.slices, args.warmup)
    relayed = Recorder(args.slices, args.warmup)
    async with connect(f"ws://127.0.0.1:{port}/ws/bench", max_size=None) as ws:
        deadline: float | None = None
        while deadline is None or time.monotonic() < deadline:
            timeout = 15.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                break
            arrival = now_us()
            if isinstance(message, str):
                continue
            if deadline is None:  # the clock starts at the first picture
                deadline = time.monotonic() + args.seconds + args.warmup
            flags = message[0]
            if flags & 0x02:
                continue  # catch-up backlog for a joining viewer: old by design
            ingest_us = int.from_bytes(message[9:17], "big")
            unit = message[WS_HEADER:]
            delivered.unit(arrival, unit)
            ingested.unit(ingest_us, unit)
            relayed.delay(arrival - ingest_us)
    return delivered, ingested, relayed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def ingest_drops(port: int) -> int | None:
    """Pictures the relay's ingest dropped as partial or corrupt, from /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    pattern = r'^cxrelay_frames_dropped_total\{reason="(?:partial|corrupt)"\} (\S+)$'
    return round(sum(float(v) for v in re.findall(pattern, text, re.MULTILINE)))


def run_baseline(url: str, args: argparse.Namespace) -> list[Row]:
    if not args.baseline:
        return [Row("e. baseline", error="no --baseline DIR given")]
    return run_cxrelay(url, args, Path(args.baseline), "e", " [baseline]")


def run_cxrelay(url: str, args: argparse.Namespace, root: Path = ROOT, key: str = "d",
                label: str = "") -> list[Row]:
    """`python3 -m cxrelay` run in ``root``: that checkout's cxrelay package."""
    name = f"{key}. cxrelay WebSocket (message in hand){label}"
    port = free_port()
    command = [
        sys.executable, "-m", "cxrelay", "serve", "--camera", f"bench={url}",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(
            command, cwd=root, stdout=devnull, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
    try:
        problem = wait_listening(port, process, timeout=20)
        if problem is not None:
            return [Row(name, error=f"cxrelay not runnable: {problem}{tail(process)}")]
        try:
            cpu, started = cpu_seconds(process.pid), time.monotonic()
            delivered, ingested, relayed = asyncio.run(read_relay(port, args))
            cpu_pct = 100 * (cpu_seconds(process.pid) - cpu) / (time.monotonic() - started)
            drops = ingest_drops(port)
        except Exception as exc:
            return [Row(name, error=f"cxrelay: {type(exc).__name__}: {exc}")]
        ingest_row = Row.of(
            f"{key}'. cxrelay ingest time in the header (no network hop){label}", ingested)
        relay_row = Row.of(
            f"{key}\". cxrelay's own part: message in hand - ingest time{label}", relayed)
        relay_row.whole_units = False
        row = Row.of(name, delivered)
        row.cpu_pct = round(cpu_pct, 2)
        row.ingest_drops = drops
        return [row, ingest_row, relay_row]
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()


def tail(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None or process.stderr is None:
        return ""
    text = process.stderr.read().decode(errors="replace").strip()
    return f" ({text[-300:]})" if text else ""


# -- output -------------------------------------------------------------------------------


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Camera: {args.width}x{args.height} @ {args.fps} fps, {args.slices} slices, "
        f"MTU {args.mtu}, stamped; {args.seconds:g} s per reader after {args.warmup:g} s warm-up. "
        f"One frame = {1000 / args.fps:.0f} ms.",
        "",
        "| reader | p50 ms | p90 ms | p99 ms | samples | relay CPU % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.reader} | - | - | - | {row.error} | |")
        else:
            cpu = "" if row.cpu_pct is None else row.cpu_pct
            lines.append(f"| {row.reader} | {row.p50_ms} | {row.p90_ms} | {row.p99_ms} "
                         f"| {row.samples} | {cpu} |")
    lines += ["", "Units split in two (a stamped unit arriving as more than one packet/message):"]
    lines += [
        "",
        "| reader | split | merged (two stamps in one) | of units | ingest dropped |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.error and row.whole_units:
            dropped = "" if row.ingest_drops is None else row.ingest_drops
            lines.append(f"| {row.reader} | {row.split} | {row.merged} | {row.samples} "
                         f"| {dropped} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per reader")
    parser.add_argument("--warmup", type=float, default=2.0, help="dropped at each start")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--mtu", type=int, default=1400, help="the camera's RTP packet size")
    parser.add_argument("--rows", default=ROWS, help="which readers, in order, e.g. abc or dede")
    parser.add_argument("--baseline", metavar="DIR",
                        help="another checkout of cxrelay for row e (e.g. from git archive)")
    parser.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    parser.add_argument("--gst-client", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gst_client:
        gst_client(args.gst_client, args.seconds, args.slices, args.warmup)
        return 0
    from tests.camera.harness import RtspCamera

    readers: dict[str, Callable[[str, argparse.Namespace], Row | list[Row]]] = {
        "a": run_gst,
        "b": run_pyav_default,
        "c": run_pyav_noparse,
        "d": run_cxrelay,
        "e": run_baseline,
    }
    rows: list[Row] = []
    camera_options = {"width": args.width, "height": args.height, "fps": args.fps,
                      "mtu": args.mtu}
    with RtspCamera(**camera_options, gop=2 * args.fps, slices=args.slices, stamp=True) as cam:
        for key in args.rows:
            print(f"reading with {key} for {args.seconds + args.warmup:g} s", file=sys.stderr)
            result = readers[key](cam.url, args)
            rows.extend(result if isinstance(result, list) else [result])
    if args.json:
        print(json.dumps({"config": vars(args), "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
