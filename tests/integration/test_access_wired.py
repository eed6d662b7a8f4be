"""Access control as wired into the real server: 403 / 401 / 503 before the
upgrade, the token read from the query or the cookie, /api/cameras filtered by
the token, and a viewer closed with 1008 when its token expires."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cxrelay.access import mint_token
from cxrelay.app import Relay
from cxrelay.config import AuthConfig, CameraConfig, Config
from tests.support import make_config, running_relay, wait_for

SECRET = "a test secret of thirty-two bytes"
CAMERAS = [CameraConfig(name=n, url="demo://", on_demand=True, linger=0)
           for n in ("lobby", "door")]


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    config = make_config(CAMERAS, allowed_origins=("https://shop.example.com",),
                         max_connections_per_client=2)
    config = type(config)(server=config.server, cameras=config.cameras,
                          auth=AuthConfig(secret=SECRET))
    async with running_relay(config) as relay:
        yield relay


def url(relay: Relay, path: str) -> str:
    assert relay.server is not None
    return f"ws://127.0.0.1:{relay.server.port}{path}"


async def refused(relay: Relay, path: str, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url(relay, path), open_timeout=10, **kwargs):  # type: ignore[arg-type]
            pass
    response = info.value.response
    return response.status_code, response.body.decode().strip()


async def watching(ws: object) -> str:
    """The camera named by the first init (after any status messages)."""
    async with asyncio.timeout(15):
        while True:
            message = json.loads(await ws.recv())  # type: ignore[attr-defined]
            if message["type"] == "init":
                return str(message["camera"])


async def http(relay: Relay, path: str, headers: str = "") -> tuple[int, bytes]:
    assert relay.server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
    host = "" if headers.lower().startswith("host:") or "\nhost:" in headers.lower() \
        else "Host: x\r\n"
    writer.write(f"GET {path} HTTP/1.1\r\n{host}{headers}\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_token_required(relay: Relay) -> None:
    assert await refused(relay, "/ws/lobby") == (401, "a viewer token is required")
    assert await refused(relay, "/ws/lobby?token=junk") == (401, "malformed token")
    door = mint_token(SECRET, ["door"], 60)
    assert await refused(relay, f"/ws/lobby?token={door}") == \
        (401, "token does not cover camera lobby")
    stale = mint_token(SECRET, ["lobby"], 60, now=time.time() - 120)
    assert await refused(relay, f"/ws/lobby?token={stale}") == (401, "token expired")
    other = mint_token("another secret, also long enough!", ["lobby"], 60)
    assert await refused(relay, f"/ws/lobby?token={other}") == \
        (401, "token signature does not match")


async def test_unknown_camera_is_hidden_behind_the_token(relay: Relay) -> None:
    with capture_logs() as logs:
        assert (await refused(relay, "/ws/nope"))[0] == 401
        every = mint_token(SECRET, "*", 60)
        assert (await refused(relay, f"/ws/nope?token={every}"))[0] == 404
    refusals = [e for e in logs if "refused" in e["event"]]
    assert [e["status"] for e in refusals] == [401, 404]
    assert refusals[1]["camera"] == "nope" and "nope" in refusals[1]["reason"]
    assert every not in repr(logs)


@pytest.mark.parametrize("where", ["query", "cookie"])
async def test_valid_token_watches(relay: Relay, where: str) -> None:
    token = mint_token(SECRET, ["lobby"], 60)
    path, headers = ("/ws/lobby?token=" + token, None) if where == "query" else \
        ("/ws/lobby", {"Cookie": f"junk; cxrelay_token={token}"})
    async with connect(url(relay, path), additional_headers=headers, open_timeout=10) as ws:
        assert await watching(ws) == "lobby"


async def test_origins(relay: Relay) -> None:
    token = mint_token(SECRET, "*", 60)
    assert await refused(relay, "/ws/lobby", origin="https://evil.example.com") == \
        (403, "origin https://evil.example.com is not allowed")
    # the origin is checked first: no token needed to learn that
    async with connect(url(relay, f"/ws/lobby?token={token}"), open_timeout=10,
                       origin="https://shop.example.com") as ws:  # type: ignore[arg-type]
        assert await watching(ws) == "lobby"


async def test_api_needs_and_filters_by_token(relay: Relay) -> None:
    status, _ = await http(relay, "/api/cameras")
    assert status == 401
    token = mint_token(SECRET, ["door"], 60)
    status, body = await http(relay, f"/api/cameras?token={token}")
    assert status == 200 and [c["name"] for c in json.loads(body)] == ["door"]
    status, body = await http(relay, "/api/cameras", f"Cookie: cxrelay_token={token}\r\n")
    assert status == 200 and [c["name"] for c in json.loads(body)] == ["door"]
    assert (await http(relay, "/healthz"))[0] == 200  # monitoring stays open


async def test_per_client_limit(relay: Relay) -> None:
    token = mint_token(SECRET, "*", 60)
    async with connect(url(relay, f"/ws/lobby?token={token}")), \
            connect(url(relay, f"/ws/door?token={token}")):
        status, reason = await refused(relay, f"/ws/lobby?token={token}")
        assert status == 503 and "too many connections" in reason
    async with connect(url(relay, f"/ws/lobby?token={token}"), open_timeout=10) as ws:
        assert await watching(ws) == "lobby"


async def test_viewer_closed_when_its_token_expires(relay: Relay) -> None:
    token = mint_token(SECRET, ["lobby"], 2)
    async with connect(url(relay, f"/ws/lobby?token={token}"), max_size=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(20):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "token expired")


async def test_failed_handshakes_leave_nothing_behind(relay: Relay) -> None:
    """Admitted, then the upgrade fails (no Upgrade header): nothing may stay
    counted or remembered for that connection."""
    token = mint_token(SECRET, "*", 60)
    for _ in range(20):
        status, _ = await http(relay, f"/ws/lobby?token={token}")
        assert status == 426
    assert relay.server is not None
    # Counted: the per-client limit is 2, so a leftover count would refuse these with 503.
    assert relay.server.limiter.count("127.0.0.1") == 0 and len(relay.server.limiter) == 0
    async with connect(url(relay, f"/ws/lobby?token={token}"), open_timeout=10) as lobby, \
            connect(url(relay, f"/ws/door?token={token}"), open_timeout=10) as door:
        assert await watching(lobby) == "lobby" and await watching(door) == "door"
    # Remembered: whatever holds on to a connection (a table keyed by it, a closure)
    # keeps it alive; once closed, none of those 20 may be.
    async def no_connection_alive() -> bool:
        gc.collect()
        return not [o for o in gc.get_objects() if isinstance(o, ServerConnection)]

    await wait_for(no_connection_alive, timeout=10)


# --- issue 14: DNS rebinding (fault 7), what metrics and health tell (fault 6), token lifetime

REBINDING = {"Host": "evil.test:8080", "Origin": "http://evil.test:8080"}


def with_auth(config: Config, **auth: object) -> Config:
    return replace(config, auth=replace(config.auth, **auth))


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "no-tokens"])
async def test_dns_rebinding_is_refused(tokens: bool) -> None:
    """A page at http://evil.test:8080 whose name now resolves to the relay:
    Host and Origin agree, so same-origin alone would let it in."""
    config = make_config(CAMERAS)
    if tokens:
        config = with_auth(config, secret=SECRET)
    token = mint_token(SECRET, "*", 60)
    async with running_relay(config) as relay:
        for path in (f"/ws/lobby?token={token}", f"/api/cameras?token={token}", "/healthz",
                     "/metrics", "/"):
            status, body = await http(relay, path, headers(REBINDING))
            assert status == 421, (path, body)
            assert body == b"host evil.test is not served here " \
                           b"(list it in [server] allowed_hosts)\n"
        upgrade = headers({**REBINDING, "Upgrade": "websocket", "Connection": "Upgrade",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                           "Sec-WebSocket-Version": "13"})
        assert (await http(relay, f"/ws/lobby?token={token}", upgrade))[0] == 421
        # The same page under an IP address or a name no public DNS serves is fine.
        for host in ("127.0.0.1:8080", "cambox:8080", "cambox.local:8080"):
            status, _ = await http(relay, f"/ws/lobby?token={token}",
                                   headers({"Host": host, "Origin": f"http://{host}"}))
            assert status == 426, host  # admitted (a plain GET: the upgrade's verdict)


async def test_listed_hosts_are_served() -> None:
    config = make_config(CAMERAS, allowed_hosts=("cams.example.com",))
    async with running_relay(config) as relay:
        status, _ = await http(relay, "/ws/lobby", headers(
            {"Host": "cams.example.com", "Origin": "http://cams.example.com"}))
        assert status == 426
        assert (await http(relay, "/healthz", headers({"Host": "evil.test"})))[0] == 421


METRICS_TOKEN = "prometheus-scrapes-with-this-token"


@pytest.mark.parametrize("metrics_token", [None, METRICS_TOKEN], ids=["no-metrics-token",
                                                                      "metrics-token"])
async def test_camera_names_need_a_token(metrics_token: str | None) -> None:
    """With tokens on, /metrics and the counts in /healthz name or count the
    cameras: only a token for every camera, or the metrics token, sees them."""
    config = with_auth(make_config(CAMERAS), secret=SECRET, metrics_token=metrics_token)
    async with running_relay(config) as relay:
        status, body = await http(relay, "/metrics")
        assert status == 401
        assert b"lobby" not in body and b"door" not in body
        status, body = await http(relay, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        door = mint_token(SECRET, ["door"], 60)
        assert (await http(relay, f"/metrics?token={door}"))[0] == 401
        assert json.loads((await http(relay, f"/healthz?token={door}"))[1]) == {"status": "ok"}
        every = mint_token(SECRET, "*", 60)
        status, body = await http(relay, f"/metrics?token={every}")
        assert status == 200 and b'camera="lobby"' in body
        assert json.loads((await http(relay, f"/healthz?token={every}"))[1])["cameras"] == 2
        bearer = headers({"Authorization": f"Bearer {METRICS_TOKEN}"})
        status, body = await http(relay, "/metrics", bearer)
        assert (status == 200) == (metrics_token is not None)
        if metrics_token is not None:
            assert b'camera="door"' in body
            assert json.loads((await http(relay, "/healthz", bearer))[1])["cameras"] == 2
        wrong = headers({"Authorization": "Bearer prometheus-scrapes-with-this-tokeN"})
        assert (await http(relay, "/metrics", wrong))[0] == 401


async def test_metrics_without_tokens() -> None:
    """Without tokens, /api/cameras lists every camera to anyone, and so do
    the metrics; unless a metrics token is set, which then guards them."""
    async with running_relay(make_config(CAMERAS)) as relay:
        assert (await http(relay, "/metrics"))[0] == 200
        assert json.loads((await http(relay, "/healthz"))[1])["cameras"] == 2
    config = with_auth(make_config(CAMERAS), metrics_token=METRICS_TOKEN)
    async with running_relay(config) as relay:
        status, body = await http(relay, "/metrics")
        assert status == 401 and b"lobby" not in body
        bearer = headers({"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert (await http(relay, "/metrics", bearer))[0] == 200


async def test_tokens_beyond_the_lifetime_cap_are_refused(relay: Relay) -> None:
    assert await refused(relay, f"/ws/lobby?token={mint_token(SECRET, ['lobby'], 30 * 86400)}") \
        == (401, "token expires too far ahead: more than 7d from now "
                 "(the relay's [auth] max_token_ttl)")
    async with connect(url(relay, f"/ws/lobby?token={mint_token(SECRET, ['lobby'], 86400)}"),
                       open_timeout=10) as ws:
        assert await watching(ws) == "lobby"


def headers(fields: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in fields.items())
