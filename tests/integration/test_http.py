"""Plain HTTP on the relay's port: the player, the wall, health, the API."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import urllib.request
from pathlib import Path

from tests.support import make_config, running_relay

STATIC = Path(__file__).parents[2] / "cxrelay" / "static"
README = Path(__file__).parents[2] / "README.md"


def readme_api_fields() -> set[str]:
    """The fields the README's HTTP table lists for /api/cameras (state's values aside)."""
    row = next(line for line in README.read_text().splitlines()
               if line.startswith("| `GET /api/cameras` |"))
    listed = re.sub(r"\([^)]*\)", "", row.split("JSON:", 1)[1]).strip(" |")
    return {field.strip() for field in listed.split(",")}


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def test_static_files_health_and_api() -> None:
    async with running_relay(make_config({"demo": "demo://?size=160x90"})) as relay:
        port = relay.server.port
        status, headers, body = await asyncio.to_thread(get, port, "/cxrelay.js")
        assert status == 200 and body == (STATIC / "cxrelay.js").read_bytes()
        assert headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert headers["Access-Control-Allow-Origin"] == "*"  # module scripts on other sites
        status, headers, body = await asyncio.to_thread(
            get, port, "/cxrelay.js", **{"Accept-Encoding": "gzip, br"})
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == (STATIC / "cxrelay.js").read_bytes()
        assert len(body) < len(gzip.decompress(body)) / 2
        status, headers, body = await asyncio.to_thread(get, port, "/")
        assert status == 200 and body == (STATIC / "index.html").read_bytes()
        assert headers["Content-Type"].startswith("text/html")
        status, _, body = await asyncio.to_thread(get, port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["cameras"] == 1
        status, _, body = await asyncio.to_thread(get, port, "/api/cameras")
        (camera,) = json.loads(body)
        assert set(camera) == readme_api_fields()
        for path in ("/nope", "/api/nope", "/static/cxrelay.js", "/ws/"):
            assert (await asyncio.to_thread(get, port, path))[0] == 404, path
