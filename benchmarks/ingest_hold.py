#!/usr/bin/env python3
"""Ingest hold: what cxrelay's Ingest adds to each picture, and whether it cuts any,
when the source thread is starved of CPU. Pure replay, no camera, no clock: the numbers
come from the model below, not from this machine's load.

A real RTSP session's packets as PyAV hands them over with FFmpeg's parser off
(tests/data/rtsp_gst: H.264, two FU-A-fragmented slices; h265_rtsp_gst: H.265, FU),
played REPEAT times. Each picture's packets reach the socket at its timestamp, 50 µs
apart. The source thread reads them one by one; "starved": before a read it loses the
CPU, with probability P, for a time drawn uniformly up to MAX ms. The loop's idle
timer fires at the Ingest's deadline when the thread has not pushed again by then
(as cxrelay.sources.base does). Per picture out: what the Ingest added, (time it is
handed to the loop) - (time the thread pushed its last packet), and the whole delay,
from the time that packet reached the socket; and whether its bytes are the camera's
(a picture cut short is not; "lost": dropped, or cut).

    .venv/bin/python benchmarks/ingest_hold.py
    git archive <rev> | tar -x -C /tmp/base
    .venv/bin/python benchmarks/ingest_hold.py --baseline /tmp/base    # before/after, one run
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STREAMS = {"h264": ("rtsp_gst", ".h264"), "h265": ("h265_rtsp_gst", ".h265")}
PACKET_GAP_US = 50


def session(codec: str, repeat: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(extradata, [(pts µs, packet)]) of the recording played ``repeat`` times."""
    from tests.recordings import recording

    name, suffix = STREAMS[codec]
    rec = recording(name, suffix=suffix)
    span = max(p[0] for p in rec.packets) + 40_000
    packets = [(pts + r * span, data) for r in range(repeat) for pts, data, _ in rec.packets]
    return bytes.fromhex(rec.meta["extradata"]), packets


def replay(codec: str, repeat: int, starve_p: float, starve_max_us: int, seed: int,
           flush_early: bool = True) -> dict[str, Any]:
    """Play the session through this checkout's Ingest; what came out, when."""
    from cxrelay.ingest import Ingest, StreamInfo

    extradata, packets = session(codec, repeat)
    rng = random.Random(seed)
    ingest = Ingest(StreamInfo(extradata, "tcp", whole_units=False, codec=codec),
                    from_keyframe=False)
    out: list[tuple[bytes, int, int]] = []  # (picture, its pts, handed to the loop at)
    last_arrival: dict[int, int] = {}  # pts -> when its last packet reached the socket
    last_push: dict[int, int] = {}  # pts -> when the thread pushed its last packet
    arrival = thread = 0
    previous_pts = None
    deadline = None
    for pts, data in packets:
        arrival = max(arrival + PACKET_GAP_US, pts) if pts != previous_pts else \
            arrival + PACKET_GAP_US
        previous_pts = pts
        last_arrival[pts] = arrival
        if rng.random() < starve_p:
            thread += rng.randrange(starve_max_us + 1)
        thread = max(thread, arrival)  # the read returns once the packet is there
        if flush_early and deadline is not None and deadline < thread:
            out += [(f.data, f.pts_us, deadline) for f in ingest.flush(deadline).frames]
        last_push[pts] = thread
        result = ingest.push(data, pts, thread)
        out += [(f.data, f.pts_us, thread) for f in result.frames]
        deadline = result.deadline_us
    out += [(f.data, f.pts_us, thread) for f in ingest.flush().frames]
    return {"pictures": [[data.hex(), at - last_push[pts], at - last_arrival[pts]]
                         for data, pts, at in out]}


def measure(code: Path, args: argparse.Namespace, starve_p: float, starve_ms: float
            ) -> dict[str, Any]:
    """Run ``replay`` in a fresh interpreter on the cxrelay in ``code``."""
    program = (
        f"import sys, json; sys.path[:0] = [{str(code)!r}, {str(ROOT)!r}]\n"
        "from benchmarks.ingest_hold import replay\n"
        f"print(json.dumps(replay({args.codec!r}, {args.repeat}, {starve_p}, "
        f"{int(starve_ms * 1000)}, {args.seed})))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=code, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def truth(args: argparse.Namespace) -> list[bytes]:
    """The camera's pictures: this checkout's Ingest, never starved, no early flush."""
    result = replay(args.codec, args.repeat, 0.0, 0, args.seed, flush_early=False)
    return [bytes.fromhex(data) for data, *_ in result["pictures"]]


def row(label: str, result: dict[str, Any], whole: list[bytes]) -> str:
    known = set(whole)
    added: list[int] = []
    delay: list[int] = []
    cut = 0
    for data_hex, by_ingest, from_socket in result["pictures"]:
        if bytes.fromhex(data_hex) not in known:
            cut += 1
        else:
            added.append(by_ingest)
            delay.append(from_socket)

    def pct(values: list[int], p: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1000:.1f}" \
            if ordered else "-"

    return (f"| {label} | {pct(added, 50)} / {pct(added, 90)} / {pct(added, 99)} / "
            f"{pct(added, 100)} | {pct(delay, 50)} / {pct(delay, 90)} / {pct(delay, 99)} "
            f"| {len(added)} of {len(whole)} | {cut} | {len(whole) - len(added)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", choices=sorted(STREAMS), default="h265")
    parser.add_argument("--repeat", type=int, default=20, help="plays of the recording")
    parser.add_argument("--starve", type=float, nargs=2, action="append", metavar=("P", "MAX"),
                        help="P: chance a read is late, MAX: how late at most, ms "
                             "(repeatable; default 0.1 10 and 0.3 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", metavar="DIR", help="another checkout of cxrelay")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    whole = truth(args)
    print(f"{args.codec}: {len(whole)} pictures, {args.repeat} plays of the recording\n")
    print("| code | source thread | added by ingest ms p50 / p90 / p99 / max "
          "| socket to loop ms p50 / p90 / p99 | whole pictures out | cut short | lost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    codes = [("this", ROOT)] + ([("baseline", Path(args.baseline))] if args.baseline else [])
    for starve_p, starve_ms in [(0.0, 0.0), *(args.starve or [(0.1, 10.0), (0.3, 30.0)])]:
        thread = f"late P={starve_p:g}, <= {starve_ms:g} ms" if starve_p else "on time"
        for label, code in codes:
            result = measure(code, args, starve_p, starve_ms)
            print(row(f"{label} | {thread}", result, whole))
    return 0


if __name__ == "__main__":
    sys.exit(main())
