"""The programmatic API (docs/api.md): a relay inside an application's own
asyncio loop, started and stopped by the application, not by signals."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from cxrelay import CameraConfig, Config, Relay, ServerConfig
from tests.support import is_frame, is_init, viewer

DOC = Path(__file__).parents[2] / "docs" / "api.md"


def test_the_documented_example_runs() -> None:
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert example is not None
    result = subprocess.run([sys.executable, "-c", example.group(1)], capture_output=True,
                            text=True, timeout=60, cwd=DOC.parents[1])
    assert result.returncode == 0, result.stderr
    assert "watching demo 320x180" in result.stdout.splitlines()


@pytest.mark.parametrize("how", ["request_stop", "cancel"])
async def test_relay_in_the_application_loop(how: str) -> None:
    loop = asyncio.get_running_loop()
    sighup = signal.getsignal(signal.SIGHUP)
    ticks = 0

    async def the_application_s_own_work() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    work = asyncio.create_task(the_application_s_own_work())
    relay = Relay(Config(server=ServerConfig(host="127.0.0.1", port=0),
                         cameras=(CameraConfig("cam", "demo://?size=160x90&fps=10"),)))
    serving = asyncio.create_task(relay.serve())
    await asyncio.wait_for(relay.started.wait(), 20)
    # Signals stay the application's: nothing was installed for the relay.
    assert signal.getsignal(signal.SIGHUP) is sighup
    assert not loop.remove_signal_handler(signal.SIGTERM)
    async with viewer(relay.port, "cam") as v:
        await v.until(is_init)
        await v.until(is_frame)
        assert relay.status()["viewers"] == 1
        if how == "request_stop":
            relay.request_stop()
            await asyncio.wait_for(serving, 10)
        else:
            serving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(serving, 10)
        with pytest.raises(ConnectionClosed):
            while True:
                await v.recv(timeout=5)
        assert v.ws.close_code == 1001
    assert relay.status()["viewers"] == 0
    assert ticks > 0 and not work.done()  # the loop and its other tasks carry on
    work.cancel()
