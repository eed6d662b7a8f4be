"""systemd's sd_notify protocol with the standard library only.

The protocol is a datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
Outside systemd the variable is unset and every call is a cheap no-op, so the
daemon can call these unconditionally.

Wiring (see docs/operations.md): ``ready()`` once listening, ``status()`` when
the camera or viewer counts change, ``reloading()`` / ``ready()`` around a
SIGHUP reload, ``stopping()`` on shutdown, and ``watchdog_loop()`` as a task
on the event loop when ``watchdog_interval()`` is not None.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "status_line", "watchdog_loop"]


class Notifier:
    """Sends sd_notify messages; never raises, returns whether a message went out."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False if unset or it failed."""
        if self.address is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError:
            # systemd gone, socket full, permission changed: the service must
            # keep running whatever happens to its supervisor's mailbox.
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def reloading(self, status: str | None = None) -> bool:
        # Type=notify-reload (systemd >= 253) matches RELOADING=1 to the reload
        # it asked for by this timestamp; older versions ignore the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """systemd's WatchdogSec= in seconds, or None when there is no watchdog
        for this process (unset, zero, malformed, or meant for another PID)."""
        if self.address is None:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL instead of the '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not for a service like this one


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    # One line: a newline would start another KEY=VALUE assignment.
    return ("STATUS=" + " ".join(text.split()),)


async def watchdog_loop(notifier: Notifier, interval: float) -> None:
    """Ping the watchdog every ``interval / 2`` seconds until cancelled.

    It runs on the event loop on purpose: if the loop wedges, the pings stop
    and systemd restarts the service, which is the point of the watchdog.
    """
    period = interval / 2
    while True:
        notifier.watchdog()
        await asyncio.sleep(period)


def status_line(cameras_live: int, cameras_total: int, viewers: int) -> str:
    """The one-line STATUS= shown by ``systemctl status``."""
    noun = "viewer" if viewers == 1 else "viewers"
    cams = "camera" if cameras_total == 1 else "cameras"
    return f"{cameras_live}/{cameras_total} {cams} live, {viewers} {noun}"
