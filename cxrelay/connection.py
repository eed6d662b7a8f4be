"""Each TCP connection from its accept to the answer to its request: what
happens before websockets' handshake, and around it. The routes and the
answers themselves are server.py's.

- Admission when the connection is accepted, before a byte is read. A
  connection counts as a *handshake* until its request is answered. Those
  are bounded in total (``max_handshakes``), and the process keeps some
  file descriptors spare: when either is reached, the oldest handshake, if
  it has waited STALE seconds, is cut (408) to make room, else the newcomer
  gets 503. Whoever holds connections without finishing them ages first,
  so clients who send their request at once still get in. Per client
  address (``max_handshakes_per_client``), a connection past the bound gets
  503 at once when half the descriptors are in use; before that it is on
  probation, PROBATION seconds to send its whole request (a burst of quick
  requests is no attack). No client can take every descriptor any more,
  starving the viewers, /healthz and the cameras.
- One request per connection. websockets hands what follows a request's head
  to its frame parser, so a second, pipelined request broke the first one's
  answer; here the head alone goes to websockets, and what follows waits for
  the outcome: WebSocket frames once upgraded, dropped otherwise (every plain
  answer says ``Connection: close``).
- GET and HEAD only: any other method gets 405 here (websockets' parser
  would drop a request with a body without answering at all).

Why the descriptors must never run out rather than be handled when they do:
on EMFILE, uvloop (libuv) closes a descriptor it keeps in reserve, accepts
and at once closes every connection waiting in the backlog (clients see a
reset, nothing is logged), and reopens the reserve; should that fail, the
next EMFILE reaches uvloop's listen callback, which closes the listening
socket for good, silently. asyncio's own loop logs "socket.accept() out of
system resource" and stops accepting for a second. Neither answers anyone.

A refusal made here is a plain-text response, then a short linger (the
connection half-closed, what the client sends discarded), so that the client
reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
import weakref
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import structlog
from websockets.asyncio.server import Server
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from cxrelay.access import Handshakes
from cxrelay.wire import RelayConnection

log = structlog.get_logger("cxrelay.server")

PROBATION = 2.0  # seconds a connection past a handshake bound has to send its request
STALE = 2.0  # seconds in its handshake after which a connection may be cut to make room
LINGER = 1.0  # seconds a refused connection stays half-closed for its client to read the answer
MAX_LINGERING = 64  # refused connections lingering at once; past that they are closed at once
# The listening socket's backlog: the event loop accepts what waits there in
# one go, before any connection is looked at, so that many descriptors must
# be free at any time on top of SPARE_DESCRIPTORS.
LISTEN_BACKLOG = 100
# Kept free for the cameras, the logs, and a backlog's worth of connections
# accepted at once before they can be refused.
SPARE_DESCRIPTORS = 32 + LISTEN_BACKLOG
MEASURE_EVERY = 1.0  # seconds between two counts of the process's open descriptors
REFUSALS_LOGGED_EVERY = 10.0  # seconds: a flood of refusals is one line per period
MAX_REQUEST_LINE = 8192  # websockets' own limit; past it, its parser answers 414
MAX_HELD = 64 * 1024  # bytes after a request's head kept until the handshake's outcome;
# past that, reading pauses until then
METHODS = (b"GET", b"HEAD")


def descriptors_needed(viewers: int, handshakes: int, cameras: int) -> int:
    """Descriptors the relay may need at once: one per viewer and per
    connection in its handshake, a few per camera (RTSP over UDP: a TCP
    session and an RTP/RTCP pair per stream), the spare, and refused
    connections lingering. docs/security.md says the same to operators."""
    return SPARE_DESCRIPTORS + MAX_LINGERING + viewers + handshakes + 6 * cameras


def _count_open_descriptors() -> int | None:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the directory listdir opened
        except FileNotFoundError:
            continue
    return None


class Descriptors:
    """Whether the process is short of file descriptors: its soft limit
    (RLIMIT_NOFILE) against those open, counted at most once a second, or at
    every new connection once close to the limit, in between adding the
    sockets admission holds."""

    def __init__(self, spare: int = SPARE_DESCRIPTORS,
                 count: Callable[[], int | None] = _count_open_descriptors) -> None:
        self.spare = spare
        self._count = count
        self._others = 0  # descriptors open that are not admission's sockets
        self._measured_at = -MEASURE_EVERY
        self.limit = 0
        self.in_use = 0

    @property
    def pressed(self) -> bool:
        """Half the descriptors in use (as of the last ``short()``)."""
        return bool(self.limit) and 2 * self.in_use >= self.limit

    def short(self, sockets: int, now: float) -> bool:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return False
        self.limit = soft
        near = sockets + self._others + 2 * self.spare >= soft
        if near or now - self._measured_at >= MEASURE_EVERY:
            try:
                counted = self._count()
            except OSError:  # EMFILE: even a directory can't be opened
                self.in_use = soft
                return True
            if counted is not None:
                self._others = max(0, counted - sockets)
                self._measured_at = now
        self.in_use = sockets + self._others
        return self.in_use + self.spare >= soft


class Admission:
    """What every connection of one server passes at its accept: the counts
    of sockets and handshakes, and the rate-limited log of refusals."""

    def __init__(self, handshakes: Handshakes, server_header: str | None = None,
                 descriptors: Descriptors | None = None) -> None:
        self.handshakes = handshakes
        self.server_header = server_header
        self.descriptors = descriptors or Descriptors()
        self.sockets = 0  # connections accepted and not yet closed
        self.live: set[AdmittedConnection] = set()  # connected (past TLS), not yet closed
        # In their handshake and still waiting for their request, oldest first
        # (dicts keep their order), since when: those that may be cut to make room.
        self.pending: dict[AdmittedConnection, float] = {}
        self.lingering = 0
        self.refused = 0  # since the start, at the accept (for tests and the soak)
        self._unlogged = 0
        self._latest: str = ""
        self._logged_at = -REFUSALS_LOGGED_EVERY
        self._flush: asyncio.TimerHandle | None = None

    def opened(self) -> Callable[[], None]:
        """Count one accepted socket; the callable uncounts it (once)."""
        self.sockets += 1
        done = False

        def closed() -> None:
            nonlocal done
            if not done:
                done = True
                self.sockets -= 1

        return closed

    def admit(self, connection: AdmittedConnection) -> tuple[str | None, bool]:
        """``(None, False)``: admitted, its handshake counted.
        ``(reason, False)``: past its client's bound, counted, on probation.
        ``(reason, True)``: refused now, nothing counted.

        When the server is full (handshakes in total, or descriptors), the
        oldest handshake, if it has waited STALE seconds, is cut to make room:
        whoever holds connections open without finishing them ages first, so
        newcomers who send their request at once still get in."""
        now = time.monotonic()
        peer = connection.peer
        short = self.descriptors.short(self.sockets, now)
        handshakes = self.handshakes
        full = bool(handshakes.max_total) and handshakes.total >= handshakes.max_total
        if (short or full) and not self._cut_stale(now):
            reason = "server busy: out of file descriptors" if short else \
                f"too many connections in their handshake (maximum {handshakes.max_total})"
            self.note_refusal(reason, peer)
            return reason, True
        over = handshakes.begin(peer)
        if over is not None and self.descriptors.pressed:
            handshakes.end(peer)
            self.note_refusal(over, peer)
            return over, True
        self.pending[connection] = now
        return over, False

    def _cut_stale(self, now: float) -> bool:
        oldest = next(iter(self.pending.items()), None)
        if oldest is None or now - oldest[1] < STALE:
            return False
        connection = oldest[0]
        reason = f"request not received within {STALE:g} s, and the server needed the room"
        self.note_refusal(reason, connection.peer)
        connection.refuse(HTTPStatus.REQUEST_TIMEOUT, reason)  # ends its handshake
        return True

    def ended(self, connection: AdmittedConnection) -> None:
        """Its handshake is over (answered, refused, or closed)."""
        self.pending.pop(connection, None)
        self.handshakes.end(connection.peer)

    def note_refusal(self, reason: str, peer: str | None) -> None:
        self.refused += 1
        self._unlogged += 1
        self._latest = reason
        now = time.monotonic()
        if now - self._logged_at >= REFUSALS_LOGGED_EVERY:
            self._log(peer)
        elif self._flush is None:  # the rest of this period, in one line at its end
            self._flush = asyncio.get_running_loop().call_later(
                self._logged_at + REFUSALS_LOGGED_EVERY - now, self._log, None)

    def _log(self, peer: str | None) -> None:
        self._flush = None
        if not self._unlogged:
            return
        log.warning("connections refused", refused=self._unlogged, reason=self._latest,
                    **({"peer": peer} if peer else {}),
                    descriptors_in_use=self.descriptors.in_use,
                    descriptor_limit=self.descriptors.limit,
                    handshakes=self.handshakes.total)
        self._unlogged = 0
        self._logged_at = time.monotonic()

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._log(None)

    def abort(self) -> None:
        """Cut every connection still open (the end of a shutdown's grace)."""
        for connection in list(self.live):
            connection.transport.abort()


class AdmittedConnection(RelayConnection):
    """The video path's connection (wire.py), with the admission, one request
    per connection and the method check described above."""

    def __init__(self, protocol: ServerProtocol, server: Server, *, admission: Admission,
                 **kwargs: Any) -> None:
        super().__init__(protocol, server, **kwargs)
        self.admission = admission
        self.peer = "unknown"
        release = admission.opened()
        # connection_lost() releases it; a TLS handshake that fails never gets
        # that far, and the object going away is then the only sign.
        self._release = release
        weakref.finalize(self, release)
        self._counted = False  # in admission.handshakes
        self._probation: asyncio.TimerHandle | None = None
        self._lingering = False
        self._refused: asyncio.Future[None] = self.loop.create_future()
        self._line: bytearray | None = bytearray()  # the request line, until its method is known
        self._tail = b""  # the last bytes of the head read so far (its end may straddle reads)
        self._held: bytearray | None = None  # after the head, until the handshake's outcome
        self._passing = False  # upgraded: everything goes to websockets
        self._paused = False  # reading paused while too much waits in _held
        self._dropping = False  # answered or refused: nothing more is read

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.admission.live.add(self)
        address = transport.get_extra_info("peername")
        self.peer = str(address[0]) if address else "unknown"
        reason, now = self.admission.admit(self)
        if now:
            assert reason is not None
            self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, reason)
            return
        self._counted = True
        if reason is not None:
            self._probation = self.loop.call_later(PROBATION, self._too_slow, reason)

    def _too_slow(self, reason: str) -> None:
        """Past a bound, and still no whole request."""
        self._probation = None
        if self._held is None and not self._refused.done():
            self.admission.note_refusal(reason, self.peer)
            self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, reason)

    def data_received(self, data: bytes) -> None:
        if self._passing:
            super().data_received(data)
            return
        if self._dropping:
            return
        if self._held is not None:
            self._held += data
            if len(self._held) > MAX_HELD and not self._paused:
                # A client that won't wait for the answer: TCP holds the rest.
                self._paused = True
                self.transport.pause_reading()
            return
        if self._line is not None and not self._method_allowed(data):
            return
        joined = self._tail + data
        end = joined.find(b"\r\n\r\n")
        if end < 0:
            self._tail = joined[-3:]
            super().data_received(data)
            return
        cut = end + 4 - len(self._tail)
        self._held = bytearray(data[cut:])
        # Its request is here: however long the answer takes (a snapshot is
        # decoded), it is no longer one to cut for room, nor too slow.
        self.admission.pending.pop(self, None)
        if self._probation is not None:
            self._probation.cancel()
            self._probation = None
        super().data_received(data[:cut])

    def eof_received(self) -> None:
        if self._refused.done():
            return  # the client read its refusal and left: close
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.admission.live.discard(self)
        if self._probation is not None:
            self._probation.cancel()
            self._probation = None
        self._end_handshake()
        self._release()
        if self._lingering:
            self._lingering = False
            self.admission.lingering -= 1

    # --- the handshake --------------------------------------------------------------------------

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.wait((self.request_rcvd, self.connection_lost_waiter, self._refused),
                           return_when=asyncio.FIRST_COMPLETED)
        if self._refused.done():
            with contextlib.suppress(TimeoutError):  # then the server's handler aborts it
                await asyncio.wait_for(asyncio.shield(self.connection_lost_waiter), LINGER)
            return
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._end_handshake()
            held, self._held = self._held, None
            if self.protocol.state is OPEN:
                self._passing = True
                if self._paused:  # first: websockets may pause it again, for its own reasons
                    self._paused = False
                    self.transport.resume_reading()
                if held:
                    super().data_received(bytes(held))
            else:
                self._dropping = True

    def _end_handshake(self) -> None:
        if self._counted:
            self._counted = False
            self.admission.ended(self)

    def _method_allowed(self, data: bytes) -> bool:
        """Checks the request line once it is whole; False if refused."""
        assert self._line is not None
        self._line += data[:MAX_REQUEST_LINE]
        end = self._line.find(b"\r\n")
        if end < 0:
            if len(self._line) >= MAX_REQUEST_LINE:
                self._line = None  # websockets answers 414
            return True
        parts = bytes(self._line[:end]).split(b" ")
        self._line = None
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/") or parts[0] in METHODS:
            return True  # GET, HEAD, or not HTTP at all (websockets drops that)
        method = parts[0].decode("ascii", "replace")[:16]
        path = parts[1].split(b"?", 1)[0].decode("ascii", "replace")[:100]  # no token
        log.info("request refused", method=method, path=path, peer=self.peer, status=405,
                 reason="method not allowed")
        self.refuse(HTTPStatus.METHOD_NOT_ALLOWED,
                    f"method {method} not allowed: this server answers GET and HEAD",
                    Allow="GET, HEAD")
        return False

    def refuse(self, status: HTTPStatus, reason: str, **headers: str) -> None:
        """Answer now, without websockets, and linger until the client closes
        (or LINGER seconds)."""
        if self._refused.done():
            return
        self._refused.set_result(None)
        self._end_handshake()
        self._dropping = True
        response = self.protocol.reject(status, reason + "\n")
        if self.admission.server_header:
            response.headers["Server"] = self.admission.server_header
        for name, value in headers.items():
            response.headers[name] = value
        transport = self.transport
        transport.write(response.serialize())
        if self.admission.lingering < MAX_LINGERING and transport.can_write_eof():
            transport.write_eof()
            self._lingering = True
            self.admission.lingering += 1
        else:
            transport.close()
