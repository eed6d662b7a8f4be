"""What one viewer's link carries, and what to write to it. Pure: the viewer feeds it numbers.

The backlog sees only the frames cxrelay still holds. Once written, a frame waits in the
transport's buffer, then in the kernel's socket (unsent, then in flight until the client
acknowledges it). On a link slower than the stream, that is where the seconds pile up
(docs/latency.md): the kernel grows a socket's send buffer to megabytes. This ledger counts
those bytes too. Every write is recorded with the time its frame was handed to the viewer
(what it waited before, in a busy relay, is not the link's doing); a sample of how many
bytes the transport and the kernel still hold (the viewer reads SIOCOUTQ), with the time
it was taken (never a frame's: on a loop that ran late, those lie), tells which frames the
client has, how old the oldest undelivered one is, and how fast the link drains.

From that, frame by frame:

- **full**: every frame is written while what is written can still arrive within half the
  delay bound. Past that, the viewer is cut: frames are skipped up to a keyframe, and it
  goes to keyframes.
- **keyframes** (``slow``): the link can't carry the stream. Only keyframes are written, each
  when the link has delivered everything before it (or is fast enough to deliver it within
  the bound), each flagged as a discontinuity. The viewer is told (``link: slow``). It goes
  back to full when a keyframe is seen crossing faster than the stream needs (with
  headroom), or by probing, with exponential backoff. A cut after a moment's stall (a
  retransmission, a busy machine) thus costs a keyframe interval or two, not a backoff.

The drain rate is measured only over intervals during which a frame sat undelivered the
whole time, so the link was busy (or TCP was the limit) throughout: a stream is mostly
idle on a fast link, and rates over idle time would say the link is slow. Delayed ACKs make
the kernel's count lag by up to a few tens of milliseconds, so short intervals aren't used.

Samples cost a system call, so a viewer that keeps up is sampled only when its oldest
unconfirmed write is an eighth of the bound old; one seen falling behind, at every frame.
"""

from __future__ import annotations

import enum
from collections import deque

SAMPLE_FRACTION = 8  # a healthy viewer is sampled when its oldest write is bound/8 old
CUT_FRACTION = 2  # cut when the frames written would arrive later than bound/2...
WAIT_FRACTION = 4  # ...and a frame has waited a quarter of the bound
KEYFRAME_FRACTION = 0.75  # a keyframe behind others must be able to arrive within 3/4 bound
HEADROOM = 1.1  # back to full when a keyframe crosses this much faster than the stream needs
RATE_MIN_SPAN_US = 100_000  # delayed ACKs make shorter spans lie
KEY_RATE_FRESH_US = 3_000_000
PROBE_FIRST_US = 2_000_000  # first probe of full frames after going to keyframes
PROBE_MAX_US = 60_000_000
PROBE_HOLD_US = 10_000_000  # full that lasts this long after a probe resets the backoff
STREAM_WINDOW_US = 2_000_000


class Admit(enum.Enum):
    SKIP = 0
    WRITE = 1
    WRITE_DISCONTINUITY = 2  # a keyframe after skipped frames: flag it


class LinkLedger:
    __slots__ = (
        "_behind", "_cut_us", "_full_since_us", "_history", "_hot", "_key", "_key_rate",
        "_key_rate_us", "_ledger", "_need_key", "_pending", "_probe_at_us",
        "_probe_backoff_us", "_probing", "_sample_after_us", "_sampled_us",
        "_sampled_written", "_skipped", "_wait_us", "_window_bytes", "_window_us",
        "_written", "cuts", "max_delay_us", "rate", "skipped", "slow", "stream_rate",
    )

    def __init__(self, max_delay_us: int) -> None:
        self.max_delay_us = max_delay_us
        self._sample_after_us = max_delay_us // SAMPLE_FRACTION
        self._cut_us = max_delay_us // CUT_FRACTION
        self._wait_us = max_delay_us // WAIT_FRACTION
        self._written = 0  # bytes handed to the transport, ever
        # Frames not known to be delivered: (end offset, queued_us, written_us).
        self._ledger: deque[tuple[int, int, int]] = deque()
        self._sampled_us = 0
        self._sampled_written = 0  # _written at the last sample
        self._pending = 0  # bytes the transport and kernel held at the last sample
        self._history: deque[tuple[int, int]] = deque()  # (sample time, delivered) since busy
        self._behind = False  # the last sample found a frame undelivered for long: watch it
        self._hot = True  # keeping up: `write_direct` may take the frame
        self.rate: float | None = None  # bytes/s the link drains at while busy; None: unknown
        self._key: tuple[int, int, int] | None = None  # a keyframe being timed: end, size, when
        self._key_rate = 0.0  # bytes/s: its size over the time it took to be delivered
        self._key_rate_us = 0
        self._need_key = False
        self._skipped = False
        self.slow = False
        self._probe_at_us = 0
        self._probe_backoff_us = PROBE_FIRST_US
        self._full_since_us = 0
        self._probing = False  # back to full on a timer, not on a measurement
        self._window_us: int | None = None
        self._window_bytes = 0
        self.stream_rate: float | None = None  # bytes/s offered, over the last window
        self.cuts = 0
        self.skipped = 0

    # --- what the viewer tells it ----------------------------------------------------------

    def wrote(self, size: int, queued_us: int | None = None, now_us: int | None = None) -> None:
        """`size` bytes went to the transport at `now_us`: a frame queued at `queued_us`, or
        a control message (no queued time: counted, never aged)."""
        self._written += size
        if queued_us is not None:
            self._ledger.append((self._written, queued_us,
                                 queued_us if now_us is None else now_us))

    def write_direct(self, size: int, at_us: int) -> bool:
        """The hot path, for a viewer that keeps up: a frame of `size` bytes, queued and
        written at `at_us`, is recorded and True returned. False: nothing was recorded;
        sample if `needs_sample`, then ask `admit`."""
        if not self._hot:
            return False
        ledger = self._ledger
        if ledger and at_us - ledger[0][1] >= self._sample_after_us:
            return False
        self._written = written = self._written + size
        ledger.append((written, at_us, at_us))
        return True

    def needs_sample(self, now_us: int) -> bool:
        ledger = self._ledger
        if not ledger:
            return False
        return (self.slow or self._need_key or self._behind
                or now_us - ledger[0][1] >= self._sample_after_us)

    def sample(self, pending: int, now_us: int) -> None:
        """The transport and the kernel hold `pending` bytes not yet acknowledged."""
        pending = max(0, min(pending, self._written))
        delivered = self._written - pending
        self._sampled_us = now_us
        self._sampled_written = self._written
        self._pending = pending
        ledger = self._ledger
        while ledger and ledger[0][0] <= delivered:
            ledger.popleft()
        # (A frame or two may wait for a delayed ACK: that is not falling behind.)
        self._behind = bool(ledger) and now_us - ledger[0][2] >= RATE_MIN_SPAN_US
        self._hot = not (self._behind or self.slow or self._need_key)
        self._measure(delivered, now_us)
        key = self._key
        if key is not None and delivered >= key[0]:
            self._key = None
            self._key_rate = key[1] * 1e6 / max(1, now_us - key[2])
            self._key_rate_us = now_us

    def _measure(self, delivered: int, now_us: int) -> None:
        history = self._history
        if not self._ledger:
            history.clear()  # all delivered: the link may idle from here
            return
        # Only samples taken since the oldest undelivered frame was written: it has been
        # waiting (the link busy) from each of them to now.
        written_us = self._ledger[0][2]
        while history and history[0][0] < written_us:
            history.popleft()
        history.append((now_us, delivered))
        first_us, first_delivered = history[0]
        if now_us - first_us >= RATE_MIN_SPAN_US:
            self.rate = (delivered - first_delivered) * 1e6 / (now_us - first_us)

    # --- what it tells the viewer ------------------------------------------------------------

    def delay_us(self, now_us: int, extra: int = 0) -> int:
        """How late a frame of `extra` bytes written now would arrive, at best: the age of
        the oldest undelivered frame, or the time to drain what is queued, if longer."""
        oldest = now_us - self._ledger[0][1] if self._ledger else 0
        if not self._ledger or self.rate is None:
            return oldest
        if self.rate <= 0:
            return max(oldest, 10 * self.max_delay_us)  # nothing moves: a stall
        queued = (self._pending + self._written - self._sampled_written + extra
                  - self.rate * (now_us - self._sampled_us) / 1e6)
        return max(oldest, int(queued / self.rate * 1e6))

    def admit(self, size: int, keyframe: bool, now_us: int) -> Admit:
        """Write this frame, or skip it? (Sample first when `needs_sample` says so.)"""
        self._offer(size, now_us)
        if not self._need_key and not self.slow:
            ledger = self._ledger
            if not ledger or (not self._behind
                              and now_us - ledger[0][1] < self._sample_after_us):
                return Admit.WRITE  # the common case: keeping up
            # A rate measured while TCP ramps up can be far below what the link carries: a
            # cut needs a frame that has really waited, as well as a late prediction. In a
            # probe the link was just seen slower than the stream: half the wait will do.
            wait = self._wait_us
            if self._probing and now_us - self._full_since_us < PROBE_HOLD_US:
                wait //= 2
            if now_us - ledger[0][1] < wait or self.delay_us(now_us) <= self._cut_us:
                return Admit.WRITE
            self._cut(now_us)
        if not keyframe or (self._ledger and (
                self.rate is None
                or self.delay_us(now_us, size) > self.max_delay_us * KEYFRAME_FRACTION)):
            # A keyframe waits for the link to be clear, unless it can get through in time.
            self._skipped = True
            self.skipped += 1
            return Admit.SKIP
        self._need_key = False
        if self.slow:
            fast = self._fast_enough(now_us)
            if fast or now_us >= self._probe_at_us:
                self.slow = False
                self._probing = not fast
                self._full_since_us = now_us
            elif self._key is None:  # time its delivery: a lower bound of the link's rate
                self._key = (self._written + size, size, now_us)
        self._hot = not (self._behind or self.slow)
        skipped, self._skipped = self._skipped, False
        return Admit.WRITE_DISCONTINUITY if skipped else Admit.WRITE

    # --- policy ------------------------------------------------------------------------------

    def _cut(self, now_us: int) -> None:
        self.cuts += 1
        self._need_key = True
        self._hot = False
        if not self.slow:
            if self._full_since_us and now_us - self._full_since_us >= PROBE_HOLD_US:
                self._probe_backoff_us = PROBE_FIRST_US  # full held: the link was fine
            self.slow = True
            self._probe_at_us = now_us + self._probe_backoff_us
            self._probe_backoff_us = min(PROBE_MAX_US, self._probe_backoff_us * 2)

    def _fast_enough(self, now_us: int) -> bool:
        stream = self.stream_rate
        return bool(stream and now_us - self._key_rate_us <= KEY_RATE_FRESH_US
                    and self._key_rate >= HEADROOM * stream)


    def _offer(self, size: int, now_us: int) -> None:
        """A frame offered (written or not) outside the hot path: the stream's rate, over
        windows of a few seconds (needed only once the viewer is slow)."""
        start = self._window_us
        if start is None:
            self._window_us = now_us
            self._window_bytes = size
            return
        self._window_bytes += size
        if now_us - start >= STREAM_WINDOW_US:
            self.stream_rate = self._window_bytes * 1e6 / (now_us - start)
            self._window_us = now_us
            self._window_bytes = 0
