"""What every source shares: a thread of its own, a reconnect loop with backoff,
and a thread-safe hand-off of packets to the event loop.

PyAV's blocking reads release the GIL, so one thread per camera costs little
and never stalls the event loop. The thread only ever talks to the loop
through ``loop.call_soon_threadsafe``; the sink's methods run on the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from cxrelay.backoff import Backoff
from cxrelay.config import CameraConfig
from cxrelay.ingest import StreamInfo
from cxrelay.redact import redact_text, url_secrets

log = structlog.get_logger("cxrelay.source")

# A session that delivered frames for this long counts as a success: the next
# failure starts the backoff from the beginning again.
HEALTHY_AFTER = 10.0


class SourceError(Exception):
    """An expected camera failure, with a reason fit for operators (no secrets)."""


class SourceSink(Protocol):
    """Receives a source's events, on the event loop."""

    def source_connecting(self, source: Source) -> None: ...
    def source_connected(self, source: Source, info: StreamInfo) -> None: ...
    def source_packet(self, source: Source, data: bytes, pts_us: int, ingest_us: int) -> None: ...
    def source_failed(self, source: Source, reason: str) -> None: ...


def now_us() -> int:
    return time.time_ns() // 1000


class Source:
    """Base class; subclasses implement ``session()`` for one connection."""

    kind = "source"

    def __init__(
        self,
        camera: CameraConfig,
        sink: SourceSink,
        loop: asyncio.AbstractEventLoop,
        backoff: Backoff | None = None,
    ) -> None:
        self.camera = camera
        self._sink = sink
        self._loop = loop
        self._backoff = backoff or Backoff()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cxrelay-{self.kind}-{camera.name}", daemon=True
        )
        self._secrets = url_secrets(camera.url)

    # --- called from the event loop ---

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop. It closes its container itself, at its next
        read or read timeout: closing from here while it reads would crash."""
        self._stopping.set()

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; False if it is still
        blocked in a read (it is a daemon thread and will not hold up exit)."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)
        return not self._thread.is_alive()

    # --- called from the source thread ---

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep in the source thread; True if asked to stop meanwhile."""
        return self._stopping.wait(seconds)

    def emit(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._stopping.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(callback, self, *args)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._stopping.set()

    def connected(self, info: StreamInfo) -> None:
        self.emit(self._sink.source_connected, info)

    def packet(self, data: bytes, pts_us: int, ingest_us: int) -> None:
        self.emit(self._sink.source_packet, data, pts_us, ingest_us)

    def session(self) -> None:
        raise NotImplementedError

    def describe_error(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.emit(self._sink.source_connecting)
            started = time.monotonic()
            try:
                self.session()
                reason = "end of stream"
            except SourceError as exc:
                reason = str(exc)
            except Exception as exc:  # a source must never die: it retries
                reason = self.describe_error(exc)
            if self._stopping.is_set():
                break
            if time.monotonic() - started > HEALTHY_AFTER:
                self._backoff.reset()
            self.emit(self._sink.source_failed, redact_text(reason, self._secrets))
            self.sleep(self._backoff.next_delay())
