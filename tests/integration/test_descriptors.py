"""Connections that never finish their handshake, and a process short of file
descriptors (issue 14, fault 3).

Before the fix, with tokens on, max_connections_per_client = 4 and 1,024
descriptors, 1,100 half-sent requests took every descriptor: /healthz was
reset, a viewer with a valid token failed, and nothing was logged. Here the
relay is a process with a descriptor limit of a few hundred, so a few hundred
half-open connections make the same point. The attack comes from other
loopback addresses (127.0.0.2 and up) than the viewers (127.0.0.1), as it
would from other machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from cxrelay.access import mint_token
from cxrelay.connection import STALE
from tests.support import RelayProcess, http_get

SECRET = "a test secret of thirty-two bytes"
CAMERA = 'name = "cam"\nurl = "demo://?size=160x90&fps=10"\n'


@pytest.fixture(autouse=True)
def enough_descriptors_here() -> None:
    """This test process opens a few hundred sockets itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def limit_descriptors(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the relay's process, before it starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def half_open(port: int, source: str) -> socket.socket | None:
    """A connection from ``source`` that sends half a request and stops."""
    s = socket.socket()
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /ws/cam HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    except OSError:
        s.close()
        return None
    return s


@contextlib.contextmanager
def watch(port: int, token: str) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{port}/ws/cam?token={token}", open_timeout=20,
                 max_size=None, compression=None) as ws:
        assert json.loads(ws.recv(timeout=20))["type"] in ("init", "status")
        yield ws


def frames(ws: ClientConnection, count: int) -> int:
    """Read until ``count`` frames (binary messages) came; how many came."""
    got = 0
    deadline = time.monotonic() + 30
    while got < count and time.monotonic() < deadline:
        if isinstance(ws.recv(timeout=30), bytes):
            got += 1
    return got


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def relay(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    limit, server = request.param
    config = tmp_path / "cxrelay.toml"
    config.write_text(f"[server]\n{server}\n[auth]\nsecret = \"{SECRET}\"\n"
                      f"[[camera]]\n{CAMERA}")
    proc = RelayProcess("--config", str(config), preexec_fn=limit_descriptors(limit)).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("relay", [(512, "max_connections_per_client = 4\n"
                                         "handshake_timeout = 120\nmax_handshakes = 64\n"
                                         "max_handshakes_per_client = 16")], indirect=True)
def test_half_open_handshakes_cannot_take_every_descriptor(relay: RelayProcess) -> None:
    token = mint_token(SECRET, ["cam"], 600)
    assert relay.proc is not None
    with watch(relay.port, token) as watching:
        assert frames(watching, 3) == 3
        since = relay.log_mark()
        # 20 attackers, 30 half-open connections each: 600 in all, more than
        # twice the relay's descriptors.
        attack = [s for n in range(2, 22) for _ in range(30)
                  if (s := half_open(relay.port, f"127.0.0.{n}")) is not None]
        try:
            assert len(attack) > 512, "the attack itself could not open its connections"
            assert open_descriptors(relay.proc.pid) < 512
            # The connected viewer goes on, and newcomers are served once the
            # attack's handshakes are old enough to give way (STALE).
            assert frames(watching, 5) == 5
            time.sleep(STALE + 1)
            status, body = http_get(relay.port, "/healthz", timeout=10)
            assert status == 200, body
            with watch(relay.port, token) as newcomer:
                assert frames(newcomer, 3) == 3
            event = relay.wait_for_event(lambda e: e["event"] == "connections refused", since)
            assert "in their handshake" in event["reason"]
            assert event["level"] == "warning"
        finally:
            for s in attack:
                s.close()
    # Whatever was refused was answered: nothing is left half-counted.
    assert http_get(relay.port, "/healthz", timeout=10)[0] == 200


@pytest.mark.parametrize("relay", [(256, "handshake_timeout = 120\nmax_handshakes = 0\n"
                                         "max_handshakes_per_client = 0")], indirect=True)
def test_short_of_descriptors_new_connections_are_refused_clearly(relay: RelayProcess) -> None:
    """No handshake bounds at all: the descriptor limit itself must hold."""
    token = mint_token(SECRET, ["cam"], 600)
    assert relay.proc is not None
    with watch(relay.port, token) as watching:
        assert frames(watching, 3) == 3
        since = relay.log_mark()
        attack = [s for _ in range(400) if (s := half_open(relay.port, "127.0.0.2")) is not None]
        try:
            assert len(attack) > 256
            # The relay stops short of its limit, and says so to those it refuses.
            assert open_descriptors(relay.proc.pid) < 256
            # Those admitted wait for the rest of their request; the others have an answer.
            readable, _, _ = select.select(attack, [], [], 10)
            answers = [s.recv(4096) for s in readable]
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            assert refused, answers[:3]
            assert all(b"out of file descriptors" in a for a in refused)
            event = relay.wait_for_event(lambda e: e["event"] == "connections refused", since)
            assert event["reason"] == "server busy: out of file descriptors"
            assert event["descriptor_limit"] == 256
            # The viewer already watching is not disturbed.
            assert frames(watching, 5) == 5
        finally:
            for s in attack:
                s.close()
        # Descriptors back: the relay is still listening, and serves again.
        deadline = time.monotonic() + 30
        while http_get(relay.port, "/healthz", timeout=10)[0] != 200:
            assert time.monotonic() < deadline, "the relay does not serve again"
            time.sleep(0.5)
        with watch(relay.port, token) as newcomer:
            assert frames(newcomer, 3) == 3
        assert frames(watching, 3) == 3
