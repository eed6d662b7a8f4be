"""cxrelay.access: origins, tokens, durations, per-client limits."""

from __future__ import annotations

import base64
import json
import time
import warnings

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

from cxrelay.access import (
    DEFAULT_MAX_TOKEN_TTL,
    AccessDenied,
    Claims,
    ConnectionLimiter,
    Handshakes,
    HostPolicy,
    OriginPolicy,
    TokenVerifier,
    bearer_token,
    client_key,
    format_duration,
    metrics_token_matches,
    metrics_token_problem,
    mint_token,
    parse_duration,
    token_from_request,
)

SECRET = "correct horse battery staple 0123456789"
NOW = 1_700_000_000.0

# --- origins ----------------------------------------------------------------------------------

LISTED = (
    "https://shop.example.com",
    "http://10.1.2.3:8080",
    "https://*.example.org",
    "https://wall.example.net:443",  # default port written out
    "http://[fd00::1]:8080",
    "https://*.ports.example.com:8443",
)

# (allowed_origins, Origin header, Host header, tls, allowed?)
ORIGIN_CASES = [
    # default policy: no Origin (curl, scripts) and same-origin pages only
    ((), None, "relay:8080", False, True),
    ((), None, None, False, True),
    ((), "http://relay:8080", "relay:8080", False, True),
    ((), "http://relay", "relay", False, True),
    ((), "http://relay:80", "relay", False, True),
    ((), "http://relay", "relay:80", False, True),
    ((), "https://relay", "relay", True, True),
    ((), "https://relay:443", "relay:443", True, True),
    ((), "HTTP://Relay:8080", "RELAY:8080", False, True),
    ((), "http://[::1]:8080", "[::1]:8080", False, True),
    ((), "http://[0:0::1]:8080", "[::1]:8080", False, True),
    ((), "https://relay:8080", "relay:8080", False, False),  # scheme differs
    ((), "http://relay:8080", "relay:8080", True, False),
    ((), "http://relay:8081", "relay:8080", False, False),  # port differs
    ((), "http://relay", "relay:8080", False, False),
    ((), "http://other:8080", "relay:8080", False, False),
    ((), "http://relay:8080", None, False, False),  # no Host: nothing to compare with
    ((), "http://relay:8080", "relay:8080/x", False, False),  # malformed Host
    ((), "https://shop.example.com", "relay:8080", False, False),
    # exact origins
    (LISTED, "https://shop.example.com", "relay", False, True),
    (LISTED, "https://SHOP.Example.COM", "relay", False, True),
    (LISTED, "https://shop.example.com:443", "relay", False, True),
    (LISTED, "http://shop.example.com", "relay", False, False),
    (LISTED, "https://shop.example.com:8443", "relay", False, False),
    (LISTED, "https://shop.example.com.evil.com", "relay", False, False),
    (LISTED, "https://evilshop.example.com", "relay", False, False),
    (LISTED, "http://10.1.2.3:8080", "relay", False, True),
    (LISTED, "http://10.1.2.3", "relay", False, False),
    (LISTED, "https://10.1.2.3:8080", "relay", False, False),
    (LISTED, "https://wall.example.net", "relay", False, True),
    (LISTED, "http://[fd00::1]:8080", "relay", False, True),
    (LISTED, "http://[fd00:0::1]:8080", "relay", False, True),
    (LISTED, "http://[fd00::2]:8080", "relay", False, False),
    # wildcards: one or more labels, never the bare domain or a look-alike
    (LISTED, "https://a.example.org", "relay", False, True),
    (LISTED, "https://a.b.example.org", "relay", False, True),
    (LISTED, "https://A.Example.Org", "relay", False, True),
    (LISTED, "https://example.org", "relay", False, False),
    (LISTED, "https://evil-example.org", "relay", False, False),
    (LISTED, "https://evilexample.org", "relay", False, False),
    (LISTED, "https://a.example.org.evil.com", "relay", False, False),
    (LISTED, "http://a.example.org", "relay", False, False),
    (LISTED, "https://a.example.org:8443", "relay", False, False),
    (LISTED, "https://x.ports.example.com:8443", "relay", False, True),
    (LISTED, "https://x.ports.example.com", "relay", False, False),
    # a list does not turn off the defaults
    (LISTED, None, "relay", False, True),
    (LISTED, "http://relay:8080", "relay:8080", False, True),
    # null: sandboxed frames and file:// pages
    ((), "null", "relay", False, False),
    (LISTED, "null", "relay", False, False),
    (("*",), "null", "relay", False, True),
    (("*",), "https://anything.example", "relay", False, True),
    (("*",), "garbage", "relay", False, True),
    # malformed
    ((), "", "relay", False, False),
    ((), "relay:8080", "relay:8080", False, False),
    ((), "ftp://relay:8080", "relay:8080", False, False),
    ((), "http://relay:8080/", "relay:8080", False, False),
    ((), "http://user@relay:8080", "relay:8080", False, False),
    ((), "http://relay:99999", "relay:99999", False, False),
    ((), "http://relay:0", "relay:0", False, False),
    ((), "http://relay:+80", "relay:+80", False, False),
    ((), "http://rel ay", "rel ay", False, False),
    ((), "http://réla.y", "réla.y", False, False),
    ((), "http://[::1", "[::1", False, False),
    ((), "http://[nothex]:80", "[nothex]:80", False, False),
    ((), "http://-relay", "-relay", False, False),
    ((), "http://relay..x", "relay..x", False, False),
    ((), "http://" + "a" * 2000, "a" * 2000, False, False),
    (LISTED, "https://*.example.org", "relay", False, False),  # a pattern is no origin
]


@pytest.mark.parametrize(("allowed", "origin", "host", "tls", "expected"), ORIGIN_CASES)
def test_origin_policy(allowed: tuple[str, ...], origin: str | None, host: str | None,
                       tls: bool, expected: bool) -> None:
    reason = OriginPolicy(allowed).check(origin, host, tls)
    assert (reason is None) is expected, reason
    if reason is not None:
        assert "\n" not in reason and len(reason) < 200


@pytest.mark.parametrize(("origin", "host", "proto", "expected"), [
    # nginx terminates TLS and sends Host: $host, X-Forwarded-Proto: $scheme
    ("https://cams.example.com", "cams.example.com", "https", True),
    ("https://cams.example.com", "cams.example.com", "HTTPS", True),
    ("https://cams.example.com", "cams.example.com", "https, http", True),
    ("https://cams.example.com", "cams.example.com", None, False),
    ("https://cams.example.com", "cams.example.com", "http", False),
    ("https://cams.example.com", "cams.example.com", "gopher", False),
    ("https://cams.example.com", "cams.example.com", "", False),
    ("http://cams.example.com", "cams.example.com", "https", False),
    ("https://cams.example.com:8443", "cams.example.com:8443", "https", True),
    ("https://evil.example.com", "cams.example.com", "https", False),
])
def test_same_origin_behind_a_tls_proxy(origin: str, host: str, proto: str | None,
                                        expected: bool) -> None:
    reason = OriginPolicy().check(origin, host, tls=False, forwarded_proto=proto)
    assert (reason is None) is expected, reason


def test_origin_reasons_say_why() -> None:
    policy = OriginPolicy(("https://shop.example.com",))
    assert policy.check("https://evil.example.com", "relay", False) == \
        "origin https://evil.example.com is not allowed"
    assert policy.check("https://EVIL.example.com:443", "relay", False) == \
        "origin https://evil.example.com is not allowed"
    assert policy.check("null", "relay", False) is not None
    assert "null" in (policy.check("null", "relay", False) or "")
    assert policy.check("http://x/\r\nSet-Cookie: a", "relay", False) == "malformed Origin header"


@pytest.mark.parametrize("pattern", [
    "shop.example.com", "*.example.com", "https://", "https://x/", "https://x/path",
    "https://a.*.example.com", "https://*", "https://*.", "https://**.example.com",
    "https://x:0", "https://x:65536", "ws://x", "https://user@x", "https://[::1",
])
def test_bad_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(ValueError, match="allowed origin"):
        OriginPolicy((pattern,))


@settings(max_examples=300, deadline=None)
@given(origin=st.one_of(st.none(), st.text(max_size=80),
                        st.from_regex(r"\Ahttps?://[a-z0-9.*:\[\]-]{0,30}\Z")),
       host=st.one_of(st.none(), st.text(max_size=40)), tls=st.booleans(),
       proto=st.one_of(st.none(), st.text(max_size=10)))
def test_origin_check_never_raises(origin: str | None, host: str | None, tls: bool,
                                   proto: str | None) -> None:
    for policy in (OriginPolicy(), OriginPolicy(LISTED)):
        reason = policy.check(origin, host, tls, proto)
        assert reason is None or isinstance(reason, str)


# --- tokens -----------------------------------------------------------------------------------


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _encode(payload: dict[str, object], secret: str = SECRET, **kwargs: object) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", **kwargs)  # type: ignore[arg-type]


def denied(verifier: TokenVerifier, token: str | None, camera: str | None = "lobby",
           now: float = NOW) -> str:
    with pytest.raises(AccessDenied) as info:
        verifier.verify(token, camera, now=now)
    reason = info.value.reason
    assert str(info.value) == reason
    if token:
        assert token not in reason  # never echo the token
    return reason


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET)


def test_minted_token_verifies(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, ["lobby", "door"], 3600, subject="kiosk-1", now=NOW)
    claims = verifier.verify(token, "door", now=NOW + 10)
    assert claims == Claims(cameras=("lobby", "door"), expires_at=NOW + 3600, subject="kiosk-1")
    assert claims.allows("lobby") and not claims.allows("garage")
    assert claims.remaining(now=NOW + 600) == 3000
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {"cameras": ["lobby", "door"], "iat": int(NOW), "exp": int(NOW + 3600),
                       "sub": "kiosk-1"}


def test_api_routes_pass_any_valid_token(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, ["lobby"], 60, now=NOW)
    claims = verifier.verify(token, None, now=NOW)
    assert claims.cameras == ("lobby",) and claims.subject is None


def test_wrong_camera(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, ["lobby"], 60, now=NOW)
    assert denied(verifier, token, "door") == "token does not cover camera door"
    nothing = _encode({"cameras": [], "exp": NOW + 60})
    assert denied(verifier, nothing, "door") == "token does not cover camera door"


@pytest.mark.parametrize("cameras", ["*", ["*"], ["lobby", "*"]])
def test_all_cameras(verifier: TokenVerifier, cameras: object) -> None:
    token = _encode({"cameras": cameras, "exp": NOW + 60})
    claims = verifier.verify(token, "anything", now=NOW)
    assert claims.allows("garage") and claims.allows("lobby")


def test_mint_all_cameras_and_single_name(verifier: TokenVerifier) -> None:
    every = mint_token(SECRET, "*", 60, now=NOW)
    assert verifier.verify(every, "door", now=NOW).cameras == ("*",)
    one = mint_token(SECRET, "lobby", 60, now=NOW)
    assert verifier.verify(one, "lobby", now=NOW).cameras == ("lobby",)
    assert denied(verifier, one, "door") == "token does not cover camera door"


def test_expiry_is_exact(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, ["lobby"], 60, now=NOW)
    assert verifier.verify(token, "lobby", now=NOW + 59.9).expires_at == NOW + 60
    assert denied(verifier, token, now=NOW + 60) == "token expired"
    assert denied(verifier, token, now=NOW + 86400) == "token expired"


def test_expiry_uses_the_clock_by_default(verifier: TokenVerifier) -> None:
    assert verifier.verify(mint_token(SECRET, ["lobby"], 600), "lobby").remaining() > 0
    stale = mint_token(SECRET, ["lobby"], 60, now=time.time() - 120)
    with pytest.raises(AccessDenied, match="token expired"):
        verifier.verify(stale, "lobby")


def test_not_before(verifier: TokenVerifier) -> None:
    token = _encode({"cameras": "*", "exp": NOW + 3600, "nbf": NOW + 600})
    assert denied(verifier, token, now=NOW) == "token not valid yet"
    assert verifier.verify(token, "lobby", now=NOW + 590)  # within the clock-skew leeway


@pytest.mark.parametrize(("payload", "reason"), [
    ({"cameras": "*"}, 'token has no expiry (claim "exp")'),
    ({"cameras": "*", "exp": "tomorrow"}, 'token claim "exp" must be a number'),
    ({"cameras": "*", "exp": True}, 'token claim "exp" must be a number'),
    ({"exp": NOW + 60}, 'token claim "cameras" must be a list of camera names or "*"'),
    ({"cameras": "lobby", "exp": NOW + 60},
     'token claim "cameras" must be a list of camera names or "*"'),
    ({"cameras": [1, 2], "exp": NOW + 60},
     'token claim "cameras" must be a list of camera names or "*"'),
    ({"cameras": {"lobby": True}, "exp": NOW + 60},
     'token claim "cameras" must be a list of camera names or "*"'),
])
def test_bad_claims(verifier: TokenVerifier, payload: dict[str, object], reason: str) -> None:
    assert denied(verifier, _encode(payload)) == reason


def test_wrong_secret(verifier: TokenVerifier) -> None:
    token = mint_token("another secret, also long enough", ["lobby"], 60, now=NOW)
    assert denied(verifier, token) == "token signature does not match"


def test_tampered_payload(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, ["lobby"], 60, now=NOW)
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64({'cameras': '*', 'exp': NOW + 60})}.{signature}"
    assert denied(verifier, forged, "door") == "token signature does not match"


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode({"cameras": "*", "exp": NOW + 60}, None, algorithm="none")
    assert denied(verifier, unsigned) == "token algorithm not allowed (HS256 only)"
    # hand-made, with an empty signature and a lower-case variant
    for alg in ("none", "None", "NONE"):
        token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64({'cameras': '*', 'exp': NOW + 60})}."
        assert denied(verifier, token) in ("token algorithm not allowed (HS256 only)",
                                           "malformed token")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(verifier: TokenVerifier, alg: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT: the secret is short for HS384/512
        token = jwt.encode({"cameras": "*", "exp": NOW + 60}, SECRET, algorithm=alg)
    assert denied(verifier, token) == "token algorithm not allowed (HS256 only)"


def test_rs256_header_is_refused(verifier: TokenVerifier) -> None:
    """The classic confusion: an RS256 token HMAC-signed with the secret as
    if it were the public key. It must not verify."""
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}." \
        f"{_b64({'cameras': '*', 'exp': NOW + 60})}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert denied(verifier, token) == "token algorithm not allowed (HS256 only)"


@pytest.mark.parametrize("token", [
    "abc", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9", "x" * 5000, "ünïcode.tök.en",
    f"{_b64({'alg': 'HS256'})}.bm90IGpzb24.sig",
])
def test_garbage_tokens(verifier: TokenVerifier, token: str) -> None:
    reason = denied(verifier, token)
    assert reason in ("malformed token", "token too long", "token signature does not match")


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(verifier: TokenVerifier, token: str | None) -> None:
    assert denied(verifier, token) == "a viewer token is required"


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=300))
def test_verify_only_ever_raises_access_denied(token: str) -> None:
    with pytest.raises(AccessDenied):
        TokenVerifier(SECRET).verify(token, "lobby", now=NOW)


def test_secret_must_be_usable() -> None:
    with pytest.raises(ValueError, match="empty"):
        TokenVerifier("")
    pem = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
           "-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="cannot be used for HS256"):
        TokenVerifier(pem)
    assert SECRET not in repr(TokenVerifier(SECRET))


def test_short_secret_does_not_warn_per_viewer() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verifier = TokenVerifier("sixteen chars ok")
        token = mint_token("sixteen chars ok", ["lobby"], 60, now=NOW)
        assert verifier.verify(token, "lobby", now=NOW).cameras == ("lobby",)


@pytest.mark.parametrize(("cameras", "ttl"), [([], 60), ([""], 60), (["lobby"], 0),
                                              (["lobby"], -5), (["lobby"], float("nan"))])
def test_mint_rejects_nonsense(cameras: list[str], ttl: float) -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, cameras, ttl, now=NOW)


# --- where the token comes from ---------------------------------------------------------------

JWTISH = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl-_"


@pytest.mark.parametrize(("path", "cookie", "expected"), [
    (f"/ws/lobby?token={JWTISH}", None, JWTISH),
    (f"/ws/lobby?x=1&token={JWTISH}&y=2", None, JWTISH),
    ("/ws/lobby?token=a%2Eb%2Ec", None, "a.b.c"),
    ("/ws/lobby?token=first&token=second", None, "first"),
    ("/ws/lobby?token=", None, None),
    ("/ws/lobby?token", None, None),
    ("/ws/lobby", None, None),
    ("/ws/lobby?tokenx=1&xtoken=2", None, None),
    ("/ws/lobby?token=%ff%fe", None, "\ufffd\ufffd"),
    ("/ws/lobby", f"cxrelay_token={JWTISH}", JWTISH),
    ("/ws/lobby", f'cxrelay_token="{JWTISH}"', JWTISH),
    ("/ws/lobby", f"a=1; cxrelay_token={JWTISH}; b=2", JWTISH),
    ("/ws/lobby", f"junk; a=\"unterminated; bad key=1; cxrelay_token={JWTISH}", JWTISH),
    ("/ws/lobby", f"=;;;\\,$; ,=,; cxrelay_token={JWTISH}", JWTISH),
    ("/ws/lobby", f"xcxrelay_token=no; cxrelay_tokenx=no; cxrelay_token={JWTISH}", JWTISH),
    ("/ws/lobby", "cxrelay_token=", None),
    ("/ws/lobby", "cxrelay_token", None),
    ("/ws/lobby", "other=1", None),
    ("/ws/lobby", ";;;", None),
    (f"/ws/lobby?token={JWTISH}", "cxrelay_token=fromcookie", JWTISH),  # the query wins
    ("/ws/lobby?token=", "cxrelay_token=fromcookie", "fromcookie"),
])
def test_token_from_request(path: str, cookie: str | None, expected: str | None) -> None:
    headers = Headers() if cookie is None else Headers([("Cookie", cookie)])
    assert token_from_request(path, headers) == expected
    as_dict = {} if cookie is None else {"cookie": cookie}
    assert token_from_request(path, as_dict) == expected
    assert token_from_request(path, lambda name: cookie if name == "Cookie" else None) \
        == expected


def test_token_from_several_cookie_headers() -> None:
    headers = Headers([("Cookie", "a=1"), ("Cookie", f"cxrelay_token={JWTISH}")])
    assert token_from_request("/ws/lobby", headers) == JWTISH


@settings(max_examples=200, deadline=None)
@given(path=st.text(max_size=100), cookie=st.text(max_size=100))
def test_token_from_request_never_raises(path: str, cookie: str) -> None:
    token = token_from_request(path, {"Cookie": cookie})
    assert token is None or (isinstance(token, str) and token)


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("1.5h", 5400),
    (" 2H ", 7200), ("30 m", 1800), ("0.5", 0.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1w", "-5m", "0", "0s", "1h30m", "1e3", "inf",
                                  "nan", "1,5h", "5 minutes", "١٢"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# --- connections per client -------------------------------------------------------------------


def test_limiter_counts_per_address() -> None:
    limiter = ConnectionLimiter(2)
    assert limiter.allows("10.0.0.1")
    assert limiter.acquire("10.0.0.1") and limiter.acquire("10.0.0.1")
    assert not limiter.allows("10.0.0.1") and limiter.allows("10.0.0.2")
    assert not limiter.acquire("10.0.0.1")
    assert limiter.count("10.0.0.1") == 2  # a refusal is not counted
    assert limiter.acquire("10.0.0.2")
    limiter.release("10.0.0.1")
    assert limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")


def test_limiter_normalises_addresses() -> None:
    limiter = ConnectionLimiter(1)
    assert limiter.acquire("::ffff:192.0.2.7")
    assert not limiter.acquire("192.0.2.7")
    assert limiter.acquire("2001:db8:0:0::1")
    assert not limiter.acquire("2001:DB8::1")
    limiter.release("2001:db8::1")
    assert limiter.acquire("2001:db8::0:1")
    assert client_key("::FFFF:10.0.0.1") == "10.0.0.1"
    assert client_key("not an address") == "not an address"


def test_limiter_forgets_idle_clients() -> None:
    limiter = ConnectionLimiter(3)
    for i in range(100):
        assert limiter.acquire(f"10.0.{i}.1")
    for i in range(100):
        limiter.release(f"10.0.{i}.1")
    assert len(limiter) == 0
    limiter.release("10.9.9.9")  # releasing more than acquired is harmless
    assert limiter.count("10.9.9.9") == 0 and len(limiter) == 0


def test_limiter_zero_is_unlimited() -> None:
    limiter = ConnectionLimiter(0)
    assert all(limiter.acquire("127.0.0.1") for _ in range(1000))
    assert limiter.allows("127.0.0.1")
    assert limiter.count("127.0.0.1") == 1000
    with pytest.raises(ValueError):
        ConnectionLimiter(-1)


# --- host names (DNS rebinding, issue 14 fault 7) --------------------------------------------

HOST_CASES = [
    # (allowed_hosts, Host header, allowed?)
    ((), None, True),  # not a browser
    ((), "127.0.0.1", True),
    ((), "127.0.0.1:8080", True),
    ((), "10.1.2.3:8080", True),
    ((), "[::1]:8080", True),
    ((), "[fd00::1]", True),
    ((), "localhost:8080", True),
    ((), "LOCALHOST", True),
    ((), "localhost.", True),
    ((), "cam.localhost:8080", True),
    ((), "cambox:8080", True),  # one label: no public DNS answers for it
    ((), "cambox.local:8080", True),
    ((), "nvr.home.arpa", True),
    ((), "relay.corp.internal", True),
    ((), "evil.test", False),
    ((), "evil.test:8080", False),
    ((), "evil.test.:8080", False),
    ((), "localhost.evil.test", False),
    ((), "127.0.0.1.nip.io", False),
    ((), "local.evil.com", False),
    ((), "evillocal", True),
    (("cams.example.com",), "cams.example.com", True),
    (("cams.example.com",), "CAMS.example.com:443", True),
    (("cams.example.com",), "other.example.com", False),
    (("*.example.com",), "a.example.com", True),
    (("*.example.com",), "a.b.example.com", True),
    (("*.example.com",), "example.com", False),
    (("*.example.com",), "evil-example.com", False),
    (("*",), "evil.test", True),
]


@pytest.mark.parametrize(("allowed", "host", "ok"), HOST_CASES)
def test_host_policy(allowed: tuple[str, ...], host: str | None, ok: bool) -> None:
    reason = HostPolicy(allowed).check(host)
    assert (reason is None) == ok, reason
    if not ok:
        assert "allowed_hosts" in reason or "malformed" in reason


@pytest.mark.parametrize("host", ["", "a b", "x/y", "user@host", "[::1", "ex\u00e4mple.com",
                                  "a" * 2000])
def test_host_policy_refuses_malformed_host_headers(host: str) -> None:
    assert HostPolicy().check(host) == "malformed Host header"


def test_host_policy_extra_names_are_allowed() -> None:
    policy = HostPolicy((), extra=("cambox.example.net",))
    assert policy.check("cambox.example.net:8080") is None
    assert policy.check("evil.example.net") is not None


@pytest.mark.parametrize("entry", ["https://cams.example.com", "cams.example.com:443",
                                   "*.*.example.com", "exa mple.com", "a/b"])
def test_host_policy_refuses_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        HostPolicy((entry,))


# --- handshakes per client and in total (issue 14 fault 3) ------------------------------------


def test_handshakes_count_and_say_when_past_a_bound() -> None:
    handshakes = Handshakes(max_per_client=2, max_total=3)
    assert handshakes.begin("10.0.0.1") is None
    assert handshakes.begin("::ffff:10.0.0.1") is None  # the same client
    over = handshakes.begin("10.0.0.1")
    assert over == "too many connections from 10.0.0.1 in their handshake (maximum 2)"
    assert handshakes.count("10.0.0.1") == 3 and handshakes.total == 3  # counted all the same
    assert handshakes.begin("10.0.0.2") == \
        "too many connections in their handshake (maximum 3)"
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"):
        handshakes.end(address)
    assert handshakes.total == 0 and len(handshakes) == 0  # idle clients forgotten
    handshakes.end("10.0.0.9")  # never counted: nothing happens
    assert handshakes.total == 0


def test_handshakes_zero_is_unlimited() -> None:
    handshakes = Handshakes(0, 0)
    assert all(handshakes.begin("10.0.0.1") is None for _ in range(10_000))
    with pytest.raises(ValueError):
        Handshakes(-1, 0)


# --- token lifetime cap (issue 14 fault 8) ----------------------------------------------------


def test_tokens_expiring_too_far_ahead_are_refused() -> None:
    verifier = TokenVerifier(SECRET, max_ttl=3600)
    assert verifier.verify(mint_token(SECRET, "*", 3600, now=NOW), None, now=NOW)
    # Clock skew between the minting app and cxrelay is tolerated ...
    assert verifier.verify(mint_token(SECRET, "*", 3600, now=NOW + 20), None, now=NOW)
    # ... a longer lifetime is not.
    with pytest.raises(AccessDenied) as info:
        verifier.verify(mint_token(SECRET, "*", 7200, now=NOW), None, now=NOW)
    assert info.value.reason == ("token expires too far ahead: more than 1h from now "
                                 "(the relay's [auth] max_token_ttl)")
    # An exp a century ahead, hand-made.
    forever = jwt.encode({"cameras": "*", "exp": NOW + 100 * 365 * 86400}, SECRET, "HS256")
    with pytest.raises(AccessDenied, match="too far ahead"):
        TokenVerifier(SECRET).verify(forever, None, now=NOW)


def test_default_token_lifetime_cap_is_a_week() -> None:
    assert DEFAULT_MAX_TOKEN_TTL == 7 * 86400
    verifier = TokenVerifier(SECRET)
    assert verifier.verify(mint_token(SECRET, "*", 7 * 86400, now=NOW), None, now=NOW)
    with pytest.raises(AccessDenied, match="more than 7d from now"):
        verifier.verify(mint_token(SECRET, "*", 8 * 86400, now=NOW), None, now=NOW)


@pytest.mark.parametrize(("seconds", "text"), [(604800, "7d"), (3600, "1h"), (5400, "90m"),
                                                 (90, "90s"), (1.5, "1.5s"), (86400 * 366, "366d")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# --- the metrics token (issue 14 fault 6) -----------------------------------------------------


@pytest.mark.parametrize(("headers", "token"), [
    ({"Authorization": "Bearer abc123"}, "abc123"),
    ({"authorization": "bearer   abc123  "}, "abc123"),
    ({"Authorization": "Basic YTpi"}, None),
    ({"Authorization": "Bearer"}, None),
    ({}, None),
])
def test_bearer_token(headers: dict[str, str], token: str | None) -> None:
    assert bearer_token(Headers(headers)) == token


def test_bearer_token_ignores_repeated_headers() -> None:
    headers = Headers([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert bearer_token(headers) is None


def test_metrics_token_checks() -> None:
    assert metrics_token_matches("0123456789abcdef", "0123456789abcdef")
    assert not metrics_token_matches("0123456789abcdef", "0123456789abcdeF")
    assert not metrics_token_matches("0123456789abcdef", None)
    assert metrics_token_problem("0123456789abcdef") is None
    assert "too short" in (metrics_token_problem("short") or "")
    assert "printable ASCII" in (metrics_token_problem("0123456789 abcdef") or "")
