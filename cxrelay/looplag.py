"""The event loop's lag: how late it runs a timer.

Everything of the relay's runs on one loop, so the longest thing it does at a
time (a fan-out, a burst of callbacks) is how late any timer fires, and how
late any viewer's next frame goes out. A timer every ``interval`` records its
own lateness (``cxrelay_loop_lag_seconds``). uvloop's timers tick in
milliseconds, so lags under a millisecond read as noise.

On a busy machine part of a lag is the process waiting for a CPU, which no
code of the relay can help. Linux counts that wait per thread
(/proc/thread-self/schedstat, "run_delay"); what remains is how long the
relay's own work held the loop (``cxrelay_loop_lag_own_seconds``).

The hubs ask a like question of their fan-out (``LoopLag.of(loop)``): did
the loop's thread use the CPU while a frame waited in the queue? If it mostly
did not run (waiting for a CPU, or for the interpreter lock held by another
thread that was), the frame is late because the machine was busy, and the
queue drains as soon as the thread runs again; only CPU the loop used counts
as the relay falling behind. The thread's CPU time costs a system call, so it
is read at each tick, and at once only when a frame has waited long.

A picture can also be late before it reaches a hub: the source threads hand
pictures to the loop through its callback queue, and a loop with more work
than CPU runs them ever later. So each tick is kept for a few seconds with its
wall clock, and ``cpu_used_since`` tells how much CPU the loop used since a
picture arrived from its camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections import deque

from prometheus_client import Histogram

DEFAULT_INTERVAL = 0.05  # often enough to catch a stall of tens of milliseconds
HISTORY = 200  # ticks kept for cpu_used_since: 10 s at the default interval, more when late
SCHEDSTAT = "/proc/thread-self/schedstat"


class LoopLag:
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = \
        weakref.WeakKeyDictionary()

    def __init__(self, lag: Histogram, own: Histogram,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.lag = lag
        self.own = own
        self.interval = interval
        self.worst = 0.0  # since start, for tests and benchmarks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._schedstat: int | None = None  # the loop thread's, opened on the loop
        self._waited_ns = 0
        self._cpu_ns = 0  # the loop thread's CPU time at the last tick
        # (wall clock µs, the loop thread's CPU µs) at each of the last ticks
        self._ticks: deque[tuple[int, int]] = deque(maxlen=HISTORY)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            self._schedstat = os.open(SCHEDSTAT, os.O_RDONLY)
            self._waited_ns = self._run_delay_ns()
        self._cpu_ns = time.thread_time_ns()
        self._ticks.append((self.now_us(), self._cpu_ns // 1000))
        self._by_loop[self._loop] = self
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._loop is not None and self._by_loop.get(self._loop) is self:
            del self._by_loop[self._loop]
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopLag | None:
        """The loop's running monitor, if it has one."""
        return cls._by_loop.get(loop)

    def cpu_us(self, *, now: bool = False) -> int:
        """The CPU time the loop's thread has used so far (µs): as of the last tick (no
        system call), or ``now`` (call it on the loop's thread)."""
        return (time.thread_time_ns() if now else self._cpu_ns) // 1000

    def now_us(self) -> int:
        """The wall clock (µs), as the sources stamp what they receive."""
        return time.time_ns() // 1000

    def cpu_used_since(self, wall_us: int) -> int | None:
        """The CPU time (µs) the loop's thread has used since the wall clock read
        ``wall_us``, or a little more (from the last tick before it); None if that is
        older than the ticks kept. Call it on the loop's thread."""
        ticks = self._ticks
        if not ticks or ticks[0][0] > wall_us:
            return None
        cpu_then = ticks[0][1]
        for at_us, cpu_us in reversed(ticks):
            if at_us <= wall_us:
                cpu_then = cpu_us
                break
        return self.cpu_us(now=True) - cpu_then

    def _run_delay_ns(self) -> int:
        """Nanoseconds this thread has waited, runnable, for a CPU."""
        assert self._schedstat is not None
        return int(os.pread(self._schedstat, 64, 0).split()[1])

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self.lag.observe(lag)
        self.worst = max(self.worst, lag)
        self._cpu_ns = time.thread_time_ns()
        self._ticks.append((self.now_us(), self._cpu_ns // 1000))
        if self._schedstat is not None:
            waited = self._run_delay_ns()
            self.own.observe(max(0.0, lag - (waited - self._waited_ns) / 1e9))
            self._waited_ns = waited
        self._schedule(now)
