"""Camera passwords appear nowhere: not in logs (at debug level), the API,
metrics, health, viewer messages, errors, reloads or the probe (issue 5)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support import http_get, relay_process, wait_for

pytestmark = pytest.mark.rtsp

RIGHT = "CamPass-7261"
WRONG = "Wrong-Pass-4411"
UNREACHABLE = "Unreach-Pass-9"
RELOADED = "Reload-Pass-5555"
PASSWORDS = (RIGHT, WRONG, UNREACHABLE, RELOADED)


def cxrelay(*args: str, **kw: object) -> str:
    result = subprocess.run([sys.executable, "-m", "cxrelay", *args], capture_output=True,
                            text=True, timeout=60, **kw)  # type: ignore[call-overload]
    return result.stdout + result.stderr


async def messages(port: int, camera: str, seconds: float) -> list[str]:
    seen: list[str] = []
    async with connect(f"ws://127.0.0.1:{port}/ws/{camera}") as ws:
        try:
            async with asyncio.timeout(seconds):
                async for m in ws:
                    if isinstance(m, str):
                        seen.append(m)
        except TimeoutError:
            pass
    return seen


def test_no_password_in_any_output(rtsp_camera, tmp_path: Path) -> None:
    cam = rtsp_camera(user="admin", password=RIGHT)
    base = cam.url.replace("rtsp://", "rtsp://admin@")
    config = tmp_path / "cxrelay.toml"
    config.write_text(
        f'[[camera]]\nname = "right"\nurl = "{base}"\npassword_env = "RIGHT_PW"\n'
        f'[[camera]]\nname = "wrong"\nurl = "{cam.url_with("admin", WRONG)}"\n'
        f'[[camera]]\nname = "gone"\nurl = "rtsp://admin:{UNREACHABLE}@127.0.0.1:1/x"\n'
        'read_timeout = 1\nopen_timeout = 1\n'
    )
    outputs: list[str] = []
    with relay_process("--config", str(config), "--log-level", "debug",
                       env={"RIGHT_PW": RIGHT}) as proc:
        port = proc.port

        async def settled() -> bool:
            cams = {c["name"]: c for c in json.loads(http_get(port, "/api/cameras")[1])}
            return (cams["right"]["state"] == "live" and cams["wrong"]["state"] == "offline"
                    and cams["gone"]["state"] == "offline")

        asyncio.run(wait_for(settled, timeout=30))
        for camera in ("right", "wrong", "gone"):
            outputs.extend(asyncio.run(messages(port, camera, 1.0)))
        for path in ("/api/cameras", "/metrics", "/healthz", "/ws/nope", "/"):
            outputs.append(http_get(port, path)[1].decode())
        # A reload that changes a camera's password, and one that fails.
        config.write_text(config.read_text().replace(WRONG, RELOADED))
        mark = proc.log_mark()
        assert proc.reload()["changed"] == ["wrong"]
        # The restarted camera tries its new (still wrong) password, and says so.
        proc.wait_for_event(lambda e: e["event"] == "camera failed" and e["camera"] == "wrong",
                            since=mark, timeout=30)
        config.write_text(config.read_text() + f'[[camera]]\nname = "x"\nurl = "rtsp://u:{RELOADED}@h:99999/"\n')
        assert proc.reload()["event"].startswith("reload rejected")
        outputs.append(http_get(port, "/api/cameras")[1].decode())
        code, out, err = proc.stop()
    outputs += [out, err]
    assert code == 0
    assert '"camera failed"' in out and "401" in out  # the logs did talk about them
    # The operator's tools: probe (text and JSON), config checks, usage errors.
    outputs.append(cxrelay("probe", cam.url_with("admin", WRONG), "--seconds", "1"))
    outputs.append(cxrelay("probe", "--json", cam.url_with("admin", RIGHT), "--seconds", "1"))
    outputs.append(cxrelay("probe", f"rtsp://admin:{UNREACHABLE}@127.0.0.1:1/x", "--timeout", "1"))
    outputs.append(cxrelay("check-config", str(config)))
    outputs.append(cxrelay("serve", "--camera", f"bad name=rtsp://a:{WRONG}@h/x"))
    outputs.append(cxrelay("serve", "--camera", f"x=rtsp://a:{WRONG}@h:99999/x"))
    everything = "\n".join(outputs)
    assert "rtsp://***@" in everything  # URLs are shown, redacted
    for password in PASSWORDS:
        assert password not in everything, password
