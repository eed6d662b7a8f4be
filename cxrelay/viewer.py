"""A viewer session: one WebSocket, from the upgrade to its close.

The hub never awaits a viewer. It hands each live frame, framed once for
everybody (``wire.Outgoing``), to every viewer synchronously, on the loop,
through ``hub.Subscriber``; a viewer whose socket has room writes the bytes
straight to its transport, there and then: no task, no copy. Only a viewer
whose transport is backed up queues into its own bounded backlog, which its
drain task empties when the transport says it has drained. The backlog policy
bounds what piles up meanwhile, counting what already waits in the transport.

Every server-to-client data message (init, status, frames) goes through this
one path, so they stay in order; never call ``ws.send`` for them. websockets
writes only control frames itself (pongs, keepalive pings, the close), whole
frames between ours, and once it starts closing we write nothing more.

The rest of a session lives here too: its place in the per-client connection
count, its token's expiry, what it may send, the bounds on a client that stops
reading (drain timeout) or floods pings without reading the pongs, what it
asks for on the way (another stream, keyframes only, clock pings, its own
stats; each bounded), and its log lines.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import itertools
import socket
import termios
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from websockets.exceptions import ConnectionClosed

from cxrelay.access import Claims, ConnectionLimiter
from cxrelay.backlog import Backlog, Entry
from cxrelay.link import Admit, LinkLedger
from cxrelay.metrics import Metrics
from cxrelay.protocol import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    FLAG_CATCHUP,
    FLAG_DISCONTINUITY,
    KEYFRAMES,
    MAIN,
    Ping,
    ProtocolError,
    Select,
    Stats,
    parse_client_message,
    pong_message,
    with_flags,
    with_link,
)
from cxrelay.ratelimit import TokenBucket
from cxrelay.wire import HIGH_WATER, OPEN, Outgoing, RelayConnection, binary_frame, text_frame

if TYPE_CHECKING:
    from cxrelay.cameras import Camera
    from cxrelay.hub import CameraHub

log = structlog.get_logger("cxrelay.viewer")

DEFAULT_DRAIN_TIMEOUT = 30.0
# Pongs (and other replies) websockets may queue for a client whose socket is
# not draining before that client is closed: a ping flood that never reads.
MAX_UNREAD_REPLIES = 256 * 1024

_ids = itertools.count(1)
# Closes started from a timer: held here until done (the loop keeps only weak references).
_closing: set[asyncio.Future[None]] = set()

# What a client may send: messages in all (rate/s, burst), of them selects (each
# costs a GOP of catch-up frames), and stats reports (more are ignored).
MESSAGE_RATE = (20.0, 40.0)
SELECT_RATE = (1.0, 8.0)
STATS_RATE = (1.0, 3.0)


SIOCOUTQ = termios.TIOCOUTQ  # bytes in a TCP socket not yet acknowledged (unsent too)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# Unsent bytes the kernel may hold before the socket stops taking more: past that they
# wait in the transport, then the backlog, where a cut can still drop them.
NOTSENT_LOWAT = 128 * 1024
# After an outage TCP resends on an exponential backoff: 5 s down can mean 4 s more of
# silence once the link is back. Linux 6.15+ lets a socket cap that backoff (1 s is the
# least it takes); older kernels refuse the option and keep their 120 s.
TCP_RTO_MAX_MS = 44
RTO_MAX_MS = 1000


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def wall_us() -> int:
    return time.time_ns() // 1000


def unacked_probe(transport: Any) -> Callable[[], int] | None:
    """A function giving the bytes of this connection that the client has not
    acknowledged: the transport's buffer and the kernel socket's (sent or not).
    None when there is no TCP socket to ask (tests' fakes, Unix sockets)."""
    extra = getattr(transport, "get_extra_info", None)
    sock = extra("socket") if extra is not None else None
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return None
    fd = sock.fileno()
    with contextlib.suppress(OSError):  # an old kernel: the ledger counts it all anyway
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, RTO_MAX_MS)
    out = array.array("i", [0])

    def unacked() -> int:
        try:
            fcntl.ioctl(fd, SIOCOUTQ, out, True)
        except OSError:
            return int(transport.get_write_buffer_size())
        return int(transport.get_write_buffer_size()) + out[0]

    return unacked


def peer_address(connection: Any) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


class Viewer:
    """One viewer: a ``hub.Subscriber`` with its own bounded backlog, and the
    owner of its session (``watch``)."""

    def __init__(self, ws: RelayConnection, backlog: Backlog[Any], metrics: Metrics,
                 camera: str | None = None, *,
                 drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        self.id = f"v{next(_ids)}"
        self.ws = ws
        assert ws.raw is not None, "the connection has no transport yet"
        self.transport = ws.raw
        # Frames of the backlog are Outgoing; control messages their WebSocket bytes.
        self.backlog = backlog
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self.sent_frames = 0
        self.log = log.bind(**({"camera": camera} if camera else {}), viewer=self.id)
        # True while nothing waits: live frames may go straight to the transport.
        self._direct = False
        # What join() hands over before live frames: control messages (str) and
        # the GOP cache's frames (bytes, still to be flagged as catch-up).
        self._pending: deque[str | bytes] = deque()
        self._wake = asyncio.Event()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._trouble: str | None = None  # why we closed it, for its last log line
        ws.on_drained = self._drained
        ws.on_paused = self._paused
        ws.on_replies = self._replies
        # What the transport and the kernel still hold for this viewer, so that the
        # delay bound counts it too, and a link slower than the stream gets keyframes.
        self.link = LinkLedger(backlog.max_delay_us)
        self._unacked = unacked_probe(self.transport)
        self._ledger = self.link if self._unacked is not None else None
        self._status: str | None = None  # the last status sent, resent with the link state
        self._dropped_slow = metrics.frames_dropped.labels("slow_viewer")
        self._catchup_flag = FLAG_CATCHUP  # 0 for a still: shown, not skipped
        self.camera: Camera | None = None
        self.hub: CameraHub | None = None  # the stream watched
        self.keyframes = False
        self._limits = {name: TokenBucket(*rate) for name, rate in
                        (("message", MESSAGE_RATE), ("select", SELECT_RATE),
                         ("stats", STATS_RATE))}

    # --- Subscriber: the hub's calls, on the loop ---------------------------------------------

    def join(self, first: list[str], catchup: list[bytes], *, still: bool = False) -> None:
        """What a joining viewer gets before live frames: init/status, then the
        GOP cache (a still: its keyframe, to show). Kept aside rather than
        queued so the backlog's bounds apply to live frames only. Joining again
        (another stream) starts over: frames not yet written are forgotten."""
        # What the last stream left queued, its control messages too (an init
        # or status of the old stream after the new one's would mislead), is void.
        self.backlog.clear_frames()
        while self.backlog.pop() is not None:
            pass
        self._pending.clear()
        self._catchup_flag = 0 if still else FLAG_CATCHUP
        self._pending.extend(first)
        self._pending.extend(catchup)
        if not catchup:
            self.backlog.wait_for_keyframe()
        self._direct = False
        self._flush()

    def send_text(self, text: str) -> None:
        wire = text_frame(self._with_link(text))
        if self._direct and self._room() and self.ws.state is OPEN:
            self._write_text(wire)
            return
        self.backlog.put_text(wire, monotonic_us())
        self._direct = False
        self._flush()

    def send_frame(self, frame: Outgoing) -> int:
        # The hot path: once per viewer per frame, for most viewers all there is.
        if self._direct and self.transport.get_write_buffer_size() <= HIGH_WATER \
                and self.ws.state is OPEN:
            ledger = self._ledger
            if ledger is not None and not ledger.write_direct(len(frame.wire), frame.handed_us):
                return self._admit(frame, wall_us())
            self.transport.write(frame.wire)
            frame.delivered += 1
            self.sent_frames += 1
            return 0
        return self._queue_frame(frame)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    # --- the write path -------------------------------------------------------------------------

    def _room(self) -> bool:
        """May more bytes go to the transport now? (The one place that decides.)"""
        return self.transport.get_write_buffer_size() <= HIGH_WATER

    def _queue_frame(self, frame: Outgoing) -> int:
        if self.ws.state is not OPEN:
            self._abandon()
            return 0
        overflows = self.backlog.overflows
        dropped = self.backlog.put_frame(
            frame, len(frame.wire), keyframe=frame.keyframe, now_us=monotonic_us(),
            buffered=self.transport.get_write_buffer_size())
        if self.backlog.overflows != overflows:  # one line per overflow, not per frame
            self.log.info("frames dropped", frames=dropped, reason="slow viewer")
        self._direct = False
        self._flush()
        return dropped

    def _flush(self) -> None:
        """Write what waits, in order, while the transport has room; then, if
        nothing waits any more, let live frames go straight through again."""
        if self.ws.state is not OPEN:
            self._abandon()
            return
        while self._room():
            if self._pending:
                item = self._pending.popleft()
                if isinstance(item, str):
                    self._write_text(text_frame(self._with_link(item)))
                else:  # catch-up: aged from now, not from when the camera sent it
                    self._write_frame(with_flags(item, self._catchup_flag), None, wall_us())
                continue
            entry = self.backlog.pop()
            if entry is None:
                self._direct = not self.backlog.waiting_for_keyframe
                return
            self._write_entry(entry)

    def _write_entry(self, entry: Entry[Any]) -> None:
        if not entry.frame:
            self._write_text(entry.item)
            return
        frame: Outgoing = entry.item
        if self._ledger is not None:
            if self._admit(frame, wall_us(), backlog_flagged=entry.discontinuity):
                self._dropped_slow.inc()  # (live frames' drops are counted by the hub)
        elif entry.discontinuity:
            self._write_frame(with_flags(frame.message, FLAG_DISCONTINUITY), frame.ingest_us)
        else:
            self.transport.write(frame.wire)
            self.sent_frames += 1
            self.metrics.delivered(len(frame.wire), frame.ingest_us)

    def _write_frame(self, message: bytes, ingest_us: int | None,
                     aged_from_us: int | None = None) -> None:
        """A frame of this viewer's own (catch-up, discontinuity): framed here."""
        wire = binary_frame(message)
        self.transport.write(wire)
        if self._ledger is not None:
            self._ledger.wrote(len(wire), aged_from_us or ingest_us or wall_us(), wall_us())
        self.sent_frames += 1
        self.metrics.delivered(len(wire), ingest_us)  # catch-up (None): old by design

    def _write_text(self, wire: bytes) -> None:
        self.transport.write(wire)
        if self._ledger is not None:
            self._ledger.wrote(len(wire))  # counted, never aged

    # --- the link: what the kernel holds ----------------------------------------------------------

    def _admit(self, frame: Outgoing, now_us: int, backlog_flagged: bool = False) -> int:
        """A frame the hot path can't just write: sample the socket if due, and write
        the frame, flagged, or skip it, as the ledger says. Returns frames skipped."""
        ledger = self._ledger
        unacked = self._unacked
        assert ledger is not None and unacked is not None
        if ledger.needs_sample(now_us):
            ledger.sample(unacked(), now_us)
        slow = ledger.slow
        admit = ledger.admit(len(frame.wire), frame.keyframe, now_us)
        if ledger.slow != slow:
            self._link_changed()
        if admit is Admit.SKIP:
            self.backlog.dropped += 1
            return 1
        if admit is Admit.WRITE_DISCONTINUITY or backlog_flagged:
            self._write_frame(with_flags(frame.message, FLAG_DISCONTINUITY), frame.ingest_us,
                              frame.handed_us)
            return 0
        self.transport.write(frame.wire)
        ledger.wrote(len(frame.wire), frame.handed_us, now_us)
        self.sent_frames += 1
        self.metrics.delivered(len(frame.wire), frame.ingest_us)
        return 0

    def _with_link(self, text: str) -> str:
        """Statuses carry the link's state once it is slow (and remember the camera's)."""
        if text.startswith('{"type":"status"'):
            self._status = text
            if self.link.slow:
                return with_link(text, "slow")
        return text

    def _link_changed(self) -> None:
        """Tell the viewer its link carries only keyframes now, or the whole stream again
        (ahead of the frame that made the change: the status goes out first)."""
        link = self.link
        if link.slow and link.stream_rate is None and self.hub is not None:
            bitrate = self.hub.info().get("bitrate")  # until the ledger has measured it
            link.stream_rate = bitrate / 8 if bitrate else None
        rate = None if link.rate is None else round(link.rate * 8 / 1000)
        stream = None if link.stream_rate is None else round(link.stream_rate * 8 / 1000)
        self.log.info("link slow: keyframes only" if link.slow
                      else "link fast enough: every frame",
                      link_kbps=rate, stream_kbps=stream, frames_skipped=link.skipped)
        if self._status is not None:
            self._write_text(text_frame(with_link(self._status, "slow" if link.slow
                                                  else "ok")))

    def _abandon(self) -> None:
        """websockets is closing the connection: nothing more may be written."""
        self._direct = False
        self._pending.clear()
        self.backlog.clear_frames()
        while self.backlog.pop() is not None:
            pass

    def _drained(self) -> None:
        """The transport drained to its low-water mark (asyncio's resume_writing)."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if not self._direct:
            self._wake.set()

    async def drain(self) -> None:
        """The drain task: only a backed-up viewer ever wakes it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._flush()

    # --- clients that stop reading ----------------------------------------------------------------

    def _paused(self) -> None:
        """The transport's buffer went above its high-water mark."""
        if self._stall_timer is None and self.drain_timeout > 0:
            self._stall_timer = asyncio.get_running_loop().call_later(
                self.drain_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        self._close_soon(CLOSE_POLICY, "not reading",
                         f"its socket has not drained for {self.drain_timeout:g} s")

    def _replies(self, unread: int) -> None:
        """websockets queued more answers (pongs) for a client whose socket is not draining."""
        if unread > MAX_UNREAD_REPLIES and self._trouble is None:
            self.transport.pause_reading()  # its pings now wait in its own socket
            self._close_soon(CLOSE_POLICY, "too many pings",
                             "it sends pings and does not read the pongs")

    def _close_soon(self, code: int, reason: str, why: str) -> None:
        if self._trouble is not None:
            return
        self._trouble = why
        self.log.warning("viewer closed", reason=why, code=code)
        self._abandon()
        task = asyncio.ensure_future(self.ws.close(code, reason))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    # --- the session ----------------------------------------------------------------------------

    async def watch(self, camera: Camera, *, claims: Claims | None,
                    limiter: ConnectionLimiter, stream: str = MAIN,
                    keyframes: bool = False) -> None:
        """The whole session of an admitted viewer: counted against its
        client's limit, attached to the stream's hub, fed until either side
        closes (or its token expires), then detached."""
        ws = self.ws
        peer = peer_address(ws)
        if not limiter.acquire(peer):  # raced past the check before the upgrade
            await ws.close(CLOSE_TRY_AGAIN, "too many connections")
            return
        self.log.info("viewer joined", peer=peer,
                      **({"subject": claims.subject} if claims and claims.subject else {}))
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        drain = loop.create_task(self._drain())
        self.camera = camera
        self.keyframes = keyframes
        hub = self.hub = camera.attach(self, stream, keyframes=keyframes)
        self.metrics.viewers.inc()
        expiry = None
        if claims is not None:
            expiry = loop.call_later(max(0.0, claims.remaining()), self._expire)
        reason = "closed"
        try:
            reason = await self._receive()
        finally:
            drain.cancel()
            if expiry is not None:
                expiry.cancel()
            if self._stall_timer is not None:
                self._stall_timer.cancel()
            (self.hub or hub).detach(self)
            limiter.release(peer)
            self.metrics.viewers.dec()
            if self._trouble is not None:
                reason = self._trouble
            elif ws.close_code is not None and reason == "closed":
                reason = f"closed {ws.close_code}" + (f" {ws.close_reason}" if ws.close_reason
                                                       else "")
            self.log.info("viewer left", reason=reason, frames=self.sent_frames,
                          seconds=round(time.monotonic() - started, 1))

    def _expire(self) -> None:
        task = asyncio.ensure_future(self.ws.close(CLOSE_POLICY, "token expired"))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _drain(self) -> None:
        try:
            await self.drain()
        except Exception:
            self.log.exception("viewer failed")
            await self.ws.close(CLOSE_INTERNAL, "internal error")

    async def _receive(self) -> str:
        """Clients need send nothing. Text they don't know is ignored (forward
        compatibility), binary is refused, and a client that breaks the
        protocol or floods is closed with 1008. Reading also keeps pings and
        closes flowing."""
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self.ws.close(CLOSE_UNSUPPORTED, "binary messages are not accepted")
                    return "sent a binary message"
                if (refusal := self._on_text(message)) is not None:
                    await self.ws.close(CLOSE_POLICY, refusal)
                    return refusal
        except ConnectionClosed:
            pass
        return "closed"

    def _on_text(self, text: str) -> str | None:
        """Act on a client's text message; returns why to close, if it must."""
        now = time.monotonic()
        if not self._limits["message"].take(now):
            return "too many messages"
        try:
            message = parse_client_message(text)
        except ProtocolError as exc:
            return str(exc)
        if self.ws.state is not OPEN:
            return None  # closing: take nothing more on
        if isinstance(message, Select):
            if not self._limits["select"].take(now):
                return "too many select messages"
            self._select(message)
        elif isinstance(message, Stats):
            if self._limits["stats"].take(now):
                self._stats(message)
        elif isinstance(message, Ping):
            self.send_text(pong_message(message.id, time.time_ns() // 1000))
        return None

    def _select(self, select: Select) -> None:
        """Move to another stream, or between every frame and keyframes only:
        the new stream's init, its GOP cache, then live frames."""
        assert self.camera is not None and self.hub is not None
        hub = self.camera.hub(select.stream) if select.stream else self.hub
        keyframes = select.frames == KEYFRAMES if select.frames else self.keyframes
        if hub is self.hub and keyframes == self.keyframes:
            return
        self.hub.detach(self)
        self.hub, self.keyframes = hub, keyframes
        hub.attach(self, keyframes=keyframes)
        self.log.debug("viewer switched", stream=hub.stream,
                       frames="keyframes" if keyframes else "all")

    def _stats(self, stats: Stats) -> None:
        """A player's own view, into the metrics of the stream it watches."""
        assert self.hub is not None
        labels = (self.hub.name, self.hub.stream)
        if stats.latency_ms:
            histogram = self.metrics.glass_latency.labels(*labels)
            for ms in stats.latency_ms:
                histogram.observe(ms / 1000)
        if stats.dropped:
            self.metrics.player_dropped.labels(*labels).inc(stats.dropped)
