"""The fan-out's place on the event loop: a few milliseconds at a time.

Handing one frame to a thousand viewers is a thousand socket writes, tens of
milliseconds in one go; thirty cameras' frames arriving together are as many.
Everything else on the loop (handshakes, pings, the other cameras, a viewer's
drain task) would wait that long. So the hubs don't loop over their viewers
themselves: each frame (or control message) becomes a ``Job`` in the loop's one
``Fanout`` queue, and the queue runs for at most ``budget`` seconds per loop
iteration, then yields to everything else and carries on in the next one.

One queue for all hubs, first in first out, so every viewer gets each hub's
messages in order. A job holds the list of viewers it was made for; a viewer
that left the hub since, or joined after (its join brought it the GOP cache or
the current state instead), is skipped: the hub numbers its jobs and
remembers the number each viewer joined at.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from cxrelay.hub import Subscriber
    from cxrelay.wire import Outgoing

log = structlog.get_logger("cxrelay.fanout")

BUDGET = 0.002  # seconds of fan-out per loop iteration
BATCH = 16  # viewers between two looks at the clock


class Job:
    """One message of one hub for a list of viewers; ``run`` until done."""

    __slots__ = ("done", "dropped", "index", "joined", "seq", "viewers")

    def __init__(self, seq: int, viewers: list[Subscriber],
                 joined: dict[Subscriber, int], done: Callable[[Job], None] | None) -> None:
        self.seq = seq
        self.viewers = viewers
        self.joined = joined  # the hub's viewers and the job number each joined at
        self.index = 0
        self.dropped = 0
        self.done = done

    def run(self, deadline: float) -> bool:
        """Hand the message to viewers until ``deadline``; True when all have it."""
        # The relay's hottest loop: locals only, the clock read once per batch.
        viewers, joined, seq, deliver = self.viewers, self.joined, self.seq, self.deliver
        i, n = self.index, len(viewers)
        clock = time.perf_counter
        dropped = 0
        while i < n:
            stop = min(n, i + BATCH)
            for viewer in viewers[i:stop]:
                if joined.get(viewer, seq) < seq:
                    try:
                        dropped += deliver(viewer)
                    except Exception:  # a bug: the other viewers still get it
                        log.exception("fan-out to a viewer failed")
            i = stop
            if clock() >= deadline:
                break
        self.index = i
        self.dropped += dropped
        return i >= n

    def deliver(self, viewer: Subscriber) -> int:
        raise NotImplementedError


class FrameJob(Job):
    __slots__ = ("frame",)

    def __init__(self, seq: int, viewers: list[Subscriber], joined: dict[Subscriber, int],
                 frame: Outgoing, done: Callable[[Job], None] | None = None) -> None:
        super().__init__(seq, viewers, joined, done)
        self.frame = frame

    def run(self, deadline: float) -> bool:
        # Once per slice: a slice ends at the first batch after a stall, so only
        # the rest of that batch can get a time older than its write.
        self.frame.handed_us = time.time_ns() // 1000
        return super().run(deadline)

    def deliver(self, viewer: Subscriber) -> int:
        return viewer.send_frame(self.frame)


class TextJob(Job):
    __slots__ = ("text_for",)

    def __init__(self, seq: int, viewers: list[Subscriber], joined: dict[Subscriber, int],
                 text_for: Callable[[Subscriber], str]) -> None:
        super().__init__(seq, viewers, joined, None)
        self.text_for = text_for

    def deliver(self, viewer: Subscriber) -> int:
        viewer.send_text(self.text_for(viewer))
        return 0


class Fanout:
    """The loop's queue of fan-out jobs (one per loop: ``Fanout.of(loop)``)."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Fanout] = \
        weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float = BUDGET) -> None:
        self.loop = loop
        self.budget = budget
        self._queue: deque[Job] = deque()
        self._scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Fanout:
        fanout = cls._by_loop.get(loop)
        if fanout is None:
            fanout = cls._by_loop[loop] = cls(loop)
        return fanout

    def push(self, job: Job) -> None:
        self._queue.append(job)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._work(time.perf_counter() + self.budget)
        if self._queue and not self._scheduled:
            # call_soon from a callback runs in the next iteration, after the
            # I/O and timers that became ready meanwhile.
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _work(self, deadline: float) -> None:
        queue = self._queue
        while queue:
            job = queue[0]
            if not job.run(deadline):
                return
            queue.popleft()
            if job.done is not None:
                job.done(job)

    def flush(self) -> None:
        """Run every job now, with no time limit (tests)."""
        self._work(float("inf"))

    def __len__(self) -> int:
        return len(self._queue)

