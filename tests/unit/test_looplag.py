"""The loop lag monitor on a real loop: a callback that holds the loop shows
as lag, and as the relay's own (it ran; it did not wait for a CPU)."""

from __future__ import annotations

import asyncio
import time

from cxrelay.looplag import LoopLag
from cxrelay.metrics import Metrics


def observed(histogram: object, above: float) -> float:
    """How many observations were above ``above`` seconds."""
    samples = {s.labels.get("le"): s.value for s in histogram.collect()[0].samples  # type: ignore[attr-defined]
               if s.name.endswith("_bucket")}
    return samples["+Inf"] - samples[repr(above)]


async def test_a_callback_holding_the_loop_is_measured_as_its_own_lag() -> None:
    metrics = Metrics()
    monitor = LoopLag(metrics.loop_lag, metrics.loop_lag_own, interval=0.01)
    monitor.start()
    try:
        assert LoopLag.of(asyncio.get_running_loop()) is monitor
        await asyncio.sleep(0.05)
        used = monitor.cpu_us(now=True)
        cpu = time.thread_time()
        while time.thread_time() - cpu < 0.3:  # 0.3 s of CPU, on the loop
            pass
        # The loop's CPU time, which the fan-out's "relay behind" goes by.
        assert monitor.cpu_us(now=True) - used >= 300_000
        await asyncio.sleep(0.05)
        assert monitor.cpu_us() - used >= 300_000  # as of the last tick
    finally:
        monitor.stop()
    assert LoopLag.of(asyncio.get_running_loop()) is None
    # The timer fell due up to one interval after the hold began.
    assert monitor.worst >= 0.3 - 0.01 - 0.005
    assert observed(metrics.loop_lag, 0.25) >= 1
    assert observed(metrics.loop_lag_own, 0.25) >= 1
