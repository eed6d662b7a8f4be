"""SIGTERM under load exits well within the promised 5 s (issue 14, fault 8:
it took 4.73 s): viewers reading, viewers that never read, handshakes never
finished, and a camera whose source thread is stuck in a read, all at once.

The bound is the documented one (docs/operations.md: within 5 s; systemd
kills at TimeoutStopSec=10); the relay aims at about 2 s, so a loaded machine
has the margin."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect

from cxrelay.app import SHUTDOWN_CUT, SHUTDOWN_GRACE
from tests.support import RelayProcess, stalled_client

PROMISED = 5.0  # seconds, docs/operations.md and the systemd unit's comment


@pytest.fixture
def silent_camera() -> Iterator[int]:
    """An "RTSP camera" that accepts the connection and never says a word:
    the relay's source thread sits in FFmpeg's open until its timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


async def reading(port: int) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/ws/cam", max_size=None, compression=None,
                       open_timeout=20)
    return ws


async def drain(ws: ClientConnection) -> None:
    try:
        async for _ in ws:
            pass
    except Exception:  # closed by the relay's shutdown, one way or another
        pass


async def test_sigterm_under_load(tmp_path, silent_camera: int) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "cxrelay.toml"
    config.write_text(
        '[server]\nmax_handshakes_per_client = 0\n'
        '[[camera]]\nname = "cam"\nurl = "demo://?size=640x360&fps=30"\n'
        f'[[camera]]\nname = "stuck"\nurl = "rtsp://127.0.0.1:{silent_camera}/x"\n'
        'open_timeout = 60\nread_timeout = 60\n')
    proc = RelayProcess("--config", str(config)).start()
    assert proc.proc is not None
    port = proc.port
    viewers = [await reading(port) for _ in range(20)]
    readers = [asyncio.create_task(drain(ws)) for ws in viewers]
    stalled = [stalled_client(port, "cam") for _ in range(20)]
    half_open = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ws/cam HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        half_open.append(s)
    try:
        # Until the stalled viewers' buffers are full and the stuck camera is stuck.
        proc.wait_for_event(lambda e: e["event"] == "camera connected" and e["camera"] == "cam")
        await asyncio.sleep(3)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.proc.wait, 30)
        took = time.monotonic() - started
        _, _, err = proc.stop()
        assert code == 0, err
        assert took < PROMISED, f"SIGTERM took {took:.2f} s"
        stopped = proc.wait_for_event(lambda e: e["event"] == "stopped")
        assert stopped["seconds"] <= SHUTDOWN_GRACE + SHUTDOWN_CUT + 1, stopped
        assert "Traceback" not in err
    finally:
        for s in stalled + half_open:
            s.close()
        await asyncio.gather(*readers)
