"""A reload that meets a half-written file keeps the running config (issue
14, fault 4): before, an empty file on SIGHUP removed every camera and closed
every viewer with 1001, and `check-config` called it "OK, 0 camera(s)".

The relay runs as a process with a config file, as under systemd; each bad
file gets one log line saying what is wrong, and the cameras and the viewer
stay as they were."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support import RelayProcess, http_get

GOOD = """\
[server]
max_viewers = 10

[[camera]]
name = "cam"
url = "demo://?size=160x90&fps=10"

[[camera]]
name = "door"
url = "rtsp://viewer@127.0.0.1:9/stream"
password_file = "door-password"
on_demand = true
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[RelayProcess, Path, Path]]:
    config = tmp_path / "cxrelay.toml"
    config.write_text(GOOD)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "door-password").write_text("s3cret\n")
    proc = RelayProcess("--config", str(config),
                        env={"CREDENTIALS_DIRECTORY": str(credentials)}).start()
    try:
        yield proc, config, credentials
    finally:
        proc.stop()


def cameras(proc: RelayProcess) -> list[str]:
    return [c["name"] for c in json.loads(http_get(proc.port, "/api/cameras")[1])]


@contextlib.contextmanager
def watching(proc: RelayProcess) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{proc.port}/ws/cam", open_timeout=20, max_size=None) as ws:
        frames(ws, 1)
        yield ws


def frames(ws: ClientConnection, count: int) -> None:
    got = 0
    while got < count:
        got += isinstance(ws.recv(timeout=20), bytes)


def cut_mid_table(text: str) -> str:
    return text[:text.index('name = "door"') + len('name = "do')]


def cut_after_first_camera(text: str) -> str:
    """Valid TOML: a file rewritten in place and read halfway."""
    return text[:text.rindex("[[camera]]")]


HALF_WRITTEN = [
    ("empty", lambda good: "", "the file is empty"),
    ("blank", lambda good: "\n\n", "the file is empty"),
    ("cut mid-table", cut_mid_table, "invalid TOML"),
    ("no camera table", lambda good: good[:good.index("[[camera]]")],
     "no cameras: add a [[camera]] table, or set [server] allow_no_cameras = true"),
    ("zeros", lambda good: "\0" * len(good), "invalid TOML"),
]


@pytest.mark.parametrize(("what", "damage", "message"), HALF_WRITTEN,
                         ids=[w for w, _, _ in HALF_WRITTEN])
def test_a_half_written_config_is_rejected_and_nothing_changes(
        setup: tuple[RelayProcess, Path, Path], what: str, damage: object,
        message: str) -> None:
    proc, config, _ = setup
    with watching(proc) as viewer:
        config.write_text(damage(GOOD))  # type: ignore[operator]
        rejected = proc.reload()
        assert rejected["event"] == "reload rejected, keeping the running config", rejected
        assert rejected["level"] == "error"
        assert message in rejected["error"] and "\n" not in rejected["error"]
        assert cameras(proc) == ["cam", "door"]
        frames(viewer, 3)  # the viewer was not closed
        config.write_text(GOOD)
        assert proc.reload()["event"] == "reloaded"
        frames(viewer, 3)


def test_missing_file_unreadable_secret_and_undecodable_bytes(
        setup: tuple[RelayProcess, Path, Path]) -> None:
    proc, config, credentials = setup
    with watching(proc) as viewer:
        config.unlink()  # mid-rename, or deleted
        assert "cxrelay.toml: no such file" in proc.reload()["error"]
        config.write_text(GOOD)
        (credentials / "door-password").write_text("")  # a credential written halfway
        error = proc.reload()["error"]
        assert "camera[1] (door).password_file:" in error and "door-password is empty" in error
        (credentials / "door-password").write_text("s3cret\n")
        config.write_bytes(GOOD.replace('"cam"', '"caf\xe9"').encode("latin-1"))
        assert "not UTF-8 text" in proc.reload()["error"]
        assert cameras(proc) == ["cam", "door"]
        frames(viewer, 3)
    _, out, _ = proc.stop()
    assert "s3cret" not in out


def test_a_file_that_parses_but_lost_cameras_is_applied(
        setup: tuple[RelayProcess, Path, Path]) -> None:
    """A file cut between two tables is valid TOML with fewer cameras: nothing
    in it says it is incomplete, so it is applied, and the log says what was
    removed (the guard is only against losing every camera)."""
    proc, config, _ = setup
    config.write_text(cut_after_first_camera(GOOD))
    reloaded = proc.reload()
    assert reloaded["event"] == "reloaded" and reloaded["removed"] == ["door"]


def test_no_cameras_when_the_operator_says_so(setup: tuple[RelayProcess, Path, Path]) -> None:
    proc, config, _ = setup
    config.write_text("[server]\nallow_no_cameras = true\n")
    reloaded = proc.reload()
    assert reloaded["event"] == "reloaded" and sorted(reloaded["removed"]) == ["cam", "door"]
    assert cameras(proc) == []


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxrelay", "check-config", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_check_config_and_serve_refuse_a_config_without_cameras(tmp_path: Path) -> None:
    path = tmp_path / "cxrelay.toml"
    for text, message in (("", "the file is empty"), ("[server]\nport = 8081\n", "no cameras")):
        path.write_text(text)
        result = check_config(path)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        serve = subprocess.run([sys.executable, "-m", "cxrelay", "serve", "--config", str(path),
                                "--port", "0"], capture_output=True, text=True, timeout=30,
                               check=False)
        assert serve.returncode == 2 and message in serve.stderr
    path.write_text("[server]\nallow_no_cameras = true\n")
    result = check_config(path)
    assert result.returncode == 0 and "0 camera(s)" in result.stdout
