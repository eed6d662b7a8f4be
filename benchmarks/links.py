#!/usr/bin/env python3
"""Links benchmark: a viewer's delay on shaped links (slow, stalling, lossy).

Puts `cxrelay serve` (a looped file camera) in one network namespace and a protocol v1
client in another, joined by a shaped link (tests/links/netns.py; root needed), and
prints, per scenario, the delay each frame arrived with (arrival - the relay's ingest
time): p50/p90/p99/max over the run and the max over its last third (growth), frames per
second received, the share of keyframes, discontinuities, and the relay's CPU.

    sudo python3 benchmarks/links.py                          # every scenario, 60 s each
    python3 benchmarks/links.py --scenarios slow --seconds 30 --cc bbr --backend tbf
    python3 benchmarks/links.py --variants today,lowat        # relay variants side by side

Scenarios (the stream's own bitrate is measured first, unshaped):
  fit    link at 120 % of the stream's bitrate
  slow   link at 50 %
  stall  unshaped, then down for 5 s from a third of the run, then back
  lossy  2 % loss and 50 ms delay, relay -> client

Variants patch the relay for a comparison, side by side in one run (see `--as-relay`):
`relay` as it is; `backlog-only` without the link ledger (only cxrelay's own backlog is
bounded: what the relay did before); `backlog+lowat` the same with TCP_NOTSENT_LOWAT at
16 KiB on each viewer's socket (the kernel's unsent bytes kept small, in-flight ones not).

A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.links.client import Watch, percentile, watch  # noqa: E402
from tests.links.netns import NetnsLink, RelayInNs  # noqa: E402

SCRIPT = Path(__file__).resolve()
DEFAULT_FILE = ROOT / "tests" / "data" / "baseline.h264"
SCENARIOS = ("fit", "slow", "stall", "lossy")
TCP_NOTSENT_LOWAT = 25
LOWAT = 16 * 1024


# -- relay variants (run inside the relay's process) -------------------------------------


VARIANTS = ("relay", "backlog-only", "backlog+lowat")


def apply_variant(variant: str) -> None:
    """Patch cxrelay before it starts, for a what-if comparison."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: {', '.join(VARIANTS)}")
    if variant == "relay":
        return
    import socket

    from cxrelay import viewer as viewer_module

    def no_ledger(transport: Any) -> None:
        if variant == "backlog+lowat":
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, LOWAT)

    viewer_module.unacked_probe = no_ledger  # type: ignore[assignment]


def run_as_relay(variant: str, argv: list[str]) -> None:
    apply_variant(variant)
    from cxrelay.cli import main

    sys.argv = ["cxrelay", *argv]
    main()


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    variant: str
    link: str
    watch: Watch
    seconds: float
    cpu: float
    note: str = ""

    def row(self) -> dict[str, Any]:
        live = self.watch.live(since=3.0)  # the first seconds: joining, catch-up
        delays = [f.delay for f in live]
        tail = [f.delay for f in self.watch.live(since=self.seconds * 2 / 3)]
        keys = sum(f.keyframe for f in live)
        span = max(1e-9, self.seconds - 3.0)
        return {
            "scenario": self.scenario,
            "variant": self.variant,
            "link": self.link,
            "p50_ms": round(percentile(delays, 50) * 1000),
            "p90_ms": round(percentile(delays, 90) * 1000),
            "p99_ms": round(percentile(delays, 99) * 1000),
            "max_ms": round(max(delays, default=float("nan")) * 1000),
            "tail_max_ms": round(max(tail, default=float("nan")) * 1000),
            "fps": round(len(live) / span, 1),
            "key_share": round(keys / len(live), 2) if live else 0,
            "discontinuities": sum(f.discontinuity for f in live),
            "relay_cpu_pct": round(self.cpu / self.seconds * 100, 1),
            "note": self.note,
        }


async def measure_stream(link: NetnsLink, seconds: float) -> float:
    """The stream's bitrate (bit/s, WebSocket payload) on the unshaped link."""
    result = await watch(link, "cam", seconds)
    live = result.live(since=1.0)
    if len(live) < 2:
        raise SystemExit("the camera sent nothing")
    span = live[-1].at - live[0].at
    return sum(f.size for f in live[:-1]) * 8 / span


async def run_scenario(scenario: str, variant: str, args: argparse.Namespace) -> Result:
    with NetnsLink(backend=args.backend, cc=args.cc) as link:
        relay = RelayInNs(link, "--camera", f"cam=file://{args.file}",
                          python=sys.executable)
        relay.argv[1:3] = [str(SCRIPT), "--as-relay", variant]
        with relay:
            bitrate = await measure_stream(link, 6.0)
            note = f"stream {bitrate / 1000:.0f} kbit/s"
            limit = args.limit
            if scenario == "fit":
                link.shape(rate=bitrate * 1.2, limit=limit)
                desc = f"{bitrate * 1.2 / 1000:.0f} kbit/s (120 %)"
            elif scenario == "slow":
                link.shape(rate=bitrate * 0.5, limit=limit)
                desc = f"{bitrate * 0.5 / 1000:.0f} kbit/s (50 %)"
            elif scenario == "lossy":
                link.shape(loss=0.02, delay=0.05)
                desc = "2 % loss, 50 ms"
            else:
                desc = "down 5 s"
            result = Watch()
            cpu0 = relay.cpu_seconds()
            task = asyncio.create_task(watch(link, "cam", args.seconds, result=result))
            if scenario == "stall":
                await asyncio.sleep(args.seconds / 3)
                link.shape("both", down=True)
                await asyncio.sleep(5.0)
                link.shape("both", down=False)
            await task
            cpu = relay.cpu_seconds() - cpu0
            return Result(scenario, variant, f"{args.backend}/{args.cc or 'default'} {desc}",
                          result, args.seconds, cpu, note)


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c in ("scenario", "variant", "link", "note") else "---:"
                         for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for scenario in args.scenarios.split(","):
        for variant in args.variants.split(","):
            result = await run_scenario(scenario, variant, args)
            rows.append(result.row())
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-relay":
        run_as_relay(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--backend", choices=("emulator", "tbf"), default="emulator")
    parser.add_argument("--cc", default="reno", help="congestion control (reno, bbr)")
    parser.add_argument("--limit", type=int, default=64 * 1024,
                        help="bottleneck buffer, bytes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.cc in ("", "default"):
        args.cc = None
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
