"""The link ledger's policy, fed a simulated link: a bottleneck that drains at a fixed rate,
acknowledgements that lag (delayed ACKs), a real stream's frame sizes (baseline.h264: a
keyframe every second, four times a P-frame). No sockets, no clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from cxrelay.link import Admit, LinkLedger
from tests.recordings import recording

BOUND_US = 1_000_000
FRAME_US = 40_000
UNITS = recording("baseline").units
SIZES = [len(u) + 21 for u in UNITS]  # header and WebSocket framing
KEYS = {i for i, u in enumerate(UNITS) if (u[4] & 0x1F) in (5, 7)}  # IDR or SPS first
STREAM = sum(SIZES) / len(SIZES) * 1e6 / FRAME_US  # bytes/s


@dataclass
class Delivered:
    at_us: int
    delay_us: int
    keyframe: bool
    flagged: bool


@dataclass
class Sim:
    """One viewer behind a bottleneck of `rate` bytes/s; ACKs reach the sender `ack_us` after
    the data has crossed. `down` = (from, to): the link carries nothing meanwhile."""

    rate: float
    ack_us: int = 40_000
    down: tuple[int, int] | None = None
    ledger: LinkLedger = field(default_factory=lambda: LinkLedger(BOUND_US))
    out: list[Delivered] = field(default_factory=list)
    changes: list[tuple[int, bool]] = field(default_factory=list)

    def run(self, seconds: float, step_us: int = 1000) -> Sim:
        written = crossed = 0.0
        acks: list[tuple[int, float]] = []  # (when the sender learns, crossed bytes)
        acked = 0.0
        queue: list[tuple[float, int, bool, bool]] = []  # (end offset, queued, key, flagged)
        frame = 0
        for now in range(0, int(seconds * 1e6), step_us):
            if crossed < written and not (self.down and self.down[0] <= now < self.down[1]):
                crossed = min(written, crossed + self.rate * step_us / 1e6)
                acks.append((now + self.ack_us, crossed))
            while acks and acks[0][0] <= now:
                acked = acks.pop(0)[1]
            while queue and queue[0][0] <= crossed:
                _, queued, key, flagged = queue.pop(0)
                self.out.append(Delivered(now, now - queued, key, flagged))
            if now % FRAME_US:
                continue
            index = frame % len(SIZES)
            frame += 1
            size, key = SIZES[index], index in KEYS
            ledger = self.ledger
            if ledger.needs_sample(now):
                ledger.sample(int(written - acked), now)
            slow = ledger.slow
            admit = ledger.admit(size, key, now)
            if ledger.slow != slow:
                self.changes.append((now, ledger.slow))
            if admit is not Admit.SKIP:
                ledger.wrote(size, now, now)
                written += size
                queue.append((written, now, key, admit is Admit.WRITE_DISCONTINUITY))
        return self

    def delays(self, since_us: int = 0) -> list[int]:
        return [d.delay_us for d in self.out if d.at_us >= since_us]


@pytest.mark.parametrize("ratio", [3.0, 1.5, 1.2])
def test_a_link_faster_than_the_stream_gets_every_frame(ratio: float) -> None:
    sim = Sim(STREAM * ratio).run(60)
    assert len(sim.out) >= 60 * 25 - 2
    assert sim.ledger.cuts == 0 and sim.changes == []
    assert not any(d.flagged for d in sim.out)
    # A keyframe takes its size over the rate to cross; nothing waits longer than that
    # and a couple of frames.
    biggest = max(SIZES) * 1e6 / (STREAM * ratio)
    assert max(sim.delays()) < biggest + 2 * FRAME_US


@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.3])
def test_a_link_slower_than_the_stream_gets_keyframes_within_the_bound(ratio: float) -> None:
    sim = Sim(STREAM * ratio).run(60)
    assert max(sim.delays()) <= BOUND_US
    keys = [d for d in sim.out if d.keyframe]
    assert len(keys) >= 55  # one a second, on time
    assert sim.changes[0][1] is True  # told: slow
    assert sim.ledger.slow
    if ratio <= 0.5:
        assert len(keys) >= 0.6 * len(sim.out)  # P-frames only in short probes
        # Keyframes follow skipped frames (probes aside): flagged.
        assert sum(d.flagged for d in keys) >= 0.8 * len(keys)


def test_probes_back_off_on_a_link_that_stays_slow() -> None:
    sim = Sim(STREAM * 0.5).run(120)
    probes = [at for at, slow in sim.changes if not slow]
    assert 3 <= len(probes) <= 7
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps)


def test_a_stall_then_back_to_every_frame_soon() -> None:
    sim = Sim(STREAM * 3, down=(10_000_000, 15_000_000)).run(30)
    assert sim.changes and sim.changes[0] == (sim.changes[0][0], True)
    assert 10_000_000 < sim.changes[0][0] < 10_600_000  # cut within half the bound
    after = [d for d in sim.out if d.at_us >= 15_000_000 and d.delay_us < BOUND_US // 2]
    first = after[0]
    assert first.keyframe and first.flagged
    assert first.at_us - 15_000_000 < 1_100_000  # the next keyframe
    # every frame again, a keyframe or two later
    back = next(at for at, slow in sim.changes if not slow)
    assert back - 15_000_000 < 3_000_000
    assert len([d for d in sim.out if d.at_us >= back + 1_000_000]) >= 0.95 * 25 * (
        30 - back / 1e6 - 1)


def test_bookkeeping() -> None:
    ledger = LinkLedger(BOUND_US)
    assert not ledger.needs_sample(0)
    ledger.wrote(100)  # a control message: counted, never aged
    assert not ledger.needs_sample(10**9)
    ledger.wrote(1000, queued_us=0, now_us=10_000)
    ledger.wrote(1000, queued_us=40_000, now_us=40_000)
    assert ledger.delay_us(100_000) == 100_000  # the oldest undelivered frame's age
    assert not ledger.needs_sample(100_000)
    assert ledger.needs_sample(BOUND_US // 8)
    ledger.sample(1000, 130_000)  # the first frame has arrived
    assert ledger.delay_us(130_000) == 90_000
    ledger.sample(0, 140_000)
    assert ledger.delay_us(140_000) == 0 and not ledger.needs_sample(10**9)
    # The rate comes only from spans during which a frame sat undelivered.
    assert ledger.rate is None
    ledger.wrote(10_000, queued_us=200_000, now_us=200_000)
    ledger.sample(10_000, 250_000)
    ledger.sample(5_000, 350_000)
    assert ledger.rate == pytest.approx(50_000)


def test_a_keyframe_waits_for_a_clear_link_when_the_rate_is_unknown() -> None:
    ledger = LinkLedger(BOUND_US)
    ledger.wrote(50_000, queued_us=0, now_us=0)
    ledger.sample(50_000, 300_000)  # nothing delivered yet; the first sample: no rate
    assert ledger.admit(1000, False, 300_000) is Admit.WRITE  # 300 ms: not yet half the bound
    ledger.wrote(1000, queued_us=300_000, now_us=300_000)
    ledger.sample(51_000, 600_000)
    assert ledger.rate == 0  # nothing moved in 300 ms
    assert ledger.admit(1000, False, 600_000) is Admit.SKIP  # cut
    assert ledger.slow
    assert ledger.admit(8000, True, 640_000) is Admit.SKIP  # not behind a stuck link
    ledger.sample(0, 680_000)
    assert ledger.admit(8000, True, 680_000) is Admit.WRITE_DISCONTINUITY


def test_a_moments_stall_costs_a_keyframe_interval_or_two() -> None:
    """A lost retransmission or a busy machine: nothing moves for 400 ms on a link twice
    the stream. The viewer is cut (the bound holds), then takes every frame again as soon
    as a keyframe crosses fast, not after a probe's backoff."""
    sim = Sim(STREAM * 2, down=(10_000_000, 10_400_000)).run(20)
    assert sim.ledger.cuts == 1
    back = next(at for at, slow in sim.changes if not slow)
    assert back - 10_400_000 < 2_100_000
    assert len(sim.out) >= 20 * 25 - 2.5 * 25
