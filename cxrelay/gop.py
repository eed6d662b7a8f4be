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

    def add(self, message: bytes, *, keyframe: bool) -> None:
        if keyframe:
            self._frames = [message]
            self._bytes = len(message)
            self._valid = self._bytes <= self.max_bytes
            if not self._valid:
                self._drop()
            return
        if not self._valid:
            return
        self._bytes += len(message)
        if self._bytes > self.max_bytes:
            self._drop()
            return
        self._frames.append(message)

    def _drop(self) -> None:
        self._frames = []
        self._bytes = 0
        self._valid = False
        self.overflows += 1

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
