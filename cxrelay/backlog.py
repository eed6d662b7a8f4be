"""Per-viewer backlog policy: bounded by age and bytes, never by the camera. Pure.

A viewer that can't keep up must not slow the camera, the other viewers, or
grow memory. When its backlog passes a bound, everything it has queued is
dropped and it resumes at the next keyframe, flagged as a discontinuity.
Control messages (text) are never dropped: they are tiny and carry state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cxrelay.protocol import FLAG_DISCONTINUITY, with_flags

DEFAULT_MAX_DELAY = 1.0
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    """How far behind a viewer may fall before it is cut back to a keyframe."""

    max_delay: float = DEFAULT_MAX_DELAY  # seconds of frames queued
    max_bytes: int = DEFAULT_MAX_BYTES

    def new_backlog(self) -> Backlog:
        return Backlog(int(self.max_delay * 1e6), self.max_bytes)


@dataclass(slots=True)
class _Entry:
    message: bytes | str
    queued_us: int


class Backlog:
    def __init__(
        self, max_delay_us: int = int(DEFAULT_MAX_DELAY * 1e6), max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_delay_us = max_delay_us
        self.max_bytes = max_bytes
        self._queue: deque[_Entry] = deque()
        self._frame_bytes = 0
        self._frames = 0
        self._need_keyframe = False
        self._discontinuity = False
        self.dropped = 0
        self.overflows = 0

    def put_text(self, text: str, now_us: int) -> None:
        self._queue.append(_Entry(text, now_us))

    def put_frame(self, message: bytes, *, keyframe: bool, now_us: int) -> int:
        """Queue a frame; returns how many frames this call dropped."""
        dropped = 0
        if self._frames and self._over_bounds(len(message), now_us):
            dropped = self._drop_frames()
        if self._need_keyframe and not keyframe:
            self.dropped += 1
            return dropped + 1
        if self._need_keyframe:
            self._need_keyframe = False
            self._discontinuity = True
        if self._discontinuity:
            message = with_flags(message, FLAG_DISCONTINUITY)
            self._discontinuity = False
        self._queue.append(_Entry(message, now_us))
        self._frame_bytes += len(message)
        self._frames += 1
        return dropped

    def wait_for_keyframe(self) -> None:
        """Skip frames until the next keyframe (e.g. no GOP cache to catch up from)."""
        self._need_keyframe = True

    def _over_bounds(self, incoming: int, now_us: int) -> bool:
        if self._frame_bytes + incoming > self.max_bytes:
            return True
        oldest = next((e for e in self._queue if isinstance(e.message, bytes)), None)
        return oldest is not None and now_us - oldest.queued_us > self.max_delay_us

    def _drop_frames(self) -> int:
        kept = deque(e for e in self._queue if isinstance(e.message, str))
        dropped = self._frames
        self._queue = kept
        self._frame_bytes = 0
        self._frames = 0
        self._need_keyframe = True
        self.dropped += dropped
        self.overflows += 1
        return dropped

    def pop(self) -> bytes | str | None:
        if not self._queue:
            return None
        entry = self._queue.popleft()
        if isinstance(entry.message, bytes):
            self._frame_bytes -= len(entry.message)
            self._frames -= 1
        return entry.message

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    def __len__(self) -> int:
        return len(self._queue)
