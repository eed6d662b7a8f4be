"""Reconnect delays: exponential with full jitter, so a store full of cameras
that failed together does not hammer the network back in lockstep. Pure."""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self, initial: float = 1.0, maximum: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt += 1
        # Half fixed, half random: never retries instantly, never waits past the ceiling.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self._attempt = 0
