"""A plain GET of /ws/<camera> (no Upgrade) answers with the verdict the
WebSocket upgrade would get: the same status and one-line reason, found by the
same checks in the same order, or 426 when it would be admitted; readable by a
page on another origin (CORS), so that the player can say why it was refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from cxrelay.access import mint_token
from cxrelay.app import Relay
from cxrelay.config import AuthConfig, CameraConfig
from tests.support import make_config, running_relay

SECRET = "a test secret of thirty-two bytes"
SHOP = "https://shop.example.com"
EVIL = "https://evil.example.com"


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    config = make_config([CameraConfig(name="lobby", url="demo://", on_demand=True, linger=0)],
                         allowed_origins=(SHOP,), max_connections_per_client=1)
    config = type(config)(server=config.server, cameras=config.cameras,
                          auth=AuthConfig(secret=SECRET))
    async with running_relay(config) as relay:
        yield relay


def port(relay: Relay) -> int:
    assert relay.server is not None
    return relay.server.port


async def verdict(relay: Relay, path: str, origin: str | None = None
                  ) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-case names) and body of a plain GET, as a browser's fetch sends
    it: an Origin header only when the page is on another origin."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port(relay))
    extra = f"Origin: {origin}\r\n" if origin else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port(relay)}\r\n{extra}\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (li.partition(":") for li in lines)}
    return int(status_line.split()[1]), headers, body.strip()


async def upgrade(relay: Relay, path: str, origin: str | None = None) -> tuple[int, str]:
    """What the WebSocket handshake gets: (status, reason), or (101, '') when admitted."""
    try:
        async with connect(f"ws://127.0.0.1:{port(relay)}{path}", open_timeout=10,
                           origin=origin):  # type: ignore[arg-type]
            return 101, ""
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode().strip()


async def test_same_verdict_as_the_upgrade(relay: Relay) -> None:
    lobby = mint_token(SECRET, ["lobby"], 60)
    every = mint_token(SECRET, "*", 60)
    cases = [  # (path, origin, status, reason)
        # the origin comes first: a refused page learns nothing about tokens or cameras
        (f"/ws/lobby?token={every}", EVIL, 403, f"origin {EVIL} is not allowed"),
        ("/ws/nope", EVIL, 403, f"origin {EVIL} is not allowed"),
        ("/ws/lobby", SHOP, 401, "a viewer token is required"),
        ("/ws/lobby?token=junk", None, 401, "malformed token"),
        # an unknown camera stays hidden behind the token
        ("/ws/nope", SHOP, 401, "a viewer token is required"),
        (f"/ws/nope?token={lobby}", SHOP, 401, "token does not cover camera nope"),
        (f"/ws/nope?token={every}", SHOP, 404, "no camera named 'nope'"),
    ]
    for path, origin, status, reason in cases:
        got_status, headers, body = await verdict(relay, path, origin)
        assert (got_status, body) == (status, reason), path
        assert await upgrade(relay, path, origin) == (status, reason), path
        assert headers.get("access-control-allow-origin") == origin, path
    # admitted: 426, where the upgrade would have worked
    status, headers, body = await verdict(relay, f"/ws/lobby?token={lobby}", SHOP)
    assert status == 426 and headers["upgrade"] == "websocket" and "admitted" in body
    assert await upgrade(relay, f"/ws/lobby?token={lobby}", SHOP) == (101, "")


async def test_limits_and_cors(relay: Relay) -> None:
    token = mint_token(SECRET, "*", 60)
    path = f"/ws/lobby?token={token}"
    async with connect(f"ws://127.0.0.1:{port(relay)}{path}", open_timeout=10):
        status, headers, body = await verdict(relay, path, SHOP)
        assert status == 503 and "too many connections" in body
        assert headers["access-control-allow-origin"] == SHOP
        assert headers["access-control-allow-credentials"] == "true"
        assert "Origin" in headers["vary"]
        assert (await upgrade(relay, path, SHOP))[0] == 503
    # a same-origin fetch sends no Origin: no CORS headers, which it doesn't need
    status, headers, _ = await verdict(relay, path)
    assert status == 426 and not any(h.startswith("access-control-") for h in headers)
    # asking is not watching: nothing stays counted
    assert relay.server is not None and relay.server.limiter.count("127.0.0.1") == 0
