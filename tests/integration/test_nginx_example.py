"""examples/nginx.conf: nginx accepts it, and a real nginx built from it
terminates TLS in front of a real relay, redirects HTTP to HTTPS, passes the
WebSocket upgrade and live frames through, and keeps tokens out of its log.

Needs Debian's nginx and openssl (the Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from cxrelay.app import Relay
from cxrelay.config import CameraConfig
from cxrelay.protocol import decode_frame
from tests.parts import command
from tests.support import free_port, make_config, running_relay

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nginx.conf"
HOST = "cams.example.com"
TOKEN = "eyJ0b2tlbi1tdXN0LW5vdC1iZS1sb2dnZWQ.x.y"


def tool(name: str) -> str:
    return command(name, package=name)


def replaced(text: str, old: str, new: str) -> str:
    """Replace, insisting the example still says ``old`` (so drift is loud)."""
    assert old in text, f"examples/nginx.conf no longer contains {old!r}"
    return text.replace(old, new)


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={HOST}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def nginx_config(directory: Path, site: str) -> Path:
    """A main config around the site file, with every path nginx writes to in
    ``directory`` (so it runs as any user)."""
    (directory / "site.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(f"""
        worker_processes 1;
        pid {directory}/nginx.pid;
        error_log {directory}/error.log;
        events {{ worker_connections 64; }}
        http {{
            client_body_temp_path {directory}/body;
            proxy_temp_path {directory}/proxy;
            fastcgi_temp_path {directory}/fastcgi;
            uwsgi_temp_path {directory}/uwsgi;
            scgi_temp_path {directory}/scgi;
            access_log {directory}/other-access.log;
            include {directory}/site.conf;
        }}
    """)
    return main


@dataclass
class Site:
    text: str
    http_port: int
    https_port: int


def example_with(directory: Path, upstream_port: int = 8080) -> Site:
    """The example with a throwaway certificate, its log in ``directory``, and
    free loopback ports instead of 80 and 443 (nginx -t binds them too, and
    only root may; IPv6 may be off in containers)."""
    cert, key = self_signed(directory)
    text = EXAMPLE.read_text()
    text = replaced(text, f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert))
    text = replaced(text, f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key))
    text = replaced(text, "/var/log/nginx/cxrelay.access.log", str(directory / "access.log"))
    text = replaced(text, "listen [::]:80;", "")
    text = replaced(text, "listen [::]:443 ssl;", "")
    http_port, https_port = free_port(), free_port()
    text = replaced(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = replaced(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = replaced(text, "proxy_pass http://127.0.0.1:8080;",
                    f"proxy_pass http://127.0.0.1:{upstream_port};")
    return Site(text, http_port, https_port)


def test_nginx_accepts_the_example(tmp_path: Path) -> None:
    main = nginx_config(tmp_path, example_with(tmp_path).text)
    result = subprocess.run([tool("nginx"), "-t", "-p", str(tmp_path), "-c", str(main),
                             "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    camera = CameraConfig(name="demo", url="demo://")
    # As the example's "cxrelay side" says: the public name is listed (nginx
    # forwards the browser's Host), and every client is nginx's address.
    config = make_config([camera], allowed_hosts=(HOST,), max_connections_per_client=0,
                         max_handshakes_per_client=0)
    async with running_relay(config) as relay:
        yield relay


@pytest.fixture
async def nginx(tmp_path: Path, relay: Relay) -> AsyncIterator[tuple[int, int, Path]]:
    assert relay.server is not None
    site = example_with(tmp_path, upstream_port=relay.server.port)
    main = nginx_config(tmp_path, site.text)
    process = await asyncio.create_subprocess_exec(
        tool("nginx"), "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log"),
        "-g", "daemon off;",
    )
    try:
        await wait_listening(site.https_port, process)
        yield site.http_port, site.https_port, tmp_path / "access.log"
    finally:
        process.terminate()
        await process.wait()


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        assert process.returncode is None, "nginx exited at startup (see its error.log)"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("nginx did not start listening")


def insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our throwaway self-signed certificate
    return context


async def raw_get(port: int, path: str, tls: bool) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=insecure_tls() if tls else None,
        server_hostname=HOST if tls else None)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_http_redirects_to_https(nginx: tuple[int, int, Path]) -> None:
    http_port, _, _ = nginx
    reply = await raw_get(http_port, "/ws/demo?x=1", tls=False)
    assert reply.startswith(b"HTTP/1.1 301")
    assert f"\r\nLocation: https://{HOST}/ws/demo?x=1\r\n".encode() in reply


async def test_tls_proxy_serves_the_relay(nginx: tuple[int, int, Path]) -> None:
    _, https_port, _ = nginx
    reply = await raw_get(https_port, "/healthz", tls=True)
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"Strict-Transport-Security: max-age=31536000" in reply
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
    assert (await raw_get(https_port, "/metrics", tls=True)).startswith(b"HTTP/1.1 404")
    assert (await raw_get(https_port, "/cxrelay.js", tls=True)).startswith(b"HTTP/1.1 200")


async def test_websocket_through_nginx(nginx: tuple[int, int, Path]) -> None:
    _, https_port, access_log = nginx
    # As a browser on the wall page served through nginx would: same origin,
    # which cxrelay can only tell from the Host and X-Forwarded-Proto nginx sets.
    site = f"{HOST}:{https_port}"
    url = f"wss://{site}/ws/demo?token={TOKEN}"
    async with connect(url, host="127.0.0.1", ssl=insecure_tls(), compression=None,
                       origin=f"https://{site}", open_timeout=10) as ws:
        init = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert init["type"] == "init" and init["camera"] == "demo"
        keyframe = None
        for _ in range(100):
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, bytes):
                keyframe = decode_frame(message)
                break
        assert keyframe is not None and keyframe.keyframe
        assert len(keyframe.payload) > 100
    log = access_log.read_text()
    assert '"GET /ws/demo" 101 ' in log
    assert TOKEN not in log


async def test_refusals_come_through_nginx(nginx: tuple[int, int, Path]) -> None:
    _, https_port, _ = nginx
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"wss://{HOST}:{https_port}/ws/demo", host="127.0.0.1",
                           ssl=insecure_tls(), origin="https://evil.example.com",
                           open_timeout=10):
            pass
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"origin https://evil.example.com is not allowed\n"
