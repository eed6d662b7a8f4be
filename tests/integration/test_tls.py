"""TLS served directly: https:// and wss:// on the relay's port, and a renewed
certificate picked up on reload without dropping anyone (issue 5)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from cxrelay.config import Config
from tests.support import make_config, running_relay


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def client_context(*certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cert in certs:
        context.load_verify_locations(cert)
    return context


async def peer_common_name(port: int, context: ssl.SSLContext) -> str:
    async with connect(f"wss://127.0.0.1:{port}/ws/demo", ssl=context) as ws:
        message = await ws.recv()
        assert isinstance(message, str)
        peer = ws.transport.get_extra_info("peercert")
    return dict(x[0] for x in peer["subject"])["commonName"]


async def test_wss_and_certificate_reload(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "openssl is installed by `make test`"
    old_cert, old_key = make_cert(tmp_path, "first")
    new_cert, new_key = make_cert(tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(old_cert, live_cert)
    shutil.copy(old_key, live_key)
    config = make_config({"demo": "demo://?size=160x90"}, tls_cert=str(live_cert),
                         tls_key=str(live_key))
    both = client_context(old_cert, new_cert)

    def reload_config() -> Config:
        return replace(config)

    async with running_relay(config, reload_config=reload_config) as relay:
        port = relay.server.port
        assert await peer_common_name(port, client_context(old_cert)) == "first"
        async with connect(f"wss://127.0.0.1:{port}/ws/demo", ssl=both) as watching:
            await watching.recv()
            # A renewal caught half-written (new certificate, old key) is refused...
            shutil.copy(new_cert, live_cert)
            await relay.reload()
            assert await peer_common_name(port, both) == "first"
            # ...and the complete pair is taken, for new connections only.
            shutil.copy(new_key, live_key)
            await relay.reload()
            assert await peer_common_name(port, both) == "second"
            await asyncio.wait_for(watching.recv(), 5)  # the old viewer never noticed
        # Plain HTTP on a TLS port is not served.
        with pytest.raises(OSError):
            await asyncio.to_thread(_plain_http, port)


def _plain_http(port: int) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        r.read()
