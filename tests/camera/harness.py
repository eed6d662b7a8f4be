"""Run the GStreamer test camera (rtsp_camera.py) as a subprocess of the tests.

    with RtspCamera(stamp=True, slices=2) as camera:
        av.open(camera.url, ...)

The camera always runs under Debian's /usr/bin/python3, which has the gi bindings; the
project's own Python (.venv, made by `make`) does not.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"
CAMERA_SCRIPT = Path(__file__).resolve().parent / "rtsp_camera.py"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within `timeout`; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

class CameraError(RuntimeError):
    """The camera did not come up."""


def camera_argv(options: dict[str, object]) -> list[str]:
    """rtsp_camera.py's command line for keyword options: slices=2 -> --slices 2.

    True flags become bare switches (stamp=True -> --stamp); False and None are left out.
    """
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        else:
            argv.extend([flag, str(value)])
    return argv


class RtspCamera:
    """A live H.264 (or, with codec="h265", H.265) RTSP camera; keyword options are
    rtsp_camera.py's CLI options."""

    def __init__(self, **options: object) -> None:
        options.setdefault("port", 0)
        options.setdefault("path", "/cam")
        self.options: dict[str, object] = options
        self.url: str = ""
        self.port: int = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> RtspCamera:
        if self._process is not None:
            raise CameraError("camera already running")
        options = dict(self.options)
        if self.port:
            options["port"] = self.port  # restart(): keep the port the tests know
        # stderr goes to a file, not a pipe: nobody drains it while the camera runs.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(CAMERA_SCRIPT), "--exit-on-stdin-eof", *camera_argv(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # a ^C in the terminal is for pytest, not the camera
        )
        try:
            self.url = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.port = int(self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return self

    def _wait_ready(self, timeout: float) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CameraError(f"camera not READY after {timeout:.0f} s{self._stderr_tail()}")
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                process.wait(timeout=STOP_TIMEOUT)
                raise CameraError(
                    f"camera exited with {process.returncode} before READY{self._stderr_tail()}"
                )
            line += chunk
        text = line.decode().strip()
        if not text.startswith("READY "):
            raise CameraError(f"unexpected camera output {text!r}{self._stderr_tail()}")
        return text.split(" ", 1)[1]

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read()[-4000:].decode(errors="replace").strip()
        return f"; camera stderr:\n{text}" if text else "; camera stderr is empty"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within STOP_TIMEOUT; always reaped."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, STOP_TIMEOUT)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def restart(self, timeout: float = READY_TIMEOUT) -> RtspCamera:
        """Stop and start again on the same port with the same options."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    # -- addresses ------------------------------------------------------------------------

    def url_with(self, user: str, password: str) -> str:
        """The URL with credentials in it (percent-encoded, as RTSP URLs need)."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> RtspCamera:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RtspCamera({self.url or 'not started'}, {self.options})"


# The rtsp_camera fixture (tests/conftest.py): options in, a started camera out.
CameraFactory = Callable[..., RtspCamera]


@dataclass
class Capture:
    """What an RTSP reader (PyAV) saw of a camera: stream facts and raw packets."""

    codec: str
    width: int
    height: int
    extradata: bytes
    packets: list[bytes] = field(default_factory=list)
    keyframes: list[bool] = field(default_factory=list)
    pts: list[int | None] = field(default_factory=list)
    dts: list[int | None] = field(default_factory=list)


def read_packets(
    url: str,
    count: int,
    transport: str = "tcp",
    timeout: float = 5.0,
    streaming: threading.Event | None = None,
) -> Capture:
    """Demux `count` video packets (access units, FFmpeg's parser on) from an RTSP URL.

    Stops early at the end of the stream. `streaming` is set once the first packet is in.

    probesize=32 skips FFmpeg's second-long probing: SDP and SPS give all it needs.
    """
    import av  # the project's Python has it; /usr/bin/python3 need not

    micros = str(int(timeout * 1_000_000))
    options = {"rtsp_transport": transport, "timeout": micros, "probesize": "32"}
    with av.open(url, options=options, timeout=(timeout, timeout)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        capture = Capture(
            codec=context.name,
            width=context.width,
            height=context.height,
            extradata=bytes(context.extradata or b""),
        )
        for packet in container.demux(stream):
            if packet.size == 0:
                break  # end of stream: the camera went away
            capture.packets.append(bytes(packet))
            capture.keyframes.append(bool(packet.is_keyframe))
            capture.pts.append(packet.pts)
            capture.dts.append(packet.dts)
            if streaming is not None:
                streaming.set()
            if len(capture.packets) >= count:
                break
    return capture
