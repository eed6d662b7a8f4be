"""A token bucket, to bound what a client may ask of the relay. Pure: the
caller passes the time."""

from __future__ import annotations


class TokenBucket:
    """``burst`` requests at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the limit."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
