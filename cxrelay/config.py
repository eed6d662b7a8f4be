"""Configuration: one immutable ``Config`` built from TOML, the environment and
the command line, validated in one place. Pure: no asyncio, av or websockets.

Every problem is a ``ConfigError`` whose message names the file, the key and
what is wrong, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from cxrelay.access import (
    DEFAULT_MAX_TOKEN_TTL,
    HostPolicy,
    OriginPolicy,
    metrics_token_problem,
    secret_problem,
)
from cxrelay.backlog import DEFAULT_MAX_BYTES, DEFAULT_MAX_DELAY, BacklogLimits
from cxrelay.gop import DEFAULT_GOP_CACHE_BYTES
from cxrelay.redact import redact_url, url_secrets

CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCHEMES = ("rtsp", "rtsps", "file", "demo")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
TRANSPORTS = ("tcp", "udp")
ASSEMBLY = ("nal", "parser")
DEMO_URL = "demo://"
# Connections still in their handshake: a wall of tiles opens one per tile at
# once from one browser; a client that never finishes its requests holds one
# descriptor each until handshake_timeout.
DEFAULT_MAX_HANDSHAKES = 256
DEFAULT_MAX_HANDSHAKES_PER_CLIENT = 32


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator: file: key: problem."""


@dataclass(frozen=True, slots=True)
class CameraConfig:
    name: str
    url: str  # may carry credentials: never log it, use ``safe_url``
    transport: str = "tcp"
    on_demand: bool = False
    linger: float = 30.0
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    max_viewers: int = 0  # 0: unlimited
    assembly: str = "nal"
    gop_cache_bytes: int = DEFAULT_GOP_CACHE_BYTES
    # The camera's second, smaller stream (most CCTV cameras offer one), for
    # walls of tiles; may carry credentials like ``url``. Always on demand.
    substream: str | None = None

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @property
    def streams(self) -> tuple[str, ...]:
        """The names of the camera's streams: "main", and "sub" if it has one."""
        return ("main", "sub") if self.substream else ("main",)

    def stream(self, name: str) -> CameraConfig:
        """The settings one stream's source and hub run with: the sub-stream
        has its own URL and is pulled only while watched (cameras cap their
        RTSP sessions at 2-4, so an unwatched one must not hold one)."""
        if name == "main" or not self.substream:
            return replace(self, substream=None)
        return replace(self, url=self.substream, on_demand=True, substream=None)

    def __repr__(self) -> str:  # dataclass repr would print the password
        sub = f", substream={redact_url(self.substream)!r}" if self.substream else ""
        return f"CameraConfig(name={self.name!r}, url={self.safe_url!r}{sub})"


# Marks the settings of the open listening socket: a reload can't change them
# under running viewers, so they wait for a restart.
_LISTENER = {"listener": True}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=_LISTENER)
    port: int = field(default=8080, metadata=_LISTENER)
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # besides IP literals, localhost and this machine's name
    max_viewers: int = 0  # in total; 0: unlimited
    max_connections_per_client: int = 0  # per client address; 0: unlimited
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES  # in total; 0: unlimited
    max_handshakes_per_client: int = DEFAULT_MAX_HANDSHAKES_PER_CLIENT  # 0: unlimited
    # A config file without cameras is an error (an empty or half-written
    # file), unless the operator says it is meant.
    allow_no_cameras: bool = False
    handshake_timeout: float = field(default=10.0, metadata=_LISTENER)
    max_message_size: int = field(default=4096, metadata=_LISTENER)
    ping_interval: float = field(default=20.0, metadata=_LISTENER)
    ping_timeout: float = field(default=20.0, metadata=_LISTENER)
    viewer_max_delay: float = DEFAULT_MAX_DELAY
    viewer_max_bytes: int = DEFAULT_MAX_BYTES
    # Seconds a viewer's socket may stay backed up before it is closed (a
    # viewer that stopped reading); 0: never.
    drain_timeout: float = 30.0
    # Paths: a reload rereads the same files (a renewed certificate), but a new
    # path waits for a restart.
    tls_cert: str | None = field(default=None, metadata=_LISTENER)
    tls_key: str | None = field(default=None, metadata=_LISTENER)

    @property
    def viewer_backlog(self) -> BacklogLimits:
        return BacklogLimits(self.viewer_max_delay, self.viewer_max_bytes)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    secret: str | None = None
    max_token_ttl: float = DEFAULT_MAX_TOKEN_TTL  # seconds from now a token's exp may lie
    metrics_token: str | None = None  # Bearer token for /metrics and /healthz's counts

    def __repr__(self) -> str:
        return (f"AuthConfig(secret={'***' if self.secret else None}, "
                f"max_token_ttl={self.max_token_ttl:g}, "
                f"metrics_token={'***' if self.metrics_token else None})")


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cameras: tuple[CameraConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """What no log line may show: camera credentials and the token secret."""
        found = [s for c in self.cameras for url in (c.url, c.substream) if url
                 for s in url_secrets(url)]
        found += [s for s in (self.auth.secret, self.auth.metrics_token) if s]
        return tuple(found)


# --- reload -----------------------------------------------------------------------------------


def listener_keys() -> tuple[str, ...]:
    """The ``[server]`` keys that only a restart applies."""
    return tuple(f.name for f in fields(ServerConfig) if f.metadata.get("listener"))


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does; the running cameras and viewers of ``unchanged``
    see nothing at all."""

    config: Config  # to run from now on: the new one, with the listener and logging as they were
    add: tuple[CameraConfig, ...]
    remove: tuple[str, ...]
    restart: tuple[CameraConfig, ...]  # same name, new settings: viewers stay
    unchanged: tuple[str, ...]
    listener_changed: tuple[str, ...]  # keys whose new values wait for a restart


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare the running configuration with a newly read one."""
    before = {c.name: c for c in old.cameras}
    after = {c.name for c in new.cameras}
    kept = {key: getattr(old.server, key) for key in listener_keys()}
    return ReloadPlan(
        config=replace(new, server=replace(new.server, **kept), log=old.log),
        add=tuple(c for c in new.cameras if c.name not in before),
        remove=tuple(name for name in before if name not in after),
        restart=tuple(c for c in new.cameras if c.name in before and before[c.name] != c),
        unchanged=tuple(c.name for c in new.cameras if before.get(c.name) == c),
        listener_changed=tuple(k for k, v in kept.items() if getattr(new.server, k) != v),
    )


# --- validation helpers -----------------------------------------------------------------------


class _Section:
    """Reads one TOML table, remembering which keys were used so the rest can
    be reported as unknown (a typo must not silently fall back to a default)."""

    def __init__(self, where: str, data: Any, env: Mapping[str, str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table, got {_kind(data)}")
        self.where = where
        self.data = data
        self.env = env
        self.used: set[str] = set()

    def err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        # TOML's bool is an int subclass; never let `true` pass as a port.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise self.err(key, f"expected {_names(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.err(key, f"expected {_names(kind)}, got {_kind(value)}")
        return value

    def number(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = float(self.get(key, (int, float), default))
        if not minimum <= value <= maximum:
            raise self.err(key, f"{value:g} is out of range ({minimum:g} to {maximum:g})")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.get(key, int, default)
        if not minimum <= value <= maximum:
            raise self.err(key, f"{value} is out of range ({minimum} to {maximum})")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default).lower()
        if value not in choices:
            raise self.err(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def secret(self, key: str) -> str | None:
        """A secret given inline as ``key``, or as ``key_env`` (a variable
        name) or ``key_file`` (a path; relative to systemd's
        $CREDENTIALS_DIRECTORY when that is set, for ``LoadCredential=``)."""
        given = [k for k in (key, f"{key}_env", f"{key}_file") if k in self.data]
        if len(given) > 1:
            raise self.err(given[1], f"give only one of {', '.join(given)}")
        inline = self.get(key, str, None)
        env_name = self.get(f"{key}_env", str, None)
        file_name = self.get(f"{key}_file", str, None)
        if inline is not None:
            if not inline:
                raise self.err(key, "is empty")
            return inline
        if env_name is not None:
            if env_name not in self.env:
                raise self.err(f"{key}_env", f"environment variable {env_name} is not set")
            if not self.env[env_name]:
                raise self.err(f"{key}_env", f"environment variable {env_name} is empty")
            return self.env[env_name]
        if file_name is not None:
            path = Path(file_name)
            creds = self.env.get("CREDENTIALS_DIRECTORY")
            if not path.is_absolute() and creds:
                path = Path(creds) / path
            try:
                value = path.read_text(encoding="utf-8").strip("\r\n")
            except OSError as exc:
                raise self.err(f"{key}_file", f"cannot read {path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise self.err(f"{key}_file", f"{path} is not UTF-8 text") from None
            if not value:
                # A credential written halfway, or never: an empty password
                # would fail at the camera with a far less clear message.
                raise self.err(f"{key}_file", f"{path} is empty")
            return value
        return None

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(words.get(k, k.__name__) for k in _as_tuple(kind))


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


# --- sections ---------------------------------------------------------------------------------


def validate_camera_name(name: str) -> str | None:
    """The problem with a camera name, or None."""
    if not CAMERA_NAME.match(name):
        return (f"invalid camera name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    return None


def validate_url(url: str) -> str | None:
    """The problem with a camera URL (phrased without its credentials), or None."""
    if not url:
        return "empty URL"
    if "://" not in url:
        return None  # a file path; whether it exists is the source's business at run time
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"malformed URL {redact_url(url)!r}: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        return (f"unsupported scheme {scheme!r} in {redact_url(url)!r} "
                "(use rtsp://, rtsps://, file:// or a file path)")
    if scheme in ("rtsp", "rtsps") and not parts.hostname:
        return f"no host in {redact_url(url)!r}"
    if scheme == "file" and not parts.path:
        return f"no path in {redact_url(url)!r}"
    return None


def is_rtsp(url: str) -> bool:
    return url.lower().startswith(("rtsp://", "rtsps://"))


def with_password(url: str, password: str, user: str | None = None) -> str:
    """Put a password (from the environment or a credentials file) into the URL,
    with the URL's user name (``user`` when it has none)."""
    parts = urlsplit(url)
    user = parts.username or user or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _camera(where: str, data: Any, env: Mapping[str, str]) -> CameraConfig:
    s = _Section(where, data, env)
    name = s.get("name", str, None)
    if name is None:
        raise s.err("name", "missing")
    if problem := validate_camera_name(name):
        raise s.err("name", problem)
    s.where = f"{where} ({name})"
    url = s.get("url", str, None)
    if url is None:
        raise s.err("url", "missing")
    if problem := validate_url(url):
        raise s.err("url", problem)
    substream = s.get("substream", str, None)
    if substream is not None and (problem := validate_url(substream)):
        raise s.err("substream", problem)
    password = s.secret("password")
    if password is not None:
        if not is_rtsp(url):
            raise s.err("password", "only rtsp:// and rtsps:// cameras take a password")
        url = with_password(url, password)
        if substream is not None and is_rtsp(substream):
            # The same camera, the same account: a sub-stream URL without a
            # user name takes the main URL's.
            substream = with_password(substream, password, user=urlsplit(url).username)
    camera = CameraConfig(
        name=name,
        url=url,
        transport=s.choice("transport", "tcp", TRANSPORTS),
        on_demand=s.get("on_demand", bool, False),
        linger=s.number("linger", 30.0, minimum=0, maximum=86400),
        open_timeout=s.number("open_timeout", 10.0, minimum=0.1, maximum=300),
        read_timeout=s.number("read_timeout", 10.0, minimum=0.1, maximum=300),
        max_viewers=s.integer("max_viewers", 0, minimum=0, maximum=100_000),
        assembly=s.choice("assembly", "nal", ASSEMBLY),
        gop_cache_bytes=s.integer("gop_cache_bytes", DEFAULT_GOP_CACHE_BYTES,
                                  minimum=0, maximum=1 << 30),
        substream=substream,
    )
    s.finish()
    return camera


def _entries(s: _Section, key: str, check: Callable[[tuple[str, ...]], object],
             example: str) -> tuple[str, ...]:
    """A list of strings, each of which ``check`` accepts (raising ValueError)."""
    entries = s.get(key, list, [])
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise s.err(f"{key}[{i}]", f"expected a string, got {_kind(entry)}")
        try:
            check((entry,))
        except ValueError as exc:
            raise s.err(f"{key}[{i}]", f"{exc} (expected {example})") from None
    return tuple(entries)


def _origins(s: _Section) -> tuple[str, ...]:
    return _entries(s, "allowed_origins", OriginPolicy,
                    "an origin like https://shop.example.com or https://*.example.com: "
                    "no path, no trailing slash")


def _hosts(s: _Section) -> tuple[str, ...]:
    return _entries(s, "allowed_hosts", HostPolicy,
                    "a host name like cams.example.com or *.example.com: no scheme, no port")


def _server(data: Any, env: Mapping[str, str]) -> ServerConfig:
    s = _Section("server", data, env)
    d = ServerConfig()
    server = ServerConfig(
        host=s.get("host", str, d.host),
        port=s.integer("port", d.port, minimum=0, maximum=65535),
        allowed_origins=_origins(s),
        allowed_hosts=_hosts(s),
        max_viewers=s.integer("max_viewers", 0, minimum=0, maximum=1_000_000),
        max_connections_per_client=s.integer("max_connections_per_client", 0,
                                             minimum=0, maximum=100_000),
        max_handshakes=s.integer("max_handshakes", d.max_handshakes,
                                 minimum=0, maximum=1_000_000),
        max_handshakes_per_client=s.integer("max_handshakes_per_client",
                                            d.max_handshakes_per_client,
                                            minimum=0, maximum=100_000),
        allow_no_cameras=s.get("allow_no_cameras", bool, d.allow_no_cameras),
        handshake_timeout=s.number("handshake_timeout", d.handshake_timeout,
                                   minimum=0.1, maximum=300),
        max_message_size=s.integer("max_message_size", d.max_message_size,
                                   minimum=64, maximum=1 << 20),
        ping_interval=s.number("ping_interval", d.ping_interval, minimum=0, maximum=3600),
        ping_timeout=s.number("ping_timeout", d.ping_timeout, minimum=0, maximum=3600),
        drain_timeout=s.number("drain_timeout", d.drain_timeout, minimum=0, maximum=3600),
        viewer_max_delay=s.number("viewer_max_delay", d.viewer_max_delay,
                                  minimum=0.05, maximum=60),
        viewer_max_bytes=s.integer("viewer_max_bytes", d.viewer_max_bytes,
                                   minimum=64 * 1024, maximum=1 << 30),
        tls_cert=s.get("tls_cert", str, None),
        tls_key=s.get("tls_key", str, None),
    )
    if bool(server.tls_cert) != bool(server.tls_key):
        raise s.err("tls_key" if server.tls_cert else "tls_cert",
                    "tls_cert and tls_key go together")
    s.finish()
    return server


def _auth(data: Any, env: Mapping[str, str]) -> AuthConfig:
    s = _Section("auth", data, env)
    d = AuthConfig()
    secret = s.secret("secret")
    if secret is not None and (problem := secret_problem(secret)):
        raise s.err("secret", problem)
    metrics_token = s.secret("metrics_token")
    if metrics_token is not None and (problem := metrics_token_problem(metrics_token)):
        raise s.err("metrics_token", problem)
    auth = AuthConfig(secret=secret,
                      max_token_ttl=s.number("max_token_ttl", d.max_token_ttl,
                                             minimum=60, maximum=366 * 86400),
                      metrics_token=metrics_token)
    s.finish()
    return auth


def _log(data: Any, env: Mapping[str, str]) -> LogConfig:
    s = _Section("log", data, env)
    log = LogConfig(format=s.choice("format", "auto", LOG_FORMATS),
                    level=s.choice("level", "info", LOG_LEVELS))
    s.finish()
    return log


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document (no file name in messages; see load_config)."""
    env = os.environ if env is None else env
    top = _Section("config", dict(data), env)
    sections: dict[str, Callable[[Any, Mapping[str, str]], Any]] = {
        "server": _server, "auth": _auth, "log": _log,
    }
    built = {key: fn(top.get(key, dict, {}), env) for key, fn in sections.items()}
    raw_cameras = top.get("camera", list, [])
    cameras = tuple(_camera(f"camera[{i}]", c, env) for i, c in enumerate(raw_cameras))
    for key in sorted(set(top.data) - top.used):
        hint = " (did you mean [[camera]]?)" if key in ("cameras", "camera") else ""
        raise ConfigError(f"{key}: unknown key{hint}")
    check_unique(cameras)
    return Config(server=built["server"], cameras=cameras, auth=built["auth"], log=built["log"])


def check_unique(cameras: tuple[CameraConfig, ...]) -> None:
    seen: set[str] = set()
    for camera in cameras:
        if camera.name in seen:
            raise ConfigError(f"camera {camera.name!r}: duplicate camera name")
        seen.add(camera.name)


READ_ATTEMPTS = 3
READ_RETRY_DELAY = 0.05  # seconds; a program writing the file in place is usually done by then


def read_settled(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, read while nothing was writing it.

    A reload can meet a file being rewritten in place (``>``, ``cp``, an
    editor that doesn't rename): the bytes read must be those of one moment,
    so the file must look the same (inode, size, modification time) before
    and after, with as many bytes read as it has. Raises OSError, or
    ConfigError when it keeps changing."""
    for attempt in range(READ_ATTEMPTS):
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            data = f.read()
        after = os.stat(path)
        if len(data) == before.st_size and (before.st_ino, before.st_size, before.st_mtime_ns) \
                == (after.st_ino, after.st_size, after.st_mtime_ns):
            return data
        if attempt + 1 < READ_ATTEMPTS:
            time.sleep(READ_RETRY_DELAY)
    raise ConfigError(f"{path}: the file changed while it was being read "
                      "(still being written?); send the reload again when it is complete")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML file; every error message starts with the file name."""
    name = str(path)
    try:
        raw = read_settled(path)
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from None
    if not raw.strip():
        raise ConfigError(f"{name}: the file is empty (written halfway, or truncated?)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    try:
        config = parse_config(data, env)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return replace(config, path=name)


def require_cameras(config: Config) -> Config:
    """A configuration file with no camera is refused (at start, on reload and
    by check-config) unless ``[server] allow_no_cameras`` says it is meant:
    more often it is a file cut short, and a reload would close every viewer."""
    if not config.cameras and not config.server.allow_no_cameras:
        where = f"{config.path}: " if config.path else ""
        raise ConfigError(f"{where}no cameras: add a [[camera]] table, or set "
                          "[server] allow_no_cameras = true to run without any")
    return config


def _name_and_url(flag: str, option: str) -> tuple[str, str]:
    name, sep, url = option.partition("=")
    if not sep:
        raise ConfigError(f"{flag} {redact_url(option)!r}: expected NAME=URL")
    if problem := validate_camera_name(name):
        raise ConfigError(f"{flag} {name}: {problem}")
    if problem := validate_url(url):
        raise ConfigError(f"{flag} {name}: {problem}")
    return name, url


def parse_camera_option(option: str) -> CameraConfig:
    """``NAME=URL`` from ``--camera``."""
    name, url = _name_and_url("--camera", option)
    return CameraConfig(name=name, url=url)


def parse_substream_option(option: str) -> tuple[str, str]:
    """``NAME=URL`` from ``--substream``: the sub-stream of camera NAME."""
    return _name_and_url("--substream", option)


def with_overrides(
    config: Config,
    *,
    cameras: tuple[CameraConfig, ...] = (),
    substreams: tuple[tuple[str, str], ...] = (),
    demo: bool = False,
    host: str | None = None,
    port: int | None = None,
    allowed_origins: tuple[str, ...] = (),
    log_format: str | None = None,
    log_level: str | None = None,
) -> Config:
    """Apply command-line settings on top of the file's (the command line wins)."""
    server = config.server
    if host is not None:
        server = replace(server, host=host)
    if port is not None:
        server = replace(server, port=port)
    for origin in allowed_origins:
        try:
            OriginPolicy((origin,))
        except ValueError as exc:
            raise ConfigError(f"--allowed-origin: {exc}") from None
    if allowed_origins:
        server = replace(server, allowed_origins=server.allowed_origins + allowed_origins)
    log = replace(
        config.log,
        **({"format": log_format} if log_format else {}),
        **({"level": log_level} if log_level else {}),
    )
    extra = cameras + ((CameraConfig(name="demo", url=DEMO_URL),) if demo else ())
    all_cameras = config.cameras + extra
    check_unique(all_cameras)
    subs = dict(substreams)
    for name in subs:
        if name not in {c.name for c in all_cameras}:
            raise ConfigError(f"--substream {name}: no camera named {name!r}")
    all_cameras = tuple(replace(c, substream=subs[c.name]) if c.name in subs else c
                        for c in all_cameras)
    return replace(config, server=server, log=log, cameras=all_cameras)
