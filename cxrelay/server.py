"""The one listening port: WebSocket viewers at /ws/<camera>, and plain HTTP
(the player, the API, health, metrics) through websockets' process_request.
What each connection passes before a request is routed (admission, one
request per connection, methods) is connection.py's.

Every refusal happens before the upgrade, as a plain HTTP status, so a
browser's devtools and a curl both show why.
"""

from __future__ import annotations

import functools
import gzip
import json
import mimetypes
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from cxrelay import __version__
from cxrelay.access import (
    ALL_CAMERAS,
    AccessDenied,
    Claims,
    ConnectionLimiter,
    Handshakes,
    HostPolicy,
    OriginPolicy,
    TokenVerifier,
    bearer_token,
    metrics_token_matches,
    token_from_request,
)
from cxrelay.cameras import Camera, Cameras
from cxrelay.config import Config, ConfigError
from cxrelay.connection import LISTEN_BACKLOG, Admission, AdmittedConnection
from cxrelay.metrics import Metrics
from cxrelay.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    MAIN,
    STREAMS,
    SUB,
    CameraState,
    ProtocolError,
    watch_options,
)
from cxrelay.snapshots import MIN_WIDTH, SnapshotError, Snapshots
from cxrelay.viewer import Viewer, peer_address
from cxrelay.wire import HIGH_WATER, LOW_WATER, RelayConnection

log = structlog.get_logger("cxrelay.server")

STATIC_DIR = Path(__file__).parent / "static"
SERVER_HEADER = f"cxrelay/{__version__}"
SNAPSHOT_PREFIX = "/api/cameras/"
SNAPSHOT_SUFFIX = "/snapshot.jpg"
MAX_SNAPSHOT_WIDTH = 7680  # never wider than the camera's picture either


def static_routes(directory: Path = STATIC_DIR) -> dict[str, Path]:
    """Exact request paths to files. Only these are served: nothing a request
    says is ever joined to a filesystem path, so traversal has no way in."""
    routes = {f"/{p.name}": p for p in directory.iterdir() if p.is_file()} if directory.is_dir() \
        else {}
    if "/index.html" in routes:
        routes["/"] = routes["/index.html"]
    return routes


def request_path(target: str) -> str:
    """The path of a request target, as sent: no normalisation, no decoding
    ('//x' stays a path; urlsplit would read it as a host)."""
    return target.split("?", 1)[0].split("#", 1)[0]


def response(status: HTTPStatus, body: bytes, content_type: str,
             extra: Mapping[str, str] | None = None) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ]
    )
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status.value, status.phrase, headers, body)


def text_response(status: HTTPStatus, text: str) -> Response:
    return response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def json_response(obj: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    return response(status, json.dumps(obj).encode(), "application/json")


def own_host_names(listen_host: str) -> tuple[str, ...]:
    """Names that reach this machine and no attacker's DNS can point
    elsewhere: its host name (also under mDNS's .local) and the configured
    listen host, when that is a name."""
    name = socket.gethostname().lower()
    names = [listen_host, name]
    if name and "." not in name:
        names.append(f"{name}.local")
    return tuple(n for n in names if n and n not in ("0.0.0.0", "::"))


class RelayServer:
    """HTTP routes, and admission of viewers (their sessions are viewer.py's)."""

    def __init__(self, config: Config, cameras: Cameras, metrics: Metrics,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.cameras = cameras
        self.metrics = metrics
        self.status = status
        self.static = static_routes()
        self.limiter = ConnectionLimiter(config.server.max_connections_per_client)
        self.admission = Admission(Handshakes(config.server.max_handshakes_per_client,
                                    config.server.max_handshakes), SERVER_HEADER)
        self._server: Server | None = None
        self._ssl: ssl.SSLContext | None = None
        self.snapshots = Snapshots(metrics)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Take a (re)loaded configuration: origins and tokens apply to the next
        request; the TLS certificate to the next handshake."""
        self.config = config
        self.hosts = HostPolicy(config.server.allowed_hosts, own_host_names(config.server.host))
        self.origins = OriginPolicy(config.server.allowed_origins)
        self.tokens = TokenVerifier(config.auth.secret, config.auth.max_token_ttl) \
            if config.auth.secret else None
        self.limiter.max_per_client = config.server.max_connections_per_client
        self.admission.handshakes.max_per_client = config.server.max_handshakes_per_client
        self.admission.handshakes.max_total = config.server.max_handshakes
        if self._ssl is not None and config.server.tls_cert:
            try:
                # Try the pair on a scratch context first: a failed load into the
                # live one can leave it with a certificate and no matching key.
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    config.server.tls_cert, config.server.tls_key)
                self._ssl.load_cert_chain(config.server.tls_cert, config.server.tls_key)
                log.info("tls certificate loaded", cert=config.server.tls_cert)
            except (OSError, ssl.SSLError) as exc:
                log.error("tls certificate not reloaded, keeping the old one",
                          cert=config.server.tls_cert, error=str(exc))

    async def start(self) -> None:
        cfg = self.config.server
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            server_header=SERVER_HEADER,
            compression=None,  # video doesn't deflate; it would only cost CPU and latency
            max_size=cfg.max_message_size,
            open_timeout=cfg.handshake_timeout,
            ping_interval=cfg.ping_interval or None,
            ping_timeout=cfg.ping_timeout or None,
            close_timeout=2,
            # The video path writes to the transport itself (viewer.py); these
            # are the marks of its flow control.
            write_limit=(HIGH_WATER, LOW_WATER),
            ssl=self._ssl_context(),
            # Admission and one request per connection (connection.py), on top
            # of the video path's flow control (wire.py).
            create_connection=cast(Any, functools.partial(AdmittedConnection,
                                                          admission=self.admission)),
            backlog=LISTEN_BACKLOG,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config.server
        if not cfg.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(f"server.tls_cert/tls_key: cannot load {cfg.tls_cert} and "
                              f"{cfg.tls_key}: {reason}") from None
        self._ssl = context
        return context

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def close(self, close_timeout: float | None = None) -> None:
        """Stop accepting, and close every viewer with 1001 going away; one
        that has not answered its close frame within ``close_timeout`` seconds
        (by default the usual 2) is cut."""
        self.admission.close()
        if self._server is not None:
            if close_timeout is not None:
                for connection in self._server.connections:
                    connection.close_timeout = close_timeout
            self._server.close(close_connections=True)
        self.snapshots.close()

    def abort(self) -> None:
        """Cut every connection still open, viewers and handshakes alike."""
        self.admission.abort()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    # --- plain HTTP ---------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request
                         ) -> Response | Awaitable[Response] | None:
        """Route one request (GET or HEAD: connection.py refuses the others).
        No exception leaves here: websockets would answer 500 and print a
        traceback outside the log."""
        path = request_path(request.path)
        try:
            answer = self._route(connection, request, path)
        except Exception as exc:
            return _for_method(request, self._failed(path, exc))
        if isinstance(answer, Awaitable):
            return self._finish(request, path, answer)
        return _for_method(request, answer)

    async def _finish(self, request: Request, path: str, pending: Awaitable[Response]
                      ) -> Response:
        try:
            answer = await pending
        except Exception as exc:
            answer = self._failed(path, exc)
        result = _for_method(request, answer)
        assert result is not None
        return result

    def _failed(self, path: str, exc: Exception) -> Response:
        if isinstance(exc, MultipleValuesError):
            # Which Origin, Host or X-Forwarded-Proto would be the real one is
            # anyone's guess: a proxy's and a client's disagreeing, or a trick.
            header = exc.args[0] if exc.args else "a"
            log.info("request refused", path=path[:100], status=400,
                     reason=f"duplicate {header} header")
            return text_response(HTTPStatus.BAD_REQUEST, f"duplicate {header} header")
        log.error("request failed", path=path[:100], exc_info=exc)
        return text_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _route(self, connection: ServerConnection, request: Request, path: str
               ) -> Response | Awaitable[Response] | None:
        if request.method not in ("GET", "HEAD"):  # connection.py refused it already
            return text_response(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        reason = self.hosts.check(request.headers.get("Host"))
        if reason is not None:
            log.info("request refused", path=path[:100], peer=peer_address(connection),
                     status=HTTPStatus.MISDIRECTED_REQUEST.value, reason=reason)
            return text_response(HTTPStatus.MISDIRECTED_REQUEST, reason)
        if path.startswith("/ws/"):
            refusal = self._admit(connection, request, path[4:])
            if not _wants_upgrade(request):
                return _verdict(request, refusal)
            return refusal
        if path == "/healthz":
            # Counts of cameras are for those who may see them all; a load
            # balancer needs only the 200.
            return json_response(self.status() if self._sees_everything(request)
                                 else {"status": "ok"})
        if path == "/api/cameras":
            claims, refusal = self._check_token(request, None)
            if refusal is not None:
                return refusal
            return json_response([camera.info() for camera in self.cameras.values()
                                  if claims is None or claims.allows(camera.name)])
        if path.startswith(SNAPSHOT_PREFIX) and path.endswith(SNAPSHOT_SUFFIX):
            name = path[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)]
            if name and "/" not in name:
                return self._snapshot(connection, request, name)
        if path.startswith("/api/"):
            return text_response(HTTPStatus.NOT_FOUND, "not found")
        if path == "/metrics":
            if not self._sees_everything(request):
                reason = ("metrics need the metrics token (Authorization: Bearer, "
                          "[auth] metrics_token)" + ("" if self.tokens is None
                                                     else " or a viewer token for every camera"))
                log.info("request refused", path=path, status=401, reason=reason)
                return response(HTTPStatus.UNAUTHORIZED, (reason + "\n").encode(),
                                "text/plain; charset=utf-8",
                                {"WWW-Authenticate": 'Bearer realm="cxrelay metrics"'})
            return response(HTTPStatus.OK, self.metrics.render(), self.metrics.content_type)
        if (file := self.static.get(path)) is not None:
            return self._static(file, request.headers.get("Accept-Encoding", ""))
        return text_response(HTTPStatus.NOT_FOUND, "not found")

    def _static(self, file: Path, accept_encoding: str) -> Response:
        try:
            body = file.read_bytes()
        except OSError:
            return text_response(HTTPStatus.NOT_FOUND, "not found")
        extra: dict[str, str] = {"Vary": "Accept-Encoding"}
        if "gzip" in accept_encoding.lower():
            # The player ships unminified and readable; on the wire it is a
            # quarter of that. Files are small and fetched once per page.
            body = gzip.compress(body, mtime=0)
            extra["Content-Encoding"] = "gzip"
        kind = {".js": "text/javascript", ".html": "text/html"}.get(file.suffix) \
            or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        # Pages on other sites load the player as a module script, which
        # browsers fetch with CORS. The code is public; the cameras are not
        # (origins and tokens guard /ws/).
        if file.suffix == ".js":
            extra["Access-Control-Allow-Origin"] = "*"
        return response(HTTPStatus.OK, body, kind, extra)

    def _gate(self, request: Request, name: str, peer: str) -> Camera | Response:
        """Who may see a camera, by /ws/ and snapshots alike: origin (403), token
        (401), camera (404), in that order, so that nobody without a token can
        learn which cameras exist."""
        headers = request.headers
        reason = self.origins.check(headers.get("Origin"), headers.get("Host"),
                                    tls=self._ssl is not None,
                                    forwarded_proto=headers.get("X-Forwarded-Proto"))
        if reason is not None:
            return self._refuse(HTTPStatus.FORBIDDEN, reason, name, peer)
        _, refusal = self._check_token(request, name)
        if refusal is not None:
            return refusal
        camera = self.cameras.get(name)
        if camera is None:
            return self._refuse(HTTPStatus.NOT_FOUND, f"no camera named {name[:64]!r}", name, peer)
        return camera

    def _admit(self, connection: ServerConnection, request: Request, name: str) -> Response | None:
        """Decide before the upgrade whether this viewer may watch: the gate,
        then the options (400) and the limits (503)."""
        peer = peer_address(connection)
        camera = self._gate(request, name, peer)
        if isinstance(camera, Response):
            return camera
        try:
            watch_options(request.path)
        except ProtocolError as exc:
            return self._refuse(HTTPStatus.BAD_REQUEST, str(exc), name, peer)
        limit = camera.camera.max_viewers
        if limit and len(camera.viewers) >= limit:
            return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"camera {name} has its maximum of {limit} viewers", name, peer)
        total = self.config.server.max_viewers
        if total and self.cameras.viewers >= total:
            return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"the server has its maximum of {total} viewers", name, peer)
        if not self.limiter.allows(peer):
            return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                                f"too many connections from {peer} "
                                f"(maximum {self.limiter.max_per_client})", name, peer)
        return None

    def _check_token(self, request: Request, camera: str | None
                     ) -> tuple[Claims | None, Response | None]:
        if self.tokens is None:
            return None, None
        try:
            token = token_from_request(request.path, request.headers)
            return self.tokens.verify(token, camera), None
        except AccessDenied as exc:
            log.info("request refused", path=request_path(request.path)[:100],
                     reason=exc.reason, status=401)
            return None, text_response(HTTPStatus.UNAUTHORIZED, exc.reason)

    def _sees_everything(self, request: Request) -> bool:
        """Whether this request may see what names every camera (metrics, the
        counts in /healthz): what /api/cameras shows a token for every camera.
        Without tokens that is anyone; with the metrics token set, its bearer
        (what Prometheus sends); with tokens on, also a token for "*"."""
        auth = self.config.auth
        if auth.metrics_token is not None:
            if metrics_token_matches(auth.metrics_token, bearer_token(request.headers)):
                return True
            if self.tokens is None:
                return False
        if self.tokens is None:
            return True
        try:
            claims = self.tokens.verify(token_from_request(request.path, request.headers), None)
        except AccessDenied:
            return False
        return ALL_CAMERAS in claims.cameras

    def _refuse(self, status: HTTPStatus, reason: str, camera: str, peer: str) -> Response:
        log.info("viewer refused", camera=camera[:64], peer=peer, status=status.value,
                 reason=reason)
        return text_response(status, reason)

    # --- snapshots ----------------------------------------------------------------------------

    async def _snapshot(self, connection: ServerConnection, request: Request, name: str
                        ) -> Response:
        """The newest picture of a camera's stream as a JPEG (docs/snapshots.md):
        the same gate as /ws/; decoded on request, in the snapshot pool."""
        camera = self._gate(request, name, peer_address(connection))
        if isinstance(camera, Response):
            return camera
        query = parse_qs(urlsplit(request.path).query)
        stream = query.get("stream", [MAIN])[-1]
        if stream not in STREAMS:
            return text_response(HTTPStatus.BAD_REQUEST, "stream must be main or sub")
        if stream == SUB and camera.sub is None:
            return text_response(HTTPStatus.NOT_FOUND, f"camera {name} has no sub-stream")
        width: int | None = None
        if "width" in query:
            text = query["width"][-1]
            width = int(text) if text.isdigit() and len(text) < 6 else 0
            if not MIN_WIDTH <= width <= MAX_SNAPSHOT_WIDTH:
                return text_response(HTTPStatus.BAD_REQUEST,
                                     f"width must be {MIN_WIDTH} to {MAX_SNAPSHOT_WIDTH} pixels")
        extra: dict[str, str] = {}
        origin = request.headers.get("Origin")
        if origin:  # the gate let it in: let its scripts read the picture too
            extra.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                          "Access-Control-Expose-Headers": "X-Cxrelay-Age"})
        hub = camera.hub(stream)
        stills = self.snapshots.camera(name, stream)
        latest = hub.newest_gop()
        try:
            if latest is not None:
                still = await stills.newest(*latest)
                body = await stills.jpeg(still, width)
                extra["X-Cxrelay-Age"] = f"{still.age():.3f}"
                return response(HTTPStatus.OK, body, "image/jpeg", extra)
            if hub.state == CameraState.LIVE:  # a GOP over the cache's limit, or just starting
                state = f"camera {name} has no picture to decode until its next keyframe"
            else:
                state = f"camera {name} is {hub.state}" + (f": {hub.reason}" if hub.reason
                                                           else "")
            kept = stills.still
            if kept is None:
                return text_response(HTTPStatus.SERVICE_UNAVAILABLE, state)
            body = await stills.jpeg(kept, width)
        except SnapshotError as exc:
            log.info("snapshot failed", camera=name, stream=stream, reason=str(exc))
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        # Not live: the last picture, with its age and the reason.
        extra.update({"X-Cxrelay-Age": f"{kept.age():.3f}", "X-Cxrelay-State": str(hub.state),
                      "Retry-After": "1"})
        extra["X-Cxrelay-Reason"] = "".join(c if " " <= c <= "~" else "?" for c in state)
        return response(HTTPStatus.SERVICE_UNAVAILABLE, body, "image/jpeg", extra)

    # --- viewers ------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, RelayConnection)  # serve(create_connection=...)
        request = ws.request
        assert request is not None  # the handshake is done when the handler runs
        name = request_path(request.path)[4:]
        camera = self.cameras.get(name)
        if camera is None:  # removed by a reload during the handshake
            await ws.close(CLOSE_GOING_AWAY, "camera removed")
            return
        claims, refusal = self._check_token(request, name)  # cheap; no state kept from _admit
        if refusal is not None:
            await ws.close(CLOSE_POLICY, "token expired")
            return
        stream, keyframes = watch_options(request.path)  # checked by _admit
        viewer = Viewer(ws, camera.new_backlog(), self.metrics, camera=name,
                        drain_timeout=self.config.server.drain_timeout)
        await viewer.watch(camera, claims=claims, limiter=self.limiter, stream=stream,
                           keyframes=keyframes)


def _for_method(request: Request, answer: Response | None) -> Response | None:
    """HEAD gets the GET's status and headers (Content-Length included), no body."""
    if request.method == "HEAD" and answer is not None:
        return Response(answer.status_code, answer.reason_phrase, answer.headers, b"")
    return answer


def _wants_upgrade(request: Request) -> bool:
    return request.method == "GET" and "websocket" in request.headers.get("Upgrade", "").lower()


def _verdict(request: Request, refusal: Response | None) -> Response:
    """A plain GET of /ws/<camera>: the verdict its upgrade would get (the same
    refusal, or 426 when it would be admitted), readable by the page that asks.

    A browser's WebSocket API hides a refused upgrade's status, so the player
    asks again this way to say why. The checks and their order are the
    upgrade's, so the answer tells a page nothing its own handshake wouldn't;
    a page from a refused origin learns only that (and this relay already
    serves /cxrelay.js to any page)."""
    response = refusal or text_response(
        HTTPStatus.UPGRADE_REQUIRED, "admitted: open this URL as a WebSocket")
    if refusal is None:
        response.headers["Upgrade"] = "websocket"
    origin = request.headers.get("Origin")
    if origin is not None:
        # Credentials: the upgrade may carry the token in a cookie; so does the question.
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response
