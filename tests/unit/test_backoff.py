import random

from cxrelay.backoff import Backoff


def test_exponential_with_jitter_capped_at_maximum() -> None:
    b = Backoff(1.0, 30.0, random.Random(7))
    delays = [b.next_delay() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    b.reset()
    assert 0.5 <= b.next_delay() <= 1.0


def test_jitter_differs_between_cameras() -> None:
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]
