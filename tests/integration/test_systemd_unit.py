"""systemd/cxrelay.service: systemd accepts it, rates its sandbox OK, and the
relay really runs inside the seccomp rules the unit asks for.

No systemd runs as PID 1 here, so the unit is checked offline with
systemd-analyze, and its seccomp filters (MemoryDenyWriteExecute=,
SystemCallFilter=, RestrictAddressFamilies=) are rebuilt with libseccomp, the
library systemd itself uses, around a real `cxrelay serve --demo`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.camera.harness import stop_process
from tests.parts import command

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "cxrelay.service"
INSTALLED_BINARY = "/usr/local/bin/cxrelay"
MAX_EXPOSURE = 2.0


@pytest.fixture
def systemd_analyze() -> str:
    return command("systemd-analyze", "systemd")


# Only the tests that run systemd-analyze need it; the others check the unit's text and
# the relay's own side of Type=notify.
needs_analyze = pytest.mark.usefixtures("systemd_analyze")


def unit_settings(text: str) -> dict[str, list[str]]:
    """Each key of the unit and its values, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at this checkout's Python, since
    `verify` insists the binary exists; every other line is untouched."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    text = text.replace(f"ExecStart={INSTALLED_BINARY} ",
                        f"ExecStart={sys.executable} -m cxrelay ")
    path = tmp_path / "cxrelay.service"
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_COLORS": "0",
           "SYSTEMD_PAGER": ""}
    return subprocess.run(["systemd-analyze", "--no-pager", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_unit_has_the_operational_settings() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{INSTALLED_BINARY} serve --config /etc/cxrelay/cxrelay.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["WatchdogSec"] == ["30"]
    assert s["TimeoutStopSec"] == ["10"]
    assert s["DynamicUser"] == ["yes"]
    assert s["Environment"] == ["CXRELAY_LOG_FORMAT=json"]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


@needs_analyze
def test_descriptor_limit_suits_the_relays_limits() -> None:
    """LimitNOFILE= (soft and hard alike) holds the default handshakes, the
    spare and many thousand viewers (issue 14 fault 3); the sandbox forbids
    raising it from inside (@resources), so the unit's number is the one."""
    from cxrelay.config import DEFAULT_MAX_HANDSHAKES
    from cxrelay.connection import descriptors_needed

    (limit,) = unit_settings(UNIT.read_text())["LimitNOFILE"]
    assert ":" not in limit, "one number: soft and hard the same"
    assert int(limit) >= descriptors_needed(10_000, DEFAULT_MAX_HANDSHAKES, 64)


def test_verify(testable_unit: Path) -> None:
    result = analyze("verify", "--man=no", "--recursive-errors=no", str(testable_unit))
    output = result.stdout + result.stderr
    # verify exits 0 even for unknown keys and unparsable values, which it
    # only warns about: any line about our file is a failure.
    complaints = [line for line in output.splitlines() if testable_unit.name in line]
    assert result.returncode == 0, output
    assert complaints == []


@needs_analyze
def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key is reported."""
    bad = tmp_path / "cxrelay.service"
    bad.write_text(f"[Service]\nExecStart={sys.executable}\nProtectSystm=strict\n")
    result = analyze("verify", "--man=no", "--recursive-errors=no", str(bad))
    assert "ProtectSystm" in result.stdout + result.stderr


def exposure(unit: Path) -> float:
    result = analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


@needs_analyze
def test_security_rating(testable_unit: Path) -> None:
    assert exposure(testable_unit) <= MAX_EXPOSURE


@needs_analyze
def test_security_rating_can_fail(tmp_path: Path) -> None:
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={sys.executable}\n")
    assert exposure(bare) > MAX_EXPOSURE


# --- the relay inside the unit's seccomp filters --------------------------------------------

# Runs under Debian's or any python3: installs the filters, checks they bite,
# then execs the command (seccomp filters survive execve, as under systemd).
SANDBOX = r"""
import ctypes, errno, json, mmap, os, socket, sys

spec = json.loads(sys.argv[1])
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]

class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
ALLOW, EQ, MASKED_EQ, GE = 0x7FFF0000, 4, 7, 5

def errno_action(code):
    return 0x00050000 | code

def nr(name):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None  # not a syscall of this architecture

def rule(ctx, action, name, *cmps):
    number = nr(name)
    if number is None:
        return
    array = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
    rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
    if rc < 0:
        sys.exit(f"seccomp_rule_add {name}: {os.strerror(-rc)}")

def load(ctx):
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        sys.exit(f"seccomp_load: {os.strerror(-rc)}")

# MemoryDenyWriteExecute=yes, as systemd's seccomp_memory_deny_write_execute().
W, X, SHM_EXEC = mmap.PROT_WRITE, mmap.PROT_EXEC, 0o100000
ctx = lib.seccomp_init(ALLOW)
for name in ("mmap", "mmap2"):
    rule(ctx, errno_action(errno.EPERM), name, (2, MASKED_EQ, W | X, W | X))
for name in ("mprotect", "pkey_mprotect"):
    rule(ctx, errno_action(errno.EPERM), name, (2, MASKED_EQ, X, X))
rule(ctx, errno_action(errno.EPERM), "shmat", (2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
load(ctx)

# RestrictAddressFamilies= allow list: anything else is EAFNOSUPPORT.
ctx = lib.seccomp_init(ALLOW)
for family in range(64):
    if family not in spec["families"]:
        rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", (0, EQ, family, 0))
rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", (0, GE, 64, 0))
load(ctx)

# SystemCallFilter= allow list; SystemCallErrorNumber=EPERM. Last, since
# seccomp() itself is not on the list (systemd installs all before exec).
ctx = lib.seccomp_init(errno_action(errno.EPERM))
for name in spec["allowed"]:
    rule(ctx, ALLOW, name)
load(ctx)

# The filters must bite, or the run below proves nothing.
def refused(fn, code):
    try:
        fn()
    except OSError as exc:
        return exc.errno == code
    return False

assert refused(lambda: mmap.mmap(-1, 4096, prot=W | X), errno.EPERM), "W+X mmap allowed"
assert refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW), errno.EAFNOSUPPORT)
cpus = os.sched_getaffinity(0)
assert refused(lambda: os.sched_setaffinity(0, cpus), errno.EPERM), "@resources allowed"
os.execv(spec["argv"][0], spec["argv"])
"""


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls in a systemd syscall group, nested groups included."""
    seen = set() if seen is None else seen
    result = analyze("syscall-filter", group)
    assert result.returncode == 0, result.stderr
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= expand(item, seen)
        else:
            calls.add(item)
    return calls


def filter_spec(argv: list[str]) -> dict[str, Any]:
    """The unit's filters, read from the unit itself so the test follows it."""
    s = unit_settings(UNIT.read_text())
    allowed: set[str] = set()
    for value in s["SystemCallFilter"]:
        deny = value.startswith("~")
        items = value.lstrip("~").split()
        calls = set().union(*(expand(i) if i.startswith("@") else {i} for i in items))
        allowed = allowed - calls if deny else allowed | calls
    assert s["SystemCallErrorNumber"] == ["EPERM"]
    names = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
    families = [names[f] for f in s["RestrictAddressFamilies"][0].split()]
    return {"allowed": sorted(allowed), "families": families, "argv": argv}


@pytest.fixture
def sandboxed_relay(systemd_analyze: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`cxrelay serve --demo` under the unit's seccomp filters: the process and its port."""
    argv = [sys.executable, "-m", "cxrelay", "serve", "--demo", "--host", "127.0.0.1",
            "--port", "0", "--log-format", "json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-c", SANDBOX, json.dumps(filter_spec(argv))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    try:
        port = None
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "listening":
                port = int(event["url"].rsplit(":", 1)[1].strip("/"))
                break
        assert port is not None, proc.stderr.read() if proc.stderr else ""
        # Keep draining the log so a chatty relay never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield proc, port
    finally:
        stop_process(proc)


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return json.load(reply)


@needs_analyze
def test_relay_runs_under_the_units_seccomp_filters(
    sandboxed_relay: tuple[subprocess.Popen[str], int],
) -> None:
    """libx264 encoding, PyAV demuxing, uvloop and websockets all work with
    no W+X memory and only @system-service system calls."""
    from websockets.sync.client import connect

    proc, port = sandboxed_relay
    deadline = time.monotonic() + 60
    cameras: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        cameras = get_json(port, "/api/cameras")
        if cameras and cameras[0]["state"] == "live":
            break
        time.sleep(0.2)
    assert cameras and cameras[0]["state"] == "live", cameras

    with connect(f"ws://127.0.0.1:{port}/ws/demo", open_timeout=10) as ws:
        init = json.loads(ws.recv(timeout=10))
        assert init["type"] == "init"
        assert init["codec"].startswith("avc1.")
        frame = ws.recv(timeout=10)
        while isinstance(frame, str):  # status messages may come first
            frame = ws.recv(timeout=10)
        assert isinstance(frame, bytes) and len(frame) > 100

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert proc.stderr is not None
    errors = proc.stderr.read()
    assert "Operation not permitted" not in errors
    assert "Traceback" not in errors


# --- the relay's side of Type=notify, against a stand-in for systemd ------------------------


class FakeSystemd:
    """The AF_UNIX datagram socket systemd listens on, as $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def until(self, key: str) -> dict[str, str]:
        """The next message with ``key``, skipping others (watchdog pings, status)."""
        while True:
            message = self.next()
            if key in message:
                return message


def test_relay_speaks_sd_notify(tmp_path: Path) -> None:
    """READY once listening, watchdog pings from the loop, RELOADING/READY
    around SIGHUP, STOPPING on SIGTERM: what Type=notify and WatchdogSec=
    in the unit rely on."""
    systemd = FakeSystemd(tmp_path / "notify")
    config = tmp_path / "cxrelay.toml"
    config.write_text('[server]\nport = 0\n\n[[camera]]\nname = "demo"\nurl = "demo://"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(systemd.path),
           "WATCHDOG_USEC": "400000", "CXRELAY_LOG_FORMAT": "json"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "cxrelay", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        ready = systemd.until("READY")
        assert ready["READY"] == "1"
        assert re.fullmatch(r"[01]/1 camera live, 0 viewers", ready["STATUS"]), ready
        assert systemd.until("WATCHDOG") == {"WATCHDOG": "1"}
        assert systemd.until("WATCHDOG") == {"WATCHDOG": "1"}

        proc.send_signal(signal.SIGHUP)
        reloading = systemd.until("RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert systemd.until("READY")["READY"] == "1"

        proc.send_signal(signal.SIGTERM)
        assert systemd.until("STOPPING")["STOPPING"] == "1"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.sock.close()
