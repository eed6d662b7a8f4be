"""Per-viewer backlog policy: bounded by age and bytes, never by the camera. Pure.

A viewer that can't keep up must not slow the camera, the other viewers, or
grow memory. When its backlog passes a bound, everything it has queued is
dropped and it resumes at the next keyframe, flagged as a discontinuity.
Control messages (text) are never dropped: they are tiny and carry state.

A viewer only queues here once its socket is backed up; what already sits in
the socket's write buffer counts against the byte bound too (``buffered``).
Items are opaque (the viewer's shared, framed messages): the backlog sees only
their sizes, and says which frame must carry the discontinuity flag.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

DEFAULT_MAX_DELAY = 1.0
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    """How far behind a viewer may fall before it is cut back to a keyframe."""

    max_delay: float = DEFAULT_MAX_DELAY  # seconds of frames queued
    max_bytes: int = DEFAULT_MAX_BYTES

    def new_backlog(self) -> Backlog[Any]:
        return Backlog(int(self.max_delay * 1e6), self.max_bytes)


@dataclass(slots=True)
class Entry(Generic[T]):
    item: T
    queued_us: int
    size: int  # bytes of a frame; 0 for a control message
    frame: bool
    discontinuity: bool = False  # the first frame after a drop: flag it so


class Backlog(Generic[T]):
    def __init__(
        self, max_delay_us: int = int(DEFAULT_MAX_DELAY * 1e6), max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_delay_us = max_delay_us
        self.max_bytes = max_bytes
        self._queue: deque[Entry[T]] = deque()
        self._frame_bytes = 0
        self._frames = 0
        self._need_keyframe = False
        self._discontinuity = False
        self.dropped = 0
        self.overflows = 0

    def put_text(self, item: T, now_us: int) -> None:
        self._queue.append(Entry(item, now_us, 0, False))

    def put_frame(self, item: T, size: int, *, keyframe: bool, now_us: int,
                  buffered: int = 0) -> int:
        """Queue a frame of ``size`` bytes, with ``buffered`` bytes already
        waiting in the socket; returns how many frames this call dropped."""
        dropped = 0
        if self._frames and self._over_bounds(size + buffered, now_us):
            dropped = self._drop_frames()
        if self._need_keyframe and not keyframe:
            self.dropped += 1
            return dropped + 1
        if self._need_keyframe:
            self._need_keyframe = False
            self._discontinuity = True
        self._queue.append(Entry(item, now_us, size, True, self._discontinuity))
        self._discontinuity = False
        self._frame_bytes += size
        self._frames += 1
        return dropped

    def wait_for_keyframe(self) -> None:
        """Skip frames until the next keyframe (e.g. no GOP cache to catch up from)."""
        self._need_keyframe = True

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def clear_frames(self) -> None:
        """Forget queued frames, keeping control messages, without counting
        them as drops (the viewer starts over, e.g. on another stream)."""
        self._queue = deque(e for e in self._queue if not e.frame)
        self._frame_bytes = 0
        self._frames = 0
        self._need_keyframe = False
        self._discontinuity = False

    def _over_bounds(self, incoming: int, now_us: int) -> bool:
        if self._frame_bytes + incoming > self.max_bytes:
            return True
        oldest = next((e for e in self._queue if e.frame), None)
        return oldest is not None and now_us - oldest.queued_us > self.max_delay_us

    def _drop_frames(self) -> int:
        dropped = self._frames
        self.clear_frames()
        self._need_keyframe = True
        self.dropped += dropped
        self.overflows += 1
        return dropped

    def pop(self) -> Entry[T] | None:
        if not self._queue:
            return None
        entry = self._queue.popleft()
        if entry.frame:
            self._frame_bytes -= entry.size
            self._frames -= 1
        return entry

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    def __len__(self) -> int:
        return len(self._queue)
