"""The command line as an operator meets it: exit codes, one-line errors,
signals, environment variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from cxrelay import __version__
from tests.support import RelayProcess, free_port, http_get, relay_process


def cxrelay(*args: str, timeout: float = 20, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxrelay", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_version() -> None:
    result = cxrelay("--version")
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--camera", "lobby"], "expected NAME=URL"),
        (["serve", "--camera", "a b=rtsp://h/x"], "invalid camera name"),
        (["serve", "--camera", "x=http://u:hunter22@h/x"], "unsupported scheme 'http'"),
        (["serve", "--config", "/nonexistent.toml"], "/nonexistent.toml: no such file"),
        (["serve", "--demo", "--camera", "demo=rtsp://h/x"], "duplicate camera name"),
        (["serve", "--demo", "--allowed-origin", "https://shop.example.com/"], "--allowed-origin"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], expected: str) -> None:
    result = cxrelay(*args)
    assert result.returncode == 2
    line = one_line_error(result)
    assert expected in line
    assert "hunter22" not in result.stderr + result.stdout


def test_click_usage_error_exits_2() -> None:
    result = cxrelay("serve", "--port", "99999")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bad_config_file_exit_2_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = "eighty"\n')
    result = cxrelay("serve", "--config", str(path))
    assert result.returncode == 2
    assert one_line_error(result) == \
        f"cxrelay: error: {path}: server.port: expected an integer, got a string"
    check = cxrelay("check-config", str(path))
    assert check.returncode == 2 and "server.port" in check.stderr
    path.write_text('[[camera]]\nname = "a"\nurl = "rtsp://h/x"\n')
    assert cxrelay("check-config", str(path)).returncode == 0


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cxrelay("serve", "--host", "127.0.0.1", "--port", str(port), "--demo")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_environment_variables_configure_serve(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    env = {"CXRELAY_PORT": str(port), "CXRELAY_HOST": "127.0.0.1", "CXRELAY_DEMO": "1",
           "CXRELAY_CAMERA": f"gone=rtsp://127.0.0.1:{closed}/cam",
           "CXRELAY_LOG_FORMAT": "json", "CXRELAY_LOG_LEVEL": "warning"}
    proc = RelayProcess(env=env)
    proc.port = port
    proc.args = ["serve"]
    proc.start()
    try:
        def cameras() -> dict[str, str]:
            status, body = http_get(port, "/api/cameras")
            assert status == 200
            return {c["name"]: c["state"] for c in json.loads(body)}

        assert set(cameras()) == {"demo", "gone"}
        deadline = time.monotonic() + 30
        while cameras()["gone"] != "offline":  # its failure is logged before the state shows
            assert time.monotonic() < deadline, "camera 'gone' never went offline"
            time.sleep(0.1)
    finally:
        code, out, _ = proc.stop()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    # The level applies both ways: the warning is there, and no info line ("listening",
    # "camera connected", "stopped") is.
    assert any(e["event"] == "camera failed" and e["camera"] == "gone" for e in events), events
    assert {e["level"] for e in events} <= {"warning", "error", "critical"}, events


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_closing_viewers_with_1001(sig: int) -> None:
    with relay_process("--demo") as proc:

        async def watch() -> int | None:
            async with connect(f"ws://127.0.0.1:{proc.port}/ws/demo") as ws:
                await ws.recv()
                started = time.monotonic()
                proc.signal(sig)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                except ConnectionClosed:
                    pass
                assert time.monotonic() - started < 5
                return ws.close_code

        signalled = time.monotonic()
        code = asyncio.run(watch())
        assert code == 1001
        assert proc.proc is not None
        returncode = proc.proc.wait(timeout=10)
        assert time.monotonic() - signalled < 5
        assert returncode == 0
        _, out, err = proc.stop()
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert events[-2:] == ["shutting down", "stopped"] or "stopped" in events
    assert "Traceback" not in err


def test_token_command_mints_what_the_relay_accepts(tmp_path: Path) -> None:
    from cxrelay.access import TokenVerifier

    secret = "0123456789abcdef0123456789abcdef"
    result = cxrelay("token", "--camera", "lobby", "--camera", "door", "--ttl", "15m",
                     "--subject", "kiosk", env={**os.environ, "CXRELAY_AUTH_SECRET": secret})
    assert result.returncode == 0, result.stderr
    claims = TokenVerifier(secret).verify(result.stdout.strip(), "door")
    assert claims.cameras == ("lobby", "door") and claims.subject == "kiosk"
    assert 14 * 60 < claims.remaining() <= 15 * 60 + 1
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nsecret = "{secret}"\n')
    result = cxrelay("token", "--config", str(config), "--camera", "*")
    assert TokenVerifier(secret).verify(result.stdout.strip(), "anything").allows("x")
    env = {k: v for k, v in os.environ.items() if k != "CXRELAY_AUTH_SECRET"}
    result = cxrelay("token", "--camera", "lobby", env=env)
    assert result.returncode == 2
    assert one_line_error(result) == \
        "cxrelay: error: no secret: give --config PATH or set CXRELAY_AUTH_SECRET"
    result = cxrelay("token", "--camera", "lobby", "--ttl", "soon",
                     env={**env, "CXRELAY_AUTH_SECRET": secret})
    assert result.returncode == 2 and "--ttl" in one_line_error(result)


def test_token_command_refuses_a_secret_the_relay_refuses(tmp_path: Path) -> None:
    short = "only-sixteen-chr"
    result = cxrelay("token", "--camera", "lobby", env={**os.environ, "CXRELAY_AUTH_SECRET": short})
    assert result.returncode == 2 and result.stdout == ""
    problem = "too short: use at least 32 characters (for example: openssl rand -hex 32)"
    assert one_line_error(result) == f"cxrelay: error: CXRELAY_AUTH_SECRET: {problem}"
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nsecret = "{short}"\n')
    result = cxrelay("check-config", str(config))
    assert one_line_error(result) == f"cxrelay: error: {config}: auth.secret: {problem}"

