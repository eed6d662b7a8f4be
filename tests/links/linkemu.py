#!/usr/bin/env python3
"""A userspace link emulator: two TUN devices and a bottleneck between them.

This machine's kernel has no ``netem`` qdisc (only tbf, htb and the fifos), so delay and
loss can't be shaped with ``tc``. This process stands in for the router between two
network namespaces instead: every IP packet one side sends comes out of its TUN device
here, goes through a model of a bottleneck link, and is written into the other side's TUN
device. TCP runs end to end between the two kernels, untouched; only the link is fake.

The model, per direction (like ``tc ... tbf rate R limit L`` followed by ``netem delay D
loss P``):

- ``loss``: each packet is dropped with this probability (seeded, reproducible);
- ``rate`` (bit/s, 0 for unlimited): the packet waits for the packets ahead of it to be
  serialised, then takes ``size * 8 / rate`` itself;
- ``limit`` (bytes): a packet that would find more than this waiting ahead of it is
  dropped (a drop-tail router buffer);
- ``delay`` (s): then it propagates for this long;
- ``down``: the link drops everything that arrives (an outage); what is already on its
  way still arrives.

Control: one JSON object per line on stdin, one JSON line back on stdout:
``{"dir": "down", "rate": 1e6, "delay": 0.05, "loss": 0.02, "limit": 65536, "down": false}``
sets the given fields (``dir``: "down" = a -> b, "up" = b -> a, "both"); ``{"stats": true}``
returns the counters. EOF on stdin ends the process (the parent died or is done).

Run by the link test helper (tests/links/netns.py); pure stdlib, any python3.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@dataclass
class Shape:
    rate: float = 0.0  # bit/s; 0: unlimited
    delay: float = 0.0  # s, one way
    loss: float = 0.0  # probability
    limit: int = 256 * 1024  # bytes waiting for the bottleneck before drop-tail
    down: bool = False


@dataclass
class Direction:
    shape: Shape = field(default_factory=Shape)
    busy_until: float = 0.0  # when the bottleneck has serialised everything queued so far
    packets: int = 0
    bytes: int = 0
    delivered: int = 0
    lost: int = 0  # random loss
    overflow: int = 0  # drop-tail
    dropped_down: int = 0
    max_queue: int = 0  # bytes waiting for the bottleneck, at worst

    def admit(self, size: int, now: float, rng: random.Random) -> float | None:
        """When a packet of `size` arriving `now` comes out the far end, or None: dropped."""
        self.packets += 1
        self.bytes += size
        s = self.shape
        if s.down:
            self.dropped_down += 1
            return None
        if s.loss and rng.random() < s.loss:
            self.lost += 1
            return None
        if s.rate > 0:
            start = max(now, self.busy_until)
            waiting = int((start - now) * s.rate / 8)
            if waiting + size > s.limit:
                self.overflow += 1
                return None
            self.max_queue = max(self.max_queue, waiting + size)
            self.busy_until = start + size * 8 / s.rate
            departs = self.busy_until
        else:
            departs = now
        return departs + s.delay

    def stats(self) -> dict[str, object]:
        counters = {k: v for k, v in asdict(self).items() if k not in ("shape", "busy_until")}
        return {**counters, "shape": asdict(self.shape)}


class Emulator:
    def __init__(self, fd_a: int, fd_b: int, seed: int) -> None:
        self.fds = (fd_a, fd_b)
        self.dirs = (Direction(), Direction())  # index = the fd the packet came from
        self.rng = random.Random(seed)
        self.pending: list[tuple[float, int, int, bytes]] = []  # (due, seq, out fd, packet)
        self.seq = 0

    def control(self, line: str) -> dict[str, object]:
        try:
            request = json.loads(line)
            if request.get("stats"):
                return {"ok": True, "down": self.dirs[0].stats(), "up": self.dirs[1].stats()}
            which = request.pop("dir", "both")
            targets = {"down": [0], "up": [1], "both": [0, 1]}[which]
            for index in targets:
                shape = self.dirs[index].shape
                for key, value in request.items():
                    if not hasattr(shape, key):
                        raise KeyError(key)
                    setattr(shape, key, type(getattr(shape, key))(value))
            return {"ok": True}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def receive(self, index: int, now: float) -> None:
        fd = self.fds[index]
        direction = self.dirs[index]
        while True:
            try:
                packet = os.read(fd, MAX_PACKET)
            except BlockingIOError:
                return
            due = direction.admit(len(packet), now, self.rng)
            if due is not None:
                self.seq += 1
                heapq.heappush(self.pending, (due, self.seq, 1 - index, packet))

    def deliver(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, _, out, packet = heapq.heappop(self.pending)
            try:
                os.write(self.fds[out], packet)
                self.dirs[1 - out].delivered += 1
            except OSError:
                pass  # the interface is down or gone: the packet is lost, like on a wire

    def run(self) -> None:
        control = sys.stdin.fileno()
        watched = [*self.fds, control]
        buffered = b""
        while True:
            now = time.monotonic()
            timeout = max(0.0, self.pending[0][0] - now) if self.pending else None
            readable, _, _ = select.select(watched, [], [], timeout)
            now = time.monotonic()
            for index, fd in enumerate(self.fds):
                if fd in readable:
                    self.receive(index, now)
            if control in readable:
                chunk = os.read(control, 65536)
                if not chunk:
                    return
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    if line.strip():
                        reply = self.control(line.decode())
                        sys.stdout.write(json.dumps(reply) + "\n")
                        sys.stdout.flush()
            self.deliver(time.monotonic())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="TUN device of side a (made here)")
    parser.add_argument("--b", required=True, help="TUN device of side b (made here)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        fds = open_tun(args.a), open_tun(args.b)
    except OSError as exc:
        print(f"linkemu: cannot make TUN devices: {exc}", file=sys.stderr, flush=True)
        return 1
    # A link doesn't pause when the machine is busy: real-time priority keeps the model's
    # timing true under load (it sleeps in select; its work per packet is tiny).
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    print("READY", flush=True)
    Emulator(*fds, seed=args.seed).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
