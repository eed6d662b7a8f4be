"""The event loop's lag: how late it runs a timer.

Everything of the relay's runs on one loop, so the longest thing it does at a
time (a fan-out, a burst of callbacks) is how late any timer fires, and how
late any viewer's next frame goes out. A timer every ``interval`` records its
own lateness into a histogram (``cxrelay_loop_lag_seconds``). uvloop's timers
tick in milliseconds, so lags under a millisecond read as noise.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

DEFAULT_INTERVAL = 0.05  # often enough to catch a stall of tens of milliseconds


class LoopLag:
    def __init__(self, histogram: Histogram, interval: float = DEFAULT_INTERVAL) -> None:
        self.histogram = histogram
        self.interval = interval
        self.worst = 0.0  # since start, for tests and benchmarks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self.histogram.observe(lag)
        self.worst = max(self.worst, lag)
        self._schedule(now)
