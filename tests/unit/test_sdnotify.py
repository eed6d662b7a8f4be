"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxrelay.sdnotify import Notifier, status_line, watchdog_loop


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket set as $NOTIFY_SOCKET; recv() gets what we sent."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_sends_ready_and_status(systemd: socket.socket) -> None:
    assert Notifier().ready("2/3 cameras live, 0 viewers") is True
    assert received(systemd) == ["READY=1", "STATUS=2/3 cameras live, 0 viewers"]


def test_ready_without_status(systemd: socket.socket) -> None:
    assert Notifier().ready()
    assert received(systemd) == ["READY=1"]


def test_each_message_is_exact(systemd: socket.socket) -> None:
    n = Notifier()
    assert n.status("starting")
    assert received(systemd) == ["STATUS=starting"]
    assert n.watchdog()
    assert received(systemd) == ["WATCHDOG=1"]
    assert n.stopping()
    assert received(systemd) == ["STOPPING=1"]
    assert n.stopping("shutting down")
    assert received(systemd) == ["STOPPING=1", "STATUS=shutting down"]


def test_status_is_kept_on_one_line(systemd: socket.socket) -> None:
    assert Notifier().status("bad\nREADY=1 camera")
    assert received(systemd) == ["STATUS=bad READY=1 camera"]


def test_reloading_carries_a_monotonic_timestamp(systemd: socket.socket) -> None:
    before = time_us()
    assert Notifier().reloading("reloading configuration")
    after = time_us()
    lines = received(systemd)
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert lines[2:] == ["STATUS=reloading configuration"]


def time_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cxrelay-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier().ready("up")
        assert received(sock) == ["READY=1", "STATUS=up"]


def test_unset_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier()
    assert not n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_explicit_env_overrides_process_env(systemd: socket.socket) -> None:
    n = Notifier(env={})
    assert n.ready() is False
    assert nothing_pending(systemd)


def test_send_failure_returns_false(tmp_path: Path) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_unsupported_address_is_ignored() -> None:
    assert not Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("30000000", "other", None),
        ("30000000", "junk", None),
        ("0", None, None),
        ("", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(usec: str, pid: str | None, expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        env["WATCHDOG_PID"] = pid
    assert Notifier(env=env).watchdog_interval() == expected


async def test_watchdog_loop_pings_until_cancelled(systemd: socket.socket) -> None:
    systemd.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watchdog_loop(Notifier(), 0.02))
    pings = [await asyncio.wait_for(loop.sock_recv(systemd, 64), 5) for _ in range(3)]
    assert pings == [b"WATCHDOG=1"] * 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Drain whatever was sent before the cancel landed, then make sure the
    # loop really stopped: no ping arrives over several periods.
    while True:
        try:
            systemd.recv(64)
        except BlockingIOError:
            break
    await asyncio.sleep(0.1)
    assert nothing_pending(systemd)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((3, 4, 12), "3/4 cameras live, 12 viewers"),
        ((0, 0, 0), "0/0 cameras live, 0 viewers"),
        ((1, 1, 1), "1/1 camera live, 1 viewer"),
    ],
)
def test_status_line(args: tuple[int, int, int], text: str) -> None:
    assert status_line(*args) == text
