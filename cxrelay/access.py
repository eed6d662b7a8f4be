"""Who may watch: host names, origin checks, viewer tokens, the metrics
token, and the per-client counts of connections and handshakes.

Pure policy (no asyncio, no websockets): the server asks these objects before
the WebSocket upgrade and turns a refusal into a plain HTTP status (421 for a
host name, 403 for an origin, 401 for a token, 503 for a limit). Every refusal
reason is one short line, safe for a response body and a log line: it never
contains a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

TOKEN_COOKIE = "cxrelay_token"
TOKEN_QUERY = "token"
ALGORITHM = "HS256"
ALL_CAMERAS = "*"
MIN_SECRET_LENGTH = 32  # HS256 wants a key as long as its hash (PyJWT warns below)
MAX_TOKEN_LENGTH = 4096  # real tokens are a few hundred bytes; don't HMAC megabytes
NBF_LEEWAY = 30.0  # clock skew between the app that mints tokens and cxrelay
DEFAULT_MAX_TOKEN_TTL = 7 * 86400.0  # a week: kiosks renew weekly, a leaked token dies in days
MIN_METRICS_TOKEN_LENGTH = 16
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_ORIGIN_LENGTH = 1024

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PORT = re.compile(r"^[0-9]{1,5}$")


# --- origins ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed web origin, normalised: lower-case scheme and host, explicit port."""

    scheme: str
    host: str  # lower case; IPv6 literals without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def _split_host_port(netloc: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port text)."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError("unclosed [ in host")
        host, rest = netloc[1:end], netloc[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ]")
        ipaddress.IPv6Address(host)  # raises ValueError
        return host, rest[1:] if rest else None
    host, sep, port = netloc.partition(":")
    return host, port if sep else None


def _check_host(host: str, *, wildcard: bool = False) -> str:
    host = host.lower()
    if ":" in host:  # came out of [brackets] and was checked as IPv6 there
        return str(ipaddress.IPv6Address(host))
    name = host[2:] if wildcard and host.startswith("*.") else host
    if not _HOSTNAME.match(name) or len(name) > 253:
        raise ValueError(f"bad host name {host[:64]!r}")
    return host


def _port(text: str | None, scheme: str) -> int:
    if text is None:
        return DEFAULT_PORTS[scheme]
    if not _PORT.match(text) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text[:16]!r}")
    return int(text)


def parse_origin(text: str, *, wildcard: bool = False) -> Origin:
    """Parse ``scheme://host[:port]`` (http or https, nothing after the
    authority). With ``wildcard``, the host may start with ``*.``. Raises
    ValueError for anything else."""
    if len(text) > MAX_ORIGIN_LENGTH or not text.isascii() or not text.isprintable():
        raise ValueError("not a printable ASCII origin")
    scheme, sep, netloc = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("the scheme must be http:// or https://")
    if not netloc or any(c in netloc for c in "/?#@\\ "):
        raise ValueError("an origin is scheme://host[:port], with no path, user or query")
    host, port = _split_host_port(netloc)
    return Origin(scheme, _check_host(host, wildcard=wildcard), _port(port, scheme))


def parse_host_header(text: str, tls: bool) -> Origin:
    """The request's own origin, from its ``Host`` header and whether it came over TLS."""
    scheme = "https" if tls else "http"
    if not text or len(text) > MAX_ORIGIN_LENGTH or not text.isascii() \
            or any(c in text for c in "/?#@\\ \t"):
        raise ValueError("malformed Host header")
    host, port = _split_host_port(text)
    return Origin(scheme, _check_host(host), _port(port, scheme))


def _matches(pattern: Origin, origin: Origin) -> bool:
    if (pattern.scheme, pattern.port) != (origin.scheme, origin.port):
        return False
    if pattern.host.startswith("*."):
        # One or more whole labels: "a.example.com" and "a.b.example.com", but
        # never "example.com" itself nor "evil-example.com".
        return origin.host.endswith(pattern.host[1:])
    return pattern.host == origin.host


class OriginPolicy:
    """Which web pages may open a viewer connection (a defence against other
    sites embedding your cameras, i.e. cross-site WebSocket hijacking).

    - A request without an ``Origin`` header is not from a browser page: it is
      allowed (any tool can forge an Origin anyway; tokens are the way to keep
      tools out).
    - A page served from this very server (Origin equal to the request's own
      scheme, ``Host`` and port) is always allowed, so the bundled wall works.
    - Anything else must be listed: an exact origin ``https://shop.example.com``
      (default ports normalised: ``https://x:443`` is ``https://x``), or
      ``https://*.example.com``, where ``*`` stands for one or more labels.
      Scheme and port must match exactly. ``"*"`` alone allows every origin,
      including ``Origin: null`` (sandboxed frames, file:// pages), which is
      otherwise refused.
    """

    def __init__(self, allowed_origins: tuple[str, ...] | list[str] = ()) -> None:
        self.allow_any = "*" in allowed_origins
        self.patterns: tuple[Origin, ...] = tuple(
            self._pattern(entry) for entry in allowed_origins if entry != "*"
        )

    @staticmethod
    def _pattern(entry: str) -> Origin:
        try:
            return parse_origin(entry, wildcard=True)
        except ValueError as exc:
            raise ValueError(f"allowed origin {entry[:80]!r}: {exc}") from None

    def check(self, origin: str | None, host: str | None, tls: bool,
              forwarded_proto: str | None = None) -> str | None:
        """None if a request with these headers may proceed, else a one-line reason.

        ``forwarded_proto`` is the ``X-Forwarded-Proto`` header: behind a proxy
        that terminates TLS, the page is https although cxrelay sees http.
        Trusting it is safe here: a browser page cannot set that header on a
        WebSocket, and anything that is not a browser can forge Origin anyway.
        """
        if origin is None or self.allow_any:
            return None
        if origin.strip().lower() == "null":
            return "Origin null is not allowed (a sandboxed or file:// page)"
        try:
            parsed = parse_origin(origin.strip())
        except ValueError:
            return "malformed Origin header"
        if host is not None and self._same_origin(parsed, host, _scheme(tls, forwarded_proto)):
            return None
        if any(_matches(pattern, parsed) for pattern in self.patterns):
            return None
        return f"origin {parsed} is not allowed"

    @staticmethod
    def _same_origin(origin: Origin, host: str, scheme: str) -> bool:
        try:
            return parse_host_header(host.strip(), scheme == "https") == origin
        except ValueError:
            return False


def _scheme(tls: bool, forwarded_proto: str | None) -> str:
    if forwarded_proto:
        first = forwarded_proto.split(",", 1)[0].strip().lower()  # the client-facing hop
        if first in DEFAULT_PORTS:
            return first
    return "https" if tls else "http"


# --- host names (DNS rebinding) ---------------------------------------------------------------


# Special-use and private-use names, never delegated in public DNS (RFC 6761,
# RFC 6762, RFC 8375, ICANN's .internal).
PRIVATE_SUFFIXES = (".localhost", ".local", ".home.arpa", ".internal")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which names a request may call this server by (its ``Host`` header): a
    defence against DNS rebinding, where a page from ``http://evil.test:8080``
    gets ``evil.test`` to resolve to this relay, and is then same-origin with
    it in the browser's eyes, ``Host`` and ``Origin`` both saying evil.test.

    - No ``Host`` header: not a browser (every browser sends one); allowed.
    - IP literals: always allowed. A page at an IP address is on that
      address: there is no name for an attacker to rebind.
    - Names no public DNS can answer for: one label (``cambox``,
      ``localhost``), and names under ``.localhost``, ``.local`` (mDNS),
      ``.home.arpa`` and ``.internal``: always allowed. Rebinding needs a
      name whose DNS the attacker runs, i.e. a public domain.
    - ``extra`` names (the machine's own host name, the configured listen
      host): allowed.
    - Any other name must be listed in ``allowed_hosts``: exact names, or
      ``*.example.com`` for one or more labels under it. ``"*"`` allows every
      name (and gives up this defence).

    Ports don't matter here (the origin check compares them).
    """

    def __init__(self, allowed_hosts: tuple[str, ...] | list[str] = (),
                 extra: tuple[str, ...] | list[str] = ()) -> None:
        self.allow_any = "*" in allowed_hosts
        self.names = {self._name(entry) for entry in (*allowed_hosts, *extra) if entry != "*"
                      and entry}

    @staticmethod
    def _name(entry: str) -> str:
        host = entry.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return _check_host(host, wildcard=True)
        except ValueError as exc:
            raise ValueError(f"allowed host {entry[:80]!r}: {exc}") from None

    def check(self, host_header: str | None) -> str | None:
        """None if a request with this ``Host`` header may proceed, else a one-line reason."""
        if host_header is None or self.allow_any:
            return None
        try:
            host, _ = _split_host_port(host_header.strip())
            name = _check_host(host.rstrip("."))  # "localhost." is localhost
        except ValueError:
            return "malformed Host header"
        if _is_ip(name) or "." not in name or name.endswith(PRIVATE_SUFFIXES):
            return None
        if name in self.names or any(
                pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in self.names):
            return None
        return f"host {name[:64]} is not served here (list it in [server] allowed_hosts)"


# --- tokens -----------------------------------------------------------------------------------

# PyJWT >= 2.10 warns on every use of an HMAC key under 32 bytes; the config
# enforces its own minimum, and a warning per viewer would only flood the log.
_KEY_LENGTH_WARNING: type[Warning] | None = getattr(jwt, "InsecureKeyLengthWarning", None)


@contextmanager
def _quiet_key_length() -> Iterator[None]:
    with warnings.catch_warnings():
        if _KEY_LENGTH_WARNING is not None:
            warnings.simplefilter("ignore", _KEY_LENGTH_WARNING)
        yield


class AccessDenied(Exception):
    """A viewer may not watch. ``reason`` is one line for a 401 body and a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants."""

    cameras: tuple[str, ...]  # ("*",) for every camera
    expires_at: float  # seconds since the epoch
    subject: str | None = None

    def allows(self, camera: str) -> bool:
        return ALL_CAMERAS in self.cameras or camera in self.cameras

    def remaining(self, now: float | None = None) -> float:
        """Seconds until expiry (negative once expired): when to close with 1008."""
        return self.expires_at - (time.time() if now is None else now)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cameras_claim(value: Any) -> tuple[str, ...]:
    if value == ALL_CAMERAS:
        return (ALL_CAMERAS,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AccessDenied('token claim "cameras" must be a list of camera names or "*"')


class TokenVerifier:
    """Checks viewer tokens: JWTs signed with HS256 and the shared secret.

    Required claims: ``exp`` (expiry, epoch seconds) and ``cameras`` (a list of
    camera names, or ``"*"``). Optional: ``sub`` (who, for the logs), ``nbf``.
    Expiry is exact (no leeway), so ``Claims.expires_at`` is also the moment a
    viewer still watching must be closed; ``nbf`` tolerates some clock skew.
    An ``exp`` more than ``max_ttl`` seconds ahead is refused: without a cap, a
    token minted by mistake for years could only be revoked by a new secret.
    """

    def __init__(self, secret: str, max_ttl: float = DEFAULT_MAX_TOKEN_TTL) -> None:
        if not secret:
            raise ValueError("the token secret is empty")
        if not _number(max_ttl) or max_ttl <= 0:
            raise ValueError("the longest token lifetime must be a positive number of seconds")
        self.max_ttl = float(max_ttl)
        try:  # PyJWT refuses HMAC keys that look like PEM/SSH keys; say so now, not per viewer
            with _quiet_key_length():
                jwt.encode({}, secret, algorithm=ALGORITHM)
        except jwt.InvalidKeyError as exc:
            raise ValueError(f"the token secret cannot be used for HS256: {exc}") from None
        self._secret = secret

    def __repr__(self) -> str:
        return "TokenVerifier(secret=***)"

    def verify(self, token: str | None, camera: str | None, now: float | None = None) -> Claims:
        """The token's claims, if it is valid now and covers ``camera`` (None: any
        valid token, for the API). Raises AccessDenied otherwise."""
        if not token:
            raise AccessDenied("a viewer token is required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AccessDenied("token too long")
        payload = self._decode(token)
        now = time.time() if now is None else now
        exp = payload["exp"]
        if not _number(exp):
            raise AccessDenied('token claim "exp" must be a number')
        if now >= exp:
            raise AccessDenied("token expired")
        if exp - now > self.max_ttl + NBF_LEEWAY:
            raise AccessDenied(f"token expires too far ahead: more than "
                               f"{format_duration(self.max_ttl)} from now "
                               "(the relay's [auth] max_token_ttl)")
        nbf = payload.get("nbf")
        if nbf is not None and (not _number(nbf) or now + NBF_LEEWAY < nbf):
            raise AccessDenied("token not valid yet")
        sub = payload.get("sub")
        claims = Claims(cameras=_cameras_claim(payload.get("cameras")), expires_at=float(exp),
                        subject=sub if isinstance(sub, str) else None)
        if camera is not None and not claims.allows(camera):
            raise AccessDenied(f"token does not cover camera {camera[:64]}")
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        # Times are checked by verify() against its `now`; PyJWT checks the
        # signature, the algorithm (HS256 only: never "none", never RS256 with
        # the secret taken for a public key) and that "exp" is present.
        options = {"require": ["exp"], "verify_exp": False, "verify_nbf": False,
                   "verify_iat": False, "verify_aud": False, "verify_iss": False}
        try:
            with _quiet_key_length():
                payload = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                     options=options)  # type: ignore[arg-type]
        except jwt.MissingRequiredClaimError:
            raise AccessDenied('token has no expiry (claim "exp")') from None
        except jwt.InvalidAlgorithmError:
            raise AccessDenied("token algorithm not allowed (HS256 only)") from None
        except jwt.InvalidSignatureError:
            raise AccessDenied("token signature does not match") from None
        except jwt.PyJWTError:
            raise AccessDenied("malformed token") from None
        if not isinstance(payload, dict):
            raise AccessDenied("malformed token")
        return payload


def secret_problem(secret: str) -> str | None:
    """What is wrong with a token secret, in one line that never shows it, or
    None. The relay refuses such a secret, so nothing may mint with it either."""
    if len(secret) < MIN_SECRET_LENGTH:
        return (f"too short: use at least {MIN_SECRET_LENGTH} characters "
                "(for example: openssl rand -hex 32)")
    try:
        TokenVerifier(secret)
    except ValueError as exc:
        return str(exc)
    return None


def mint_token(secret: str, cameras: list[str] | tuple[str, ...] | str, ttl_seconds: float,
               subject: str | None = None, now: float | None = None) -> str:
    """A viewer token for ``cameras`` (names, or "*" for all) valid for ``ttl_seconds``."""
    if not secret:
        raise ValueError("the token secret is empty")
    if not _number(ttl_seconds) or ttl_seconds <= 0:
        raise ValueError("the token lifetime must be a positive number of seconds")
    if isinstance(cameras, str):
        claim: str | list[str] = ALL_CAMERAS if cameras == ALL_CAMERAS else [cameras]
    else:
        claim = list(cameras)
    if claim != ALL_CAMERAS and (not claim or not all(isinstance(c, str) and c for c in claim)):
        raise ValueError('name at least one camera, or "*" for all')
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"cameras": claim, "iat": int(issued),
                               "exp": math.ceil(issued + ttl_seconds)}
    if subject:
        payload["sub"] = subject
    with _quiet_key_length():
        return jwt.encode(payload, secret, algorithm=ALGORITHM)


def _header_values(headers: Mapping[str, str] | Callable[[str], Any], name: str) -> list[str]:
    """Every value of header ``name``, from a Mapping (websockets' Headers has
    get_all; a plain dict may be keyed in any case) or a getter function."""
    if callable(headers) and not isinstance(headers, Mapping):
        value = headers(name)
        return [] if value is None else [value] if isinstance(value, str) else list(value)
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name))
    return [v for k, v in headers.items() if k.lower() == name.lower()]


def _cookie_token(cookie_headers: list[str]) -> str | None:
    # SimpleCookie gives up on a whole header at the first bad pair (and
    # browsers send others' junk cookies), so parse one pair at a time.
    for header in cookie_headers:
        for pair in header.split(";"):
            name, sep, _ = pair.partition("=")
            if not sep or name.strip() != TOKEN_COOKIE:
                continue
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(pair.strip())
            except CookieError:
                continue
            morsel = jar.get(TOKEN_COOKIE)
            if morsel is not None and morsel.value:
                return morsel.value
    return None


def token_from_request(path: str, headers: Mapping[str, str] | Callable[[str], Any]) -> str | None:
    """The viewer token from ``?token=`` (first) or the ``cxrelay_token`` cookie."""
    query = urlsplit(path).query
    if query:
        values = parse_qs(query, errors="replace").get(TOKEN_QUERY)
        if values and values[0]:
            return values[0]
    return _cookie_token(_header_values(headers, "Cookie"))


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``7d`` (or ``1.5h``)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text[:40]!r}: use seconds, or a number with "
                         "s, m, h or d (like 90, 15m, 1h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text[:40]!r}: must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """``7d``, ``12h``, ``90m``, ``45s``: the largest unit that divides it (else seconds)."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- the metrics token ------------------------------------------------------------------------


def bearer_token(headers: Mapping[str, str] | Callable[[str], Any]) -> str | None:
    """The credentials of ``Authorization: Bearer …`` (what Prometheus sends
    with ``authorization: {credentials_file: …}``), or None."""
    values = _header_values(headers, "Authorization")
    if len(values) != 1:
        return None
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def metrics_token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so the time taken tells nothing of the token."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def metrics_token_problem(token: str) -> str | None:
    if len(token) < MIN_METRICS_TOKEN_LENGTH:
        return (f"too short: use at least {MIN_METRICS_TOKEN_LENGTH} characters "
                "(for example: openssl rand -hex 16)")
    if not token.isascii() or not token.isprintable() or " " in token:
        return "use printable ASCII without spaces (for example: openssl rand -hex 16)"
    return None


# --- connections per client -------------------------------------------------------------------


def client_key(address: str) -> str:
    """One key per client address: IPv4-mapped IPv6 (::ffff:10.0.0.1) is the
    IPv4 address, and IPv6 is in its canonical short form."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a Unix socket or an unknown form: count it as given
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ConnectionLimiter:
    """Open viewer connections per client address; 0 means unlimited.

    Behind a reverse proxy every client has the proxy's address: limit there
    instead (nginx ``limit_conn``) and leave this at 0.
    """

    def __init__(self, max_per_client: int) -> None:
        if max_per_client < 0:
            raise ValueError("max_per_client must be 0 (unlimited) or more")
        self.max_per_client = max_per_client
        self._open: dict[str, int] = {}

    def allows(self, address: str) -> bool:
        """Whether one more connection from ``address`` would be accepted
        (a check before the upgrade; count it with acquire once it is open)."""
        return not self.max_per_client or self.count(address) < self.max_per_client

    def acquire(self, address: str) -> bool:
        """Count one more connection from ``address``; False (and nothing
        counted) if it already has its maximum."""
        if not self.allows(address):
            return False
        key = client_key(address)
        self._open[key] = self._open.get(key, 0) + 1
        return True

    def release(self, address: str) -> None:
        key = client_key(address)
        count = self._open.get(key, 0)
        if count <= 1:
            self._open.pop(key, None)  # forget idle clients: the table must not grow forever
        else:
            self._open[key] = count - 1

    def count(self, address: str) -> int:
        return self._open.get(client_key(address), 0)

    def __len__(self) -> int:
        return len(self._open)


class Handshakes:
    """Connections accepted whose request has not been answered yet, per
    client address and in total; a limit of 0 means none.

    A connection that sends half a request holds a descriptor until the
    handshake timeout: without bounds, a client could hold every descriptor
    the process has with requests it never finishes. Past a limit, the
    server either refuses a new connection at once or gives it a moment to
    send its whole request (a burst of quick requests is no attack); which
    is the server's choice (connection.py), so this only counts and says.
    """

    def __init__(self, max_per_client: int, max_total: int) -> None:
        if max_per_client < 0 or max_total < 0:
            raise ValueError("handshake limits must be 0 (unlimited) or more")
        self.max_per_client = max_per_client
        self.max_total = max_total
        self.total = 0
        self._per_client = ConnectionLimiter(0)  # counts only: the bounds are checked here

    def begin(self, address: str) -> str | None:
        """Count one more handshake from ``address``; the one-line reason it
        is past a limit, or None."""
        over = None
        if self.max_total and self.total >= self.max_total:
            over = f"too many connections in their handshake (maximum {self.max_total})"
        elif self.max_per_client and self.count(address) >= self.max_per_client:
            over = (f"too many connections from {client_key(address)} in their handshake "
                    f"(maximum {self.max_per_client})")
        self._per_client.acquire(address)
        self.total += 1
        return over

    def end(self, address: str) -> None:
        if self.count(address) > 0:
            self._per_client.release(address)
            self.total -= 1

    def count(self, address: str) -> int:
        return self._per_client.count(address)

    def __len__(self) -> int:
        return len(self._per_client)
