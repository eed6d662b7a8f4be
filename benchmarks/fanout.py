#!/usr/bin/env python3
"""Fan-out benchmark: what the relay costs per message delivered, against the
floor (the least a program can do to send the same bytes), and against
another version of cxrelay, in one run.

For every load (cameras x viewers) and every target, one at a time:

- the target: ``new`` (this checkout's ``python -m cxrelay serve``), ``old``
  (the same from ``--baseline DIR``, e.g. ``git archive`` of an older commit),
  or ``floor`` (``fanout_floor.py``: Python on uvloop writing each frame's one
  bytes object to every viewer's transport, nothing else);
- its cameras: file cameras looping a 720p25 recording in real time (about
  1 MB/s), or RTSP sessions to the GStreamer test camera (``rtsp8``);
- the viewers: ``fanout_load.py`` processes, each reading only the headers and
  discarding the payload in the kernel (cheaper per message than the relay);
- after ``--warmup`` seconds, ``--seconds`` of measurement: the target's CPU
  (user + system, % of one core) and RSS, the load generator's CPU, every
  message's latency from the relay's ingest stamp to the viewer's hand
  (p50/p99/max), frames lost (gaps in each viewer's timestamps, and frames
  flagged as a discontinuity), viewers closed, and from a relay's /metrics its
  loop lag (``cxrelay_loop_lag_seconds``, and the part of it that was the
  relay's own work, not waiting for a CPU; new versions only) and drops.

CPU per message delivered (µs) = the target's CPU time / the messages the
viewers got; *vs floor* is that ratio. *Fan-out µs per message* leaves out
what the same target spends with the same cameras and no viewers (its ingest:
reading the file, assembling pictures), when that load ran too (``1x0``,
``32x0``): the floor has no ingest, it loads the file before it starts.
Targets interleave within a load (and ``--rounds`` repeat the whole set), so
each sees the same machine.

    .venv/bin/python benchmarks/fanout.py                        # the README's table
    .venv/bin/python benchmarks/fanout.py --loads 32x500 --seconds 20
    git archive <commit> | tar -x -C /tmp/base                   # an older version ...
    .venv/bin/python benchmarks/fanout.py --baseline /tmp/base --targets new,old,floor
    .venv/bin/python benchmarks/fanout.py --loads 32x500 --profile   # py-spy (pip install py-spy)

This is a benchmark, not a test: numbers depend on the machine and on what
else it runs. Compare within one run; read ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import free_port, stalled_client  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxrelay-bench"
DEFAULT_LOADS = "1x0,1x100,1x500,1x1000,32x0,32x500,32x2000,rtsp8"
BIN_US = 50  # fanout_load.py's latency histogram bins
FPS = 25  # the cameras' frame rate: what each viewer is offered


# --- the camera: a 720p25 recording of about 1 MB/s -----------------------------------------


def bench_file(seconds: int = 30) -> Path:
    """720p25, 8 Mbit/s, a keyframe every 2 s: made once with PyAV, then cached.
    Matroska, not raw H.264: a raw file needs FFmpeg's parser to be demuxed and
    a long probe at every loop, which would weigh more than the relay itself.
    (The lavfi source's frames come typed I, and libx264 makes every frame so
    typed a keyframe: untyped, x264 keeps to its GOP. Until this was known the
    recording was all keyframes: 720p25-8M-30s.mkv.)"""
    path = CACHE / f"720p25-8M-{seconds}s-gop50.mkv"
    if path.exists():
        return path
    import av

    CACHE.mkdir(parents=True, exist_ok=True)
    source = av.open(f"testsrc2=size=1280x720:rate=25:duration={seconds},noise=alls=12:allf=t+u",
                     format="lavfi")
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.bit_rate = 8_000_000
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "g": "50", "bf": "0",
                          "x264-params": "vbv-maxrate=8000:vbv-bufsize=4000:scenecut=0"}
        for frame in source.decode(video=0):
            picture = frame.reformat(format="yuv420p")
            picture.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    source.close()
    with av.open(str(tmp)) as check:
        keyframes = sum(p.is_keyframe for p in check.demux(video=0) if p.size)
    if keyframes > seconds // 2 + 1:
        raise SystemExit(f"{tmp}: {keyframes} keyframes in {seconds} s, not one every 2 s")
    tmp.rename(path)
    return path


# --- processes and what /proc says of them -----------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The process's next line of output, within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no answer in {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"exited ({proc.wait()})")
    return line


def wait_line(proc: subprocess.Popen[str], expected: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_line(proc, max(0.0, deadline - time.monotonic())).strip() != expected:
        pass


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


# --- targets ------------------------------------------------------------------------------------


@dataclass
class Load:
    cameras: int
    viewers: int
    rtsp: bool = False

    @classmethod
    def parse(cls, text: str) -> Load:
        if text.startswith("rtsp"):
            return cls(int(text[4:]), 0, rtsp=True)
        cameras, viewers = text.split("x")
        return cls(int(cameras), int(viewers))

    def __str__(self) -> str:
        if self.rtsp:
            return f"{self.cameras} RTSP cameras, no viewers"
        s = "s" if self.cameras > 1 else ""
        return f"{self.cameras} camera{s} x {self.viewers} viewers" if self.viewers else \
               f"{self.cameras} file camera{s}, no viewers"


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[str]
    port: int
    relay: bool

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_target(name: str, load: Load, args: argparse.Namespace, url: str) -> Target:
    port = free_port()
    names = [f"c{i}" for i in range(load.cameras)]
    if name == "floor":
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "fanout_floor.py"), "--port", str(port),
             "--cameras", str(load.cameras), "--file", url],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        target = Target(name, proc, port, relay=False)
        wait_line(proc, "READY", 60)
        return target
    root = ROOT if name == "new" else Path(args.baseline)
    cameras = [arg for n in names for arg in ("--camera", f"{n}={url}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrelay", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *cameras],
        cwd=root, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    target = Target(name, proc, port, relay=True)
    deadline = time.monotonic() + 60
    while True:  # listening, and every camera live
        try:
            states = [c["state"] for c in json.loads(http_get(port, "/api/cameras"))]
            if len(states) >= load.cameras and all(s == "live" for s in states):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            target.stop()
            raise RuntimeError(f"{name}: cameras not live in 60 s")
        time.sleep(0.5)
    if name == "new" and "cxrelay_loop_lag_seconds" not in http_get(port, "/metrics"):
        target.stop()
        raise RuntimeError("the new relay has no loop lag metric: is it this checkout?")
    return target


def start_viewers(target: Target, load: Load, procs: int) -> list[subprocess.Popen[str]]:
    names = ",".join(f"c{i}" for i in range(load.cameras))
    loaders: list[subprocess.Popen[str]] = []
    share, extra = divmod(load.viewers, procs)
    offset = 0
    for i in range(procs):
        count = share + (1 if i < extra else 0)
        if not count:
            continue
        loaders.append(subprocess.Popen(
            [sys.executable, str(HERE / "fanout_load.py"), "--port", str(target.port),
             "--cameras", names, "--viewers", str(count), "--offset", str(offset)],
            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        offset += count
    for loader in loaders:
        wait_line(loader, "READY", 180)
    return loaders


# --- one measurement ---------------------------------------------------------------------------


def metrics_values(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def histogram_delta(before: dict[str, float], after: dict[str, float],
                    name: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] for the window."""
    out = []
    for key, value in after.items():
        match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if match:
            out.append((float(match.group(1)), value - before.get(key, 0.0)))
    return sorted(out)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    for le, cumulative in buckets:
        if cumulative >= q * total:
            return le
    return None


@dataclass
class Result:
    load: str
    target: str
    cameras: int = 0
    viewers: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    rss_mib: float = 0.0
    messages: int = 0
    load_cpu: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    flagged: int = 0
    closed: int = 0
    relay_dropped: float | None = None  # slow_viewer: the viewer's own backlog or link
    relay_busy: float | None = None  # relay_busy: the relay's fan-out fell behind
    loadavg: str = ""  # the machine's 1-minute load average at the end of the run
    loop_lag_ms: dict[str, float | None] = field(default_factory=dict)
    profile: str | None = None
    error: str | None = None

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_system

    def us_per_message(self, seconds: float) -> float | None:
        return self.cpu / 100 * seconds / self.messages * 1e6 if self.messages else None


def measure(name: str, load: Load, url: str, args: argparse.Namespace) -> Result:
    target = start_target(name, load, args, url)
    loaders: list[subprocess.Popen[str]] = []
    stalled: list[socket.socket] = []
    result = Result(str(load), name, load.cameras, load.viewers)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        if load.viewers:
            loaders = start_viewers(target, load, args.procs)
        stalled += [stalled_client(target.port, f"c{i % load.cameras}")
                   for i in range(args.stalled if load.viewers else 0)]
        time.sleep(args.warmup)
        before = metrics_values(http_get(target.port, "/metrics")) if target.relay else {}
        pids = [target.proc.pid] + [p.pid for p in loaders]
        start = {pid: cpu_times(pid) for pid in pids}
        began = time.monotonic()
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write("start\n")
            loader.stdin.flush()
        if args.profile and name == "new":
            out = CACHE / f"profile-{load.cameras}x{load.viewers}{'-rtsp' if load.rtsp else ''}"
            result.profile = str(out.with_suffix(".txt"))
            profiler = subprocess.Popen(
                [args.py_spy, "record", "--pid", str(target.proc.pid), "--duration",
                 str(int(args.seconds)), "--rate", "200", "--nonblocking", "--gil",
                 "--format", "raw", "--output", result.profile], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        time.sleep(args.seconds)
        reports = []
        for loader in loaders:
            assert loader.stdin is not None and loader.stdout is not None
            loader.stdin.write("stop\n")
            loader.stdin.flush()
        elapsed = time.monotonic() - began
        end = {pid: cpu_times(pid) for pid in pids}
        result.rss_mib = round(rss_mib(target.proc.pid), 1)
        result.loadavg = Path("/proc/loadavg").read_text().split()[0]
        for loader in loaders:
            reports.append(json.loads(read_line(loader, 60)))
        user0, sys0 = start[target.proc.pid]
        user1, sys1 = end[target.proc.pid]
        result.cpu_user = (user1 - user0) / elapsed * 100
        result.cpu_system = (sys1 - sys0) / elapsed * 100
        result.load_cpu = sum(sum(end[p.pid]) - sum(start[p.pid]) for p in loaders) \
            / elapsed * 100
        result.messages = round(sum(r["messages"] for r in reports) * args.seconds / elapsed)
        result.lost = sum(r["lost"] for r in reports)
        result.flagged = sum(r["flagged"] for r in reports)
        result.closed = sum(r["closed"] for r in reports)
        histogram: dict[int, int] = {}
        for r in reports:
            for b, n in r["histogram"].items():
                histogram[int(b)] = histogram.get(int(b), 0) + n
        if histogram:
            total, cumulative = sum(histogram.values()), 0
            marks = {"p50": 0.5, "p99": 0.99}
            for b in sorted(histogram):
                cumulative += histogram[b]
                for key, q in list(marks.items()):
                    if cumulative >= q * total:
                        result.latency_ms[key] = (b + 1) * BIN_US / 1000
                        del marks[key]
            result.latency_ms["max"] = max(r["max_latency_us"] for r in reports) / 1000
        if target.relay:
            after = metrics_values(http_get(target.port, "/metrics"))
            key = 'cxrelay_frames_dropped_total{reason="slow_viewer"}'
            result.relay_dropped = after.get(key, 0) - before.get(key, 0)
            key = 'cxrelay_frames_dropped_total{reason="relay_busy"}'
            result.relay_busy = after.get(key, 0) - before.get(key, 0)
            for metric, suffix in (("cxrelay_loop_lag_seconds", ""),
                                   ("cxrelay_loop_lag_own_seconds", " own")):
                lag = histogram_delta(before, after, metric)
                for mark, q in (("p99", 0.99), ("max", 1.0)):
                    bound = bucket_quantile(lag, q)
                    if bound is not None:
                        result.loop_lag_ms[mark + suffix] = bound * 1000
        if profiler is not None:
            profiler.wait(60)
    finally:
        for sock in stalled:
            sock.close()
        for loader in loaders:
            if loader.poll() is None:
                loader.kill()
            loader.wait()
        target.stop()
    return result


# --- output --------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def le(value: float | None) -> str:
    return "—" if value is None else "≤" + format(value, "g")


def table(results: list[Result], seconds: float, context: list[Result] | None = None) -> str:
    """``results`` as Markdown rows; ``context``: all results, for the floor
    and no-viewer rows of the same loads."""
    lines = [
        "| load | target | CPU % of a core (user+sys) | µs per message | vs floor "
        "| fan-out µs per message | delivered % | RSS MiB "
        "| latency p50 / p99 / max ms | lost (relay drops: slow viewer / busy) | closed "
        "| loop lag p99 / max, own p99 / max ms | load gen CPU % | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    every = context or results
    floor = {r.load: r.us_per_message(seconds) for r in every if r.target == "floor"}
    # The same target with the same cameras and no viewers: its ingest alone.
    idle = {(r.target, r.cameras): r.cpu for r in every
            if not r.viewers and not r.error and "RTSP" not in r.load}
    for r in results:
        if r.error:
            lines.append(f"| {r.load} | {r.target} | failed: {r.error} |" + " |" * 12)
            continue
        per = r.us_per_message(seconds)
        base = floor.get(r.load)
        ratio = f"{per / base:.2f}" if per and base else "—"
        ingest = idle.get((r.target, r.cameras)) if r.target != "floor" else 0.0
        net = (r.cpu - ingest) / 100 * seconds / r.messages * 1e6 \
            if r.messages and ingest is not None else None
        lat = " / ".join(fmt(r.latency_ms.get(k)) for k in ("p50", "p99", "max")) \
            if r.latency_ms else "—"
        lag = " / ".join(le(r.loop_lag_ms.get(k)) for k in ("p99", "max", "p99 own",
                                                              "max own")) \
            if r.loop_lag_ms else "—"
        lost = f"{r.lost + r.flagged}" if r.messages else "—"
        # Of the frames the viewers were offered in the window: a target that can't
        # keep up delivers late (the rest waits in buffers), not only drops.
        offered = r.viewers * FPS * seconds
        delivered = f"{100 * r.messages / offered:.0f}" if offered else "—"
        if r.relay_dropped is not None and r.relay_busy is not None and r.messages:
            lost += f" ({r.relay_dropped:.0f} / {r.relay_busy:.0f})"
        lines.append(
            f"| {r.load} | {r.target} | {r.cpu:.1f} ({r.cpu_user:.1f}+{r.cpu_system:.1f}) "
            f"| {fmt(per)} | {ratio} | {fmt(net)} | {delivered} | {r.rss_mib:.0f} | {lat} "
            f"| {lost} | {r.closed if r.messages else '—'} | {lag} | {r.load_cpu:.1f} "
            f"| {r.loadavg} |")
    return "\n".join(lines)


def run_load(load: Load, targets: list[str], url: str, args: argparse.Namespace,
             each: Callable[[], contextlib.AbstractContextManager[None]]) -> list[Result]:
    """Every target of one load, ``--rounds`` times; ``each`` holds around each run."""
    results = []
    for _ in range(args.rounds):
        for name in targets:
            try:
                with each():
                    result = measure(name, load, url, args)
            except (RuntimeError, OSError, ValueError) as exc:
                result = Result(str(load), name, load.cameras, load.viewers,
                                error=str(exc)[:120])
            results.append(result)
            print(f"{load} / {name}: {result.error or ''}{result.cpu:.1f} % CPU, "
                  f"{fmt(result.us_per_message(args.seconds))} µs/message, "
                  f"load average {result.loadavg or '?'}", file=sys.stderr, flush=True)
    return results


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    """One heavy benchmark at a time on a shared machine (flock(1)'s lock)."""
    if path is None:
        yield
        return
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default=DEFAULT_LOADS,
                        help=f"cameras x viewers, or rtspN (default {DEFAULT_LOADS})")
    parser.add_argument("--targets", default=None,
                        help="new, old (needs --baseline), floor; default new,floor "
                             "(new,old,floor with --baseline)")
    parser.add_argument("--baseline", metavar="DIR", help="another cxrelay checkout (old)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--stalled", type=int, default=0,
                        help="viewers that never read, besides the others (not counted)")
    parser.add_argument("--file", type=Path, help="camera recording (default: a 720p25 one)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy record the new relay during each measurement "
                             "(raw collapsed stacks)")
    parser.add_argument("--lock", type=Path, metavar="FILE",
                        help="a shared machine: hold flock(FILE) around each measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    targets = (args.targets or ("new,old,floor" if args.baseline else "new,floor")).split(",")
    if "old" in targets and not args.baseline:
        parser.error("target old needs --baseline DIR")
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.profile and not Path(args.py_spy).exists():
        parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    # Thousands of sockets: the relay, the floor and the load generators inherit this.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loads = [Load.parse(text) for text in args.loads.split(",")]
    file = args.file or bench_file()
    camera = None
    results: list[Result] = []
    try:
        for load in loads:
            url = str(file)
            load_targets = [t for t in targets if not (t == "floor" and not load.viewers)]
            # The RTSP camera encodes all the time it runs: under the lock, the
            # whole load long, or it weighs on whoever holds the lock meanwhile.
            whole = locked(args.lock) if load.rtsp else contextlib.nullcontext()
            each = contextlib.nullcontext if load.rtsp else partial(locked, args.lock)
            with whole:
                if load.rtsp:
                    from tests.camera.harness import RtspCamera
                    camera = RtspCamera(width=1280, height=720, fps=FPS, bitrate=2000,
                                        gop=50).start()
                    url = camera.url
                done = len(results)
                results += run_load(load, load_targets, url, args, each)
                if camera is not None:
                    camera.stop()
                    camera = None
            if not args.json:  # each load's rows as soon as it is done
                rows = table(results[done:], args.seconds, results)
                print(rows.split("\n", 2)[2] if done else rows, flush=True)
    finally:
        if camera is not None:
            camera.stop()
    if args.json:
        print(json.dumps([r.__dict__ | {"cpu": r.cpu,
                                        "us_per_message": r.us_per_message(args.seconds)}
                          for r in results], indent=1))
        return
    for r in results:
        if r.profile:
            print(f"profile of {r.load}: {r.profile}")


if __name__ == "__main__":
    main()
