"""Shaped links between two network namespaces that a test makes itself.

    with NetnsLink() as link:                 # namespaces, TUN devices, the emulator
        link.shape(rate=500_000, delay=0.05)  # relay -> client; see linkemu.py
        with RelayInNs(link, "--camera", "cam=file:///..."):
            sock = link.client_socket()       # a socket that lives in the client's namespace
            ...

Why not ``tc``: this machine's kernel has tbf, htb and the fifos but no ``netem`` qdisc
and no classifiers (docs/latency.md says what was tried), so a qdisc can shape rate but
not delay or loss. The link is a userspace emulator between two TUN devices instead
(``tests/links/linkemu.py``): the relay's namespace on one side, the client's on the
other, TCP end to end between the two kernels. ``NetnsLink(backend="tbf")`` makes a veth
pair shaped by a kernel tbf qdisc instead (rate only), to check the emulator against.

Everything is torn down on exit, failure included; namespaces left behind by a process
that was killed are removed the next time a link is made.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.camera.harness import stop_process

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = Path(__file__).resolve().parent / "linkemu.py"
NETNS_DIR = Path("/run/netns")
PREFIX = "cxlk-"
CLONE_NEWNET = 0x40000000
RELAY_IP = "10.77.0.1"  # private /30: each pair lives in namespaces of its own
CLIENT_IP = "10.77.0.2"
RELAY_PORT = 8080


class LinkError(RuntimeError):
    """The link could not be made (no root, no ip, no /dev/net/tun...)."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise LinkError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def missing_parts() -> list[str]:
    """What this machine lacks to make links (empty: all there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if not shutil.which("ip"):
        missing.append("iproute2's ip")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def sweep_stale() -> None:
    """Remove namespaces of ours whose test process is gone (killed before cleanup)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        try:
            pid = int(entry.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            run("ip", "netns", "del", entry.name, check=False)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the test process dies, however it dies."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def in_namespace(ns: str, make: Any) -> Any:
    """Call `make()` in a thread that has entered namespace `ns`: sockets it creates stay
    in that namespace for their whole life, whichever thread uses them afterwards."""
    result: dict[str, Any] = {}

    def enter_and_make() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({ns}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            result["value"] = make()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=enter_and_make, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class NetnsLink:
    """Two namespaces (relay side, client side) joined by a shaped point-to-point link."""

    _count = 0

    def __init__(self, backend: str = "emulator", seed: int = 1, cc: str | None = "reno") -> None:
        """`cc`: TCP congestion control in both namespaces (None: the machine's default).
        Loss-based ones (reno, and CUBIC, the usual server default) fill bottleneck
        buffers; BBR (this machine's default) mostly doesn't. A namespace may only pick
        one of `tcp_allowed_congestion_control` (reno and bbr here): reno stands for the
        loss-based family."""
        if backend not in ("emulator", "tbf"):
            raise ValueError(f"unknown backend {backend!r}")
        NetnsLink._count += 1
        tag = f"{os.getpid()}-{NetnsLink._count}-{secrets.token_hex(2)}"
        self.backend = backend
        self.seed = seed
        self.cc = cc
        self.relay_ns = f"{PREFIX}{tag}-r"
        self.client_ns = f"{PREFIX}{tag}-c"
        short = secrets.token_hex(4)
        self.relay_dev = f"cxr{short}"  # names must be unique while in the root namespace
        self.client_dev = f"cxc{short}"
        self.relay_ip = RELAY_IP
        self.client_ip = CLIENT_IP
        self._emulator: subprocess.Popen[str] | None = None
        self._emulator_err: IO[str] | None = None
        self._made: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> NetnsLink:
        missing = missing_parts()
        if missing:
            raise LinkError("cannot make network namespaces here: missing " + ", ".join(missing))
        sweep_stale()
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _make(self) -> None:
        for ns in (self.relay_ns, self.client_ns):
            run("ip", "netns", "add", ns)
            self._made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.cc:
                # /proc/sys/net shows the namespace of the process that opens it
                run("ip", "netns", "exec", ns, "sh", "-c",
                    f"echo {self.cc} > /proc/sys/net/ipv4/tcp_congestion_control")
        if self.backend == "emulator":
            self._start_emulator()
        else:
            run("ip", "link", "add", self.relay_dev, "type", "veth", "peer", "name",
                self.client_dev)
        for dev, ns, ip, peer in ((self.relay_dev, self.relay_ns, self.relay_ip, self.client_ip),
                                  (self.client_dev, self.client_ns, self.client_ip,
                                   self.relay_ip)):
            # No IPv6 link-local address: no router solicitations or DAD on the link.
            run("ip", "link", "set", "dev", dev, "addrgenmode", "none", check=False)
            run("ip", "link", "set", dev, "netns", ns)
            if self.backend == "emulator":
                run("ip", "-n", ns, "addr", "add", ip, "peer", peer, "dev", dev)
            else:
                run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def _start_emulator(self) -> None:
        self._emulator_err = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        self._emulator = subprocess.Popen(
            [sys.executable, str(EMULATOR), "--a", self.relay_dev, "--b", self.client_dev,
             "--seed", str(self.seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._emulator_err,
            text=True, start_new_session=True)
        assert self._emulator.stdout is not None
        line = self._emulator.stdout.readline().strip()
        if line != "READY":
            raise LinkError(f"link emulator did not start: {line!r} {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self._emulator_err is None:
            return ""
        self._emulator_err.seek(0)
        return self._emulator_err.read()[-2000:]

    def close(self) -> None:
        emulator, self._emulator = self._emulator, None
        if emulator is not None:
            with contextlib.suppress(OSError):
                assert emulator.stdin is not None
                emulator.stdin.close()  # EOF: it exits by itself
            try:
                emulator.wait(5)
            except subprocess.TimeoutExpired:
                emulator.kill()
                emulator.wait()
            if emulator.stdout is not None:
                emulator.stdout.close()
        if self._emulator_err is not None:
            self._emulator_err.close()
            self._emulator_err = None
        while self._made:
            run("ip", "netns", "del", self._made.pop(), check=False)
        if self.backend == "tbf":
            run("ip", "link", "del", self.relay_dev, check=False)  # if it never moved

    # -- shaping -----------------------------------------------------------------------------

    def shape(self, direction: str = "down", **fields: float | bool) -> None:
        """Set the link's shape: rate (bit/s, 0 unlimited), delay (s), loss (0..1),
        limit (bytes queued at the bottleneck), down (drop everything).
        `direction`: "down" (relay -> client), "up", or "both"."""
        if self.backend == "tbf":
            self._shape_tbf(direction, **fields)
            return
        reply = self._control({"dir": direction, **fields})
        if not reply.get("ok"):
            raise LinkError(f"link emulator refused {fields}: {reply.get('error')}")

    def _shape_tbf(self, direction: str, rate: float = 0, limit: int = 256 * 1024,
                   **other: float | bool) -> None:
        if other or direction != "down":
            raise LinkError("the tbf backend shapes only the rate of the relay -> client side")
        ns, dev = self.relay_ns, self.relay_dev
        run("ip", "-n", ns, "link", "set", dev, "txqueuelen", "1000")
        run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
        if rate:
            run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                f"{int(rate)}bit", "burst", "3000", "limit", str(int(limit)))

    def stats(self) -> dict[str, Any]:
        """The emulator's counters per direction (packets, delivered, lost, overflow...)."""
        if self.backend == "tbf":
            out = run("tc", "-n", self.relay_ns, "-s", "-j", "qdisc", "show", "dev",
                      self.relay_dev).stdout
            return {"down": json.loads(out)}
        return self._control({"stats": True})

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        emulator = self._emulator
        if emulator is None or emulator.poll() is not None:
            raise LinkError(f"link emulator is not running {self._stderr_tail()}")
        assert emulator.stdin is not None and emulator.stdout is not None
        emulator.stdin.write(json.dumps(request) + "\n")
        emulator.stdin.flush()
        reply: dict[str, Any] = json.loads(emulator.stdout.readline())
        return reply

    # -- using the link ----------------------------------------------------------------------

    def client_socket(self, port: int = RELAY_PORT, timeout: float = 10.0) -> socket.socket:
        """A TCP socket made in the client's namespace, connected to the relay side."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(timeout)
                s.connect((self.relay_ip, port))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            return s

        sock: socket.socket = in_namespace(self.client_ns, make)
        return sock

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]


class RelayInNs:
    """`python -m cxrelay serve` in the link's relay namespace, on RELAY_IP:RELAY_PORT.

    Extra arguments go to `serve` (``--camera``, ``--config``...)."""

    def __init__(self, link: NetnsLink, *args: str, env: dict[str, str] | None = None,
                 python: str | None = None) -> None:
        self.link = link
        self.port = RELAY_PORT
        self.argv = [python or sys.executable, "-m", "cxrelay", "serve",
                     "--host", link.relay_ip, "--port", str(self.port),
                     "--log-format", "json", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def __enter__(self) -> RelayInNs:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> RelayInNs:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.link.exec_argv(self.link.relay_ns, self.argv),
                                     cwd=ROOT, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LinkError(f"cxrelay exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError):
                if self.http_get("/healthz")[0] == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise LinkError(f"cxrelay not healthy after {timeout:.0f} s: {self.tail()}")
            time.sleep(0.2)

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET over the link, from the client's namespace."""
        sock = self.link.client_socket(self.port, timeout)
        with sock:
            sock.setblocking(True)
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {self.link.relay_ip}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def tail(self, chars: int = 3000) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read()[-chars:].decode(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU of the relay process so far (the child of `ip netns exec`)."""
        assert self.proc is not None
        # `ip netns exec` execs the command: same pid.
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def close(self) -> None:
        self.stop()
        if self.log is not None:
            self.log.close()
            self.log = None
