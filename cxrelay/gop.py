"""The GOP cache: every frame since the last keyframe, so a new viewer gets a
picture at once instead of waiting up to a whole keyframe interval. Pure."""

from __future__ import annotations

DEFAULT_GOP_CACHE_BYTES = 16 * 1024 * 1024


class GopCache:
    """Encoded protocol frames since the last keyframe.

    Past ``max_bytes`` the cache gives up until the next keyframe: a new viewer
    then waits for it rather than the relay holding unbounded memory.
    """

    def __init__(self, max_bytes: int = DEFAULT_GOP_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._bytes = 0
        self._valid = False
        self.overflows = 0

    def add(self, message: bytes, *, keyframe: bool) -> int:
        """Cache a frame; returns how many frames an overflow just threw away."""
        if keyframe:
            self._frames = [message]
            self._bytes = len(message)
            self._valid = True
        elif not self._valid:
            return 0
        else:
            self._frames.append(message)
            self._bytes += len(message)
        return self._drop() if self._bytes > self.max_bytes else 0

    def _drop(self) -> int:
        dropped = len(self._frames)
        self._frames = []
        self._bytes = 0
        self._valid = False
        self.overflows += 1
        return dropped

    def snapshot(self) -> list[bytes]:
        """The frames a joining viewer needs, first one a keyframe; [] when unusable."""
        return list(self._frames) if self._valid else []

    def clear(self) -> None:
        self._frames = []
        self._bytes = 0
        self._valid = False

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)
