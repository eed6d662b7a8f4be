"""Watch a relay's cameras from Python (docs/client.md).

An analytics worker connects to the relay like any browser viewer, so the
camera's one RTSP session is shared with the browsers and dashboards::

    async with cxrelay.client.connect("ws://edge:8080/ws/lobby", token=...) as cam:
        async for image in cam.pictures(format="rgb24", every=1.0):
            ...

Like the player, the client reconnects after a relay restart or a lost
connection (0.5 to 10 s between attempts, doubling, with jitter) and follows
the camera through its own restarts. Refusals that no retry can fix raise
typed exceptions, each with a one-line message that never contains the token.

Scripts that are not async use ``open()``, a blocking wrapper running the same
client on a private event loop in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import av
from av.video.frame import VideoFrame
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.typing import Origin

from cxrelay import __version__
from cxrelay.access import TOKEN_COOKIE, TOKEN_QUERY
from cxrelay.backoff import Backoff
from cxrelay.decoding import Decoder, convert, decoder_name, packed_bytes
from cxrelay.protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    FLAG_CATCHUP,
    FLAG_DISCONTINUITY,
    FLAG_KEYFRAME,
    HEADER,
    HEADER_SIZE,
)

__all__ = [
    "BlockingCamera",
    "Busy",
    "Camera",
    "ClientError",
    "Frame",
    "Init",
    "Picture",
    "ProtocolError",
    "Refused",
    "TokenExpired",
    "Unauthorized",
    "UnknownCamera",
    "Unreachable",
    "connect",
    "open",
]

log = logging.getLogger("cxrelay.client")

# The player's reconnect range: Backoff(1, 10) waits 0.5-1 s, then 1-2 s, ... up to 5-10 s.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 10.0
OPEN_TIMEOUT = 10.0
PING_INTERVAL = 20.0
MAX_MESSAGE = 64 * 1024 * 1024  # one access unit; the relay's whole GOP cache is 16 MiB
MAX_PENDING = 64 * 1024 * 1024  # undecoded bytes pictures() holds before it skips ahead
MAX_REASON = 200
# Reasons the relay gives with close 1008 (docs/protocol.md, Closing); any other 1008
# means this client broke protocol v1's rules.
TOKEN_EXPIRED = "token expired"
NOT_READING = "not reading"

TokenSource = str | Callable[[], str | Awaitable[str]]
T = TypeVar("T")


# --- errors ---------------------------------------------------------------------------------------


class ClientError(Exception):
    """A camera the client cannot watch. The message is one line: the URL
    (without the token), what happened, and the relay's reason.

    ``status`` is the HTTP status of a refused upgrade, ``code`` the WebSocket
    close code, ``reason`` the relay's own one-line reason ('' if none).
    """

    what = "error"

    def __init__(self, url: str, reason: str = "", *, status: int | None = None,
                 code: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        self.code = code
        number = status if status is not None else code
        label = f"{self.what} ({number})" if number is not None else self.what
        super().__init__(f"{url}: {label}" + (f": {reason}" if reason else ""))


class Refused(ClientError):
    """403: the relay does not allow this client's Origin."""

    what = "refused"


class Unauthorized(ClientError):
    """401: the token is missing, bad, expired, or not for this camera."""

    what = "unauthorized"


class TokenExpired(Unauthorized):
    """Close 1008: the token expired while watching (pass ``token`` as a
    function to have the client fetch a fresh one instead)."""

    what = "token expired"


class UnknownCamera(ClientError):
    """404: the relay has no camera of that name."""

    what = "unknown camera"


class Busy(ClientError):
    """503 or close 1013: the relay's viewer limits are reached."""

    what = "busy"


class Unreachable(ClientError):
    """No connection to the relay (refused, timed out, name not found, 5xx)."""

    what = "unreachable"


class ProtocolError(ClientError):
    """The server is not a cxrelay of protocol v1 (or says the client broke it)."""

    what = "protocol error"


_REFUSALS: dict[int, type[ClientError]] = {
    401: Unauthorized, 403: Refused, 404: UnknownCamera, 503: Busy,
}
_TRANSIENT = (Busy, Unreachable)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


# --- what the relay sends -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    """The stream's parameters, from the relay's ``init`` message."""

    camera: str
    codec: str  # RFC 6381, e.g. "avc1.42c01e"
    width: int
    height: int
    protocol: int = 1
    stream: str = "main"  # or "sub": the camera's sub-stream (?stream=sub in the URL)


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    """One access unit (one whole picture), as protocol v1 carries it.

    ``discontinuity``: pictures are missing before this one (the relay dropped
    some for this client, or the camera, the relay or the connection
    restarted); a decoder should start again at a keyframe.
    """

    data: bytes  # Annex B, start codes included; keyframes carry SPS and PPS
    pts: int  # presentation time, µs, camera clock (only differences mean anything)
    received: float  # when the relay received it from the camera: seconds since the epoch
    keyframe: bool
    catchup: bool  # sent to a joining client: decode it, it is not the live picture
    discontinuity: bool
    init: Init  # the stream it belongs to

    def __repr__(self) -> str:
        flags = "".join(c for c, on in (("K", self.keyframe), ("C", self.catchup),
                                        ("D", self.discontinuity)) if on)
        return f"<Frame pts={self.pts} {len(self.data)} bytes {flags or '-'}>"


@dataclass(frozen=True, slots=True, repr=False)
class Picture:
    """A decoded picture. ``frame`` is a PyAV VideoFrame in the asked format."""

    frame: VideoFrame
    pts: int
    received: float  # the relay's ingest time of the access unit it was coded in
    init: Init

    @property
    def width(self) -> int:
        return int(self.frame.width)

    @property
    def height(self) -> int:
        return int(self.frame.height)

    @property
    def format(self) -> str:
        return str(self.frame.format.name)

    def to_bytes(self) -> bytes:
        """Pixels without row padding (rgb24: width*height*3 bytes)."""
        return packed_bytes(self.frame)

    def to_ndarray(self, **kwargs: Any) -> Any:
        """A numpy array (needs numpy installed): PyAV's VideoFrame.to_ndarray()."""
        return self.frame.to_ndarray(**kwargs)

    def __repr__(self) -> str:
        return f"<Picture {self.width}x{self.height} {self.format} pts={self.pts}>"


# --- the connection -------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str | None, str]:
    """(the URL to show and connect to, a token found in it, the camera name)."""
    parts = urlsplit(url)
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError("expected a relay URL such as ws://edge:8080/ws/lobby")
    if not parts.path.startswith("/ws/") or len(parts.path) <= 4:
        raise ValueError("the URL's path must be /ws/<camera>, e.g. ws://edge:8080/ws/lobby")
    query = parse_qsl(parts.query, keep_blank_values=True)
    token = next((v for k, v in query if k == TOKEN_QUERY and v), None)
    rest = urlencode([(k, v) for k, v in query if k != TOKEN_QUERY])
    netloc = parts.netloc.rsplit("@", 1)[-1]  # no user:password@ in anything shown
    return urlunsplit((scheme, netloc, parts.path, rest, "")), token, unquote(parts.path[4:])


class Camera:
    """One camera of a relay. Get one from ``connect()``; use it as an async
    context manager (or ``await`` it, then ``close()`` it).

    One reader at a time: iterate ``frames()`` or ``pictures()``, not both at once.
    """

    def __init__(self, url: str, token: TokenSource | None = None, *,
                 origin: str | None = None, open_timeout: float = OPEN_TIMEOUT,
                 retry_for: float | None = None, ping_interval: float | None = PING_INTERVAL,
                 max_message: int = MAX_MESSAGE) -> None:
        self.url, url_token, self.name = _split_url(url)
        self._token_source: TokenSource | None = token if token is not None else url_token
        self._token: str | None = token if isinstance(token, str) else url_token
        self._origin = origin
        self._open_timeout = open_timeout
        self._retry_for = retry_for
        self._ping_interval = ping_interval
        self._max_message = max_message
        self.init: Init | None = None
        """The current stream's parameters (None until the camera first streams)."""
        self.state = "connecting"
        """The camera as the relay last said: connecting, live, offline."""
        self.reason = ""
        self.connections = 0
        """Connections made so far: more than one means the client reconnected."""
        self._ws: ClientConnection | None = None
        self._closed = asyncio.Event()
        self._receiving = False
        self._backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        self._fresh_token = False
        self._continuity = _Continuity()
        # The frames since the last keyframe, so that a pictures() started
        # mid-stream has its first picture at once, like a joining viewer.
        self._gop: list[Frame] = []
        self._gop_bytes = 0
        self._background: asyncio.Task[None] | None = None  # pictures()' reader

    def __repr__(self) -> str:
        return f"<cxrelay.client.Camera {self.url} {self.state}>"

    # -- opening and closing --------------------------------------------------------------------

    async def __aenter__(self) -> Camera:
        return await self._start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def __await__(self) -> Any:
        return self._start().__await__()

    async def _start(self) -> Camera:
        """The first connection: every failure raises, so a wrong URL, token or
        camera name shows at once instead of in endless retries."""
        await self._open()
        return self

    async def close(self) -> None:
        """Close the connection; a running frames()/pictures() ends."""
        self._closed.set()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def _current_token(self) -> str | None:
        source = self._token_source
        if source is None or isinstance(source, str):
            return self._token
        if self._token is None or self._fresh_token:
            value = source()
            if not isinstance(value, str):
                value = await value
            self._token = value
            self._fresh_token = False
        return self._token

    async def _open(self) -> None:
        """One connection attempt; raises a ClientError for any failure."""
        headers: dict[str, str] = {}
        token = await self._current_token()
        if token:
            headers["Cookie"] = f"{TOKEN_COOKIE}={token}"  # not in the URL: URLs get logged
        try:
            ws = await ws_connect(
                self.url,
                additional_headers=headers,
                origin=Origin(self._origin) if self._origin else None,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                compression=None,  # video doesn't deflate; the relay never negotiates it
                max_size=self._max_message,
                user_agent_header=f"cxrelay-client/{__version__}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = _one_line(exc.response.body.decode("utf-8", "replace")) \
                if exc.response.body else ""
            kind = _REFUSALS.get(status) or (Unreachable if status >= 500 else ProtocolError)
            raise kind(self.url, reason, status=status) from None
        except InvalidURI:
            raise ValueError("expected a relay URL such as ws://edge:8080/ws/lobby") from None
        except InvalidHandshake as exc:
            raise ProtocolError(self.url, _one_line(f"not a WebSocket server: {exc}")) from None
        except (OSError, TimeoutError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise Unreachable(self.url, _one_line(reason)) from None
        if self._closed.is_set():  # closed while connecting
            await ws.close()
            return
        self._ws = ws
        self.connections += 1
        self._continuity.new_connection()

    async def _reconnect(self) -> None:
        """Connect again after a drop, like the player: wait, retry transient
        failures (unreachable, busy) with backoff; raise the others, and the
        transient ones once ``retry_for`` seconds have passed."""
        started = time.monotonic()
        while not self._closed.is_set():
            if self._fresh_token:
                delay = 0.0  # a new token is all it takes
            else:
                delay = self._backoff.next_delay()
                if self._retry_for is not None:
                    delay = min(delay, max(0.0, started + self._retry_for - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)
                return  # closed
            try:
                await self._open()
                return
            except _TRANSIENT as exc:
                self.state, self.reason = "offline", exc.reason or exc.what
                if self._retry_for is not None and time.monotonic() - started >= self._retry_for:
                    raise
                log.info("%s: %s; retrying", self.url, exc.reason or exc.what)

    def _dropped(self, exc: ConnectionClosed) -> None:
        """The connection closed under us: raise what no retry fixes, else note it."""
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = _one_line(exc.rcvd.reason) if exc.rcvd is not None else ""
        if code == CLOSE_POLICY and reason == NOT_READING:
            # The consumer was too slow for the relay's patience: come back, at a keyframe.
            log.warning("%s: closed by the relay: %s (the consumer of frames() fell behind)",
                        self.url, reason)
        elif code == CLOSE_POLICY and reason == TOKEN_EXPIRED:
            if isinstance(self._token_source, str) or self._token_source is None:
                raise TokenExpired(self.url, reason, code=code) from None
            self._fresh_token = True
        elif code in (CLOSE_POLICY, CLOSE_UNSUPPORTED, CloseCode.MESSAGE_TOO_BIG):
            raise ProtocolError(self.url, reason, code=code) from None
        elif code == CLOSE_TRY_AGAIN:
            reason = reason or "too many connections"
        self.state, self.reason = "offline", reason or "relay unreachable"
        log.info("%s: connection closed (%d)%s; reconnecting", self.url, code,
                 f": {reason}" if reason else "")

    # -- reading -----------------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[Frame]:
        """Every access unit the relay sends, in decode order, across reconnects.

        The first ones on a new connection are the relay's catch-up (from the
        last keyframe; flagged ``catchup``). After a reconnect, frames already
        given are not given again; if some were missed, the next one given is
        a keyframe flagged ``discontinuity``. A consumer slower than the camera
        makes the relay drop frames for it: it resumes at a keyframe, flagged
        ``discontinuity``. Ends when the camera is closed.
        """
        if self.connections == 0 and not self._closed.is_set():
            await self._open()  # never opened: fail like the first connection does
        await self._take_over()
        while not self._closed.is_set():
            ws = self._ws
            if self._receiving:
                raise RuntimeError("one reader at a time: frames() or pictures(), not both")
            self._receiving = True
            try:
                if ws is None:
                    await self._reconnect()
                    continue
                try:
                    message = await ws.recv()
                except ConnectionClosed as exc:
                    if self._closed.is_set():
                        return
                    self._ws = None
                    self._dropped(exc)
                    continue
            finally:
                self._receiving = False
            if isinstance(message, str):
                self._control(message)
            elif (frame := self._frame(message)) is not None:
                yield frame

    async def _take_over(self) -> None:
        """Stop the reader of a pictures() the caller left (``break``) but Python
        has not closed yet: the new reader takes the connection over."""
        reader = self._background
        if reader is None or reader is asyncio.current_task():
            return
        self._background = None
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")  # other types: ignored, as protocol v1 asks
        if kind == "init":
            try:
                init = Init(camera=str(message.get("camera", self.name)),
                            codec=str(message["codec"]), width=int(message.get("width") or 0),
                            height=int(message.get("height") or 0),
                            protocol=int(message.get("protocol", 1)),
                            stream=str(message.get("stream", "main")))
            except (KeyError, TypeError, ValueError):
                return
            self._continuity.new_init(init == self.init)
            self.init = init
        elif kind == "status":
            self.state = str(message.get("state", ""))
            self.reason = _one_line(str(message.get("reason") or ""))
            if self.state == "live":
                self._backoff.reset()

    def _frame(self, message: bytes) -> Frame | None:
        if len(message) < HEADER_SIZE or self.init is None:
            return None  # protocol v1 never sends either
        flags, pts, ingest_us = HEADER.unpack_from(message)
        keyframe = bool(flags & FLAG_KEYFRAME)
        verdict = self._continuity.admit(ingest_us, pts, keyframe)
        if verdict is None:
            return None
        self._backoff.reset()
        frame = Frame(
            data=bytes(message[HEADER_SIZE:]),
            pts=pts,
            received=ingest_us / 1e6,
            keyframe=keyframe,
            catchup=bool(flags & FLAG_CATCHUP),
            discontinuity=bool(flags & FLAG_DISCONTINUITY) or verdict,
            init=self.init,
        )
        self._keep(frame)
        return frame

    def _keep(self, frame: Frame) -> None:
        if frame.keyframe:
            self._gop, self._gop_bytes = [], 0
        elif frame.discontinuity or not self._gop:
            self._gop, self._gop_bytes = [], 0
            return
        self._gop.append(frame)
        self._gop_bytes += len(frame.data)
        if self._gop_bytes > MAX_PENDING:
            self._gop, self._gop_bytes = [], 0

    async def pictures(self, format: str = "rgb24", *, every: float | None = None,
                       width: int | None = None, height: int | None = None
                       ) -> AsyncIterator[Picture]:
        """Decoded pictures (PyAV, in a worker thread), newest first.

        ``format``: a PyAV/FFmpeg pixel format (rgb24, bgr24, gray, yuv420p...).
        ``every``: at most one picture per this many seconds (of the relay's
        ingest clock); None gives every picture the decoder keeps up with.
        ``width``/``height``: scale (one of them keeps the aspect ratio).

        Only what is needed is decoded: the catch-up frames (so the first
        picture comes at once: the live one, never an old catch-up one), and
        then frames up to each picture that is due. Frames not needed by then
        are dropped at the next keyframe, and so are those of a decoder that
        falls behind: pictures skip ahead instead of lagging.
        """
        if every is not None and every < 0:
            raise ValueError("every must be a number of seconds >= 0")
        if self.init is not None:
            decoder_name(self.init.codec)  # a codec PyAV can't decode: say so now
        pending = _Pending(MAX_PENDING)
        for old in self._gop:  # decoded for the first picture, never shown
            pending.add(replace(old, catchup=True))
        wake = asyncio.Event()
        failure: list[BaseException] = []

        async def read() -> None:
            try:
                async for frame in self.frames():
                    pending.add(frame)
                    wake.set()
            except Exception as exc:
                failure.append(exc)
            finally:
                wake.set()

        await self._take_over()
        reader = self._background = asyncio.create_task(read())
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cxrelay-decode")
        worker = _PictureWorker(format, width, height)
        loop = asyncio.get_running_loop()
        due: float | None = None
        try:
            while True:
                job = pending.next_job(due)
                if job is None:
                    if failure:
                        raise failure[0]
                    if reader.done():
                        return
                    wake.clear()
                    await wake.wait()
                    continue
                picture = await loop.run_in_executor(executor, worker.run, job)
                if picture is _FAILED:
                    pending.decoder_failed()
                elif isinstance(picture, Picture):
                    yield picture
                    if every:
                        due = picture.received + every
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            executor.shutdown(wait=False)


def connect(url: str, token: TokenSource | None = None, *, origin: str | None = None,
            open_timeout: float = OPEN_TIMEOUT, retry_for: float | None = None,
            ping_interval: float | None = PING_INTERVAL) -> Camera:
    """A camera of a relay, at ``ws://host:port/ws/<camera>`` (http:// works too).

    ``token``: the viewer token when the relay asks for one; or a function
    (plain or async) returning one, called again when a token expires while
    watching. ``origin``: an Origin header, for relays that only admit listed
    origins. ``retry_for``: seconds to keep reconnecting after a drop before
    raising (None: forever, like the player).
    """
    return Camera(url, token, origin=origin, open_timeout=open_timeout, retry_for=retry_for,
                  ping_interval=ping_interval)


# --- continuity across reconnects (pure) ---------------------------------------------------------


class _Continuity:
    """Which frames to hand out, so that every frame comes once and in order.

    A new connection starts with the relay's catch-up: frames this client may
    already have. While the stream is the same one (same init, and the last
    frame handed out is among them), those are skipped and the rest follow on
    seamlessly; otherwise the new stream's first frame is a keyframe marked
    discontinuity.
    """

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None  # (ingest µs, pts) of the last frame given
        self._connection_has_init = False
        self._resync = False
        self._found = False
        self._gap = False

    def new_connection(self) -> None:
        self._connection_has_init = False
        self._resync = False
        self._gap = self.last is not None

    def new_init(self, same_as_before: bool) -> None:
        if not self._connection_has_init:
            self._connection_has_init = True
            self._resync = same_as_before and self.last is not None
            self._found = False
        else:  # the camera restarted: a new stream on the same connection
            self._resync = False
            self._gap = self.last is not None

    def admit(self, ingest_us: int, pts: int, keyframe: bool) -> bool | None:
        """None: skip this frame; else whether it follows a gap."""
        if self._resync:
            assert self.last is not None
            if (ingest_us, pts) == self.last:
                self._found = True
                return None
            if not self._found and ingest_us <= self.last[0]:
                return None  # given before
            self._resync = False
            self._gap = not self._found
        gap = False
        if self._gap:
            if not keyframe:
                return None
            self._gap = False
            gap = True
        self.last = (ingest_us, pts)
        return gap


# --- pictures -------------------------------------------------------------------------------------


@dataclass
class _Job:
    frames: list[Frame]
    restart: bool  # a new decoder (the stream changed, or the last one failed)
    picture: bool  # convert and return the newest picture; else only decode (catch-up)


class _Pending:
    """Frames received but not decoded yet, and when to decode them (pure).

    Holds the frames since the decoder's last position, or since the newest
    keyframe: a keyframe makes every older undecoded frame useless, since only
    the newest picture is ever wanted.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.frames: list[Frame] = []
        self.skipped = 0  # frames dropped undecoded
        self._bytes = 0
        self._init: Init | None = None
        self._continues = False  # the decoder stands right before frames[0]
        self._restart = True

    def add(self, frame: Frame) -> None:
        if frame.init != self._init or (frame.keyframe and frame.discontinuity):
            # A new stream (or the same after a gap): a fresh decoder, nothing old to keep.
            self._init = frame.init
            self._restart = True
            self._drop()
        if frame.keyframe:
            self._drop()
        elif frame.discontinuity or not (self.frames or self._continues):
            self._drop()
            self.skipped += 1
            return  # undecodable until the next keyframe
        self.frames.append(frame)
        self._bytes += len(frame.data)
        if self._bytes > self.max_bytes:
            self._drop()

    def _drop(self) -> None:
        self.skipped += len(self.frames)
        self.frames = []
        self._bytes = 0
        self._continues = False

    def next_job(self, due: float | None) -> _Job | None:
        """What to decode now, or None to wait for more frames.

        Catch-up frames are decoded at once (the first picture needs them);
        a picture is made when the newest frame is live and due.
        """
        if not self.frames:
            return None
        newest = self.frames[-1]
        if not newest.catchup and due is not None and newest.received < due:
            return None
        job = _Job(self.frames, self._restart, picture=not newest.catchup)
        self.frames = []
        self._bytes = 0
        self._restart = False
        self._continues = True
        return job

    def decoder_failed(self) -> None:
        self._drop()
        self._restart = True


_FAILED = object()


class _PictureWorker:
    """Runs jobs in the decode thread: one decoder, kept between jobs."""

    def __init__(self, format: str, width: int | None, height: int | None) -> None:
        self.format = format
        self.width = width
        self.height = height
        self._decoder: Decoder | None = None

    def run(self, job: _Job) -> Picture | object | None:
        init = job.frames[0].init
        try:
            if job.restart or self._decoder is None:
                self._decoder = Decoder(init.codec)
            out = self._decoder.decode((f.data, f.pts, f) for f in job.frames)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("decoding failed (%s); waiting for the next keyframe", _one_line(str(exc)))
            self._decoder = None
            return _FAILED
        if out is None or not job.picture:
            return None
        picture, tag = out
        source = tag if isinstance(tag, Frame) else job.frames[-1]
        image = convert(picture, self.format, self.width, self.height)
        return Picture(frame=image, pts=source.pts, received=source.received, init=source.init)


# --- the blocking wrapper -------------------------------------------------------------------------


@dataclass
class _Loop:
    """A private event loop running in a daemon thread."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, name="cxrelay-client",
                                       daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.call(self._cancel_tasks())
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()


class BlockingCamera:
    """``Camera`` for code that is not async: plain iterators, run on a private
    event loop in a thread. Use as a context manager, or ``close()`` it."""

    def __init__(self, camera: Camera, runner: _Loop) -> None:
        self.camera = camera
        self._runner = runner

    @property
    def init(self) -> Init | None:
        return self.camera.init

    @property
    def state(self) -> str:
        return self.camera.state

    @property
    def reason(self) -> str:
        return self.camera.reason

    @property
    def url(self) -> str:
        return self.camera.url

    def __repr__(self) -> str:
        return f"<cxrelay.client.BlockingCamera {self.camera.url} {self.camera.state}>"

    def frames(self) -> Iterator[Frame]:
        """Like Camera.frames()."""
        return self._iterate(self.camera.frames())

    def pictures(self, format: str = "rgb24", *, every: float | None = None,
                 width: int | None = None, height: int | None = None) -> Iterator[Picture]:
        """Like Camera.pictures()."""
        return self._iterate(self.camera.pictures(format, every=every, width=width,
                                                  height=height))

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        agen: Any = source
        try:
            while True:
                try:
                    yield self._runner.call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._runner.loop.is_running():
                with contextlib.suppress(Exception):
                    self._runner.call(agen.aclose())

    def close(self) -> None:
        if self._runner.loop.is_running():
            with contextlib.suppress(Exception):
                self._runner.call(self.camera.close())
        self._runner.stop()

    def __enter__(self) -> BlockingCamera:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open(url: str, token: TokenSource | None = None, **options: Any) -> BlockingCamera:
    """A blocking ``connect()``: same arguments; returns once connected (or raises)."""
    runner = _Loop()
    runner.start()

    async def start() -> Camera:
        return await Camera(url, token, **options)

    try:
        camera = runner.call(start())
    except BaseException:
        runner.stop()
        raise
    return BlockingCamera(camera, runner)
