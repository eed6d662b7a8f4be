"""What every source shares: a thread of its own, a reconnect loop with backoff,
the stream's ``Ingest`` run in that thread, and a thread-safe hand-off of whole
pictures to the event loop.

PyAV's blocking reads release the GIL, so one thread per camera costs little
and never stalls the event loop. The thread rejoins fragments and assembles
access units itself, so the loop is woken once per picture, not once per RTP
packet. The thread only ever talks to the loop through
``loop.call_soon_threadsafe``; the sink's methods run on the loop.

The idle flush (a picture held while the slice layout is unknown, or a
fragment that may go on) must fire while the thread is blocked in a read,
which no read timeout can do. So it is a loop timer: the thread asks for one
when a push leaves something waiting and none is set; the timer re-arms itself
while packets keep moving the deadline, and flushes the Ingest under the lock
the thread pushes under. It waits about one frame interval (``Ingest.hold_us``),
never a few milliseconds: it runs on the loop while this thread may be starved
of CPU with the rest of the picture unread, and would cut the picture short.
Once the layout is known a picture leaves with its last slice and no timer is
needed; in a flowing stream the next picture's first packet ends any wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from cxrelay.backoff import Backoff
from cxrelay.config import CameraConfig
from cxrelay.ingest import Ingest, IngestResult, StreamInfo
from cxrelay.redact import redact_text, url_secrets

log = structlog.get_logger("cxrelay.source")

# A session that delivered frames for this long counts as a success: the next
# failure starts the backoff from the beginning again.
HEALTHY_AFTER = 10.0
# uvloop's timers count whole milliseconds and fire up to one early by
# time.monotonic(); an idle flush re-armed for what is left would fire again at
# once, a spin of some twenty callbacks a picture. Within this of its deadline
# it is due (against a hold of 25 ms or more).
TIMER_SLACK = 0.001


class SourceError(Exception):
    """An expected camera failure, with a reason fit for operators (no secrets)."""


class SourceSink(Protocol):
    """Receives a source's events, on the event loop."""

    def source_connecting(self, source: Source) -> None: ...
    def source_connected(self, source: Source, info: StreamInfo) -> None: ...
    def source_pictures(self, source: Source, result: IngestResult) -> None:
        """Whole pictures (with any new stream parameters), or drops, or both."""
    def source_failed(self, source: Source, reason: str) -> None: ...


def now_us() -> int:
    return time.time_ns() // 1000


class Source:
    """Base class; subclasses implement ``session()`` for one connection."""

    kind = "source"
    hold_us: int | None = None  # how long a picture may wait for more packets (see Ingest)

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
        self._ended = asyncio.Event()  # set from the thread, through the loop, as it ends
        self._thread = threading.Thread(
            target=self._run, name=f"cxrelay-{self.kind}-{camera.name}", daemon=True
        )
        self._secrets = url_secrets(camera.url)
        # The thread pushes into the Ingest and the loop's idle timer flushes
        # it, both under the lock; each queues what it hands the sink while
        # holding it, so the sink gets pictures in the order they were made.
        self._lock = threading.Lock()
        self._ingest: Ingest | None = None  # the connected stream's
        self._flush_at: float | None = None  # time.monotonic() of the idle flush
        # A camera can stream without end and never send a picture (garbage, another
        # codec in disguise): past read_timeout without one, the session ends.
        self._picture_at = 0.0  # time.monotonic() of the session's last whole picture
        self._timer_armed = False  # a timer is set on the loop, or on its way there
        self._timer: asyncio.TimerHandle | None = None  # touched on the loop only

    # --- called from the event loop ---

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop. It closes its container itself, at its next
        read or read timeout: closing from here while it reads would crash."""
        self._stopping.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; False if it is still
        blocked in a read (it is a daemon thread and will not hold up exit)."""
        # Told by the thread as it ends, not joined in a worker thread: a join
        # blocked there would hold up the process's exit (asyncio waits for
        # its executor's threads).
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout)
        if self._ended.is_set():
            self._thread.join()  # it has returned from its work: only its exit is left
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
        """Have the loop call ``callback(self, *args)``."""
        self._call(callback, self, *args)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._stopping.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._stopping.set()

    def connected(self, info: StreamInfo) -> None:
        """A session streams: its packets go to a new Ingest from now on."""
        with self._lock:
            self._ingest = Ingest(info, hold_us=self.hold_us)
            self._flush_at = None
            self._picture_at = time.monotonic()
            self.emit(self._sink.source_connected, info)

    def packet(self, data: bytes, pts_us: int, received_us: int) -> None:
        """One packet as read, and the wall clock (µs) it arrived."""
        with self._lock:
            ingest = self._ingest
            if ingest is None:
                return
            result = ingest.push(data, pts_us, received_us)
            if result.frames or result.drops:
                self.emit(self._sink.source_pictures, result)
            if result.frames:
                self._picture_at = time.monotonic()
            elif time.monotonic() - self._picture_at > self.camera.read_timeout:
                raise SourceError(f"no picture in {self.camera.read_timeout:g} s: data "
                                  "arrives, but none of it is video the relay can read")
            if result.deadline_us is None:
                self._flush_at = None
                return
            self._flush_at = time.monotonic() + (result.deadline_us - received_us) / 1e6
            if not self._timer_armed:
                self._timer_armed = True
                self._call(self._arm_idle_flush)

    def _end_stream(self) -> None:
        """The session is over: what it left half-assembled is dropped."""
        with self._lock:
            self._ingest = None
            self._flush_at = None

    # --- the idle flush, on the loop ---

    def _arm_idle_flush(self) -> None:
        with self._lock:
            flush_at = self._flush_at
            if flush_at is None or self._stopping.is_set():
                self._timer_armed = False
                return
        self._timer = self._loop.call_later(max(0.0, flush_at - time.monotonic()),
                                            self._idle_flush)

    def _idle_flush(self) -> None:
        self._timer = None
        with self._lock:
            flush_at, ingest = self._flush_at, self._ingest
            if flush_at is None or ingest is None or self._stopping.is_set():
                self._timer_armed = False
                return
            wait = flush_at - time.monotonic()
            if wait > TIMER_SLACK:  # packets came meanwhile and moved the deadline
                self._timer = self._loop.call_later(wait, self._idle_flush)
                return
            self._timer_armed = False
            self._flush_at = None
            result = ingest.flush()
            if result.frames:
                self._picture_at = time.monotonic()
            if result.frames or result.drops:
                # Queued, not called: what the thread queued before this flush
                # took the lock must reach the sink first.
                self._loop.call_soon(self._sink.source_pictures, self, result)

    def session(self) -> None:
        raise NotImplementedError

    def describe_error(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        try:
            self._sessions()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._ended.set)

    def _sessions(self) -> None:
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
            self._end_stream()
            if self._stopping.is_set():
                break
            if time.monotonic() - started > HEALTHY_AFTER:
                self._backoff.reset()
            self.emit(self._sink.source_failed, redact_text(reason, self._secrets))
            self.sleep(self._backoff.next_delay())
