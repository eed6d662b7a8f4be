"""The relay's lifecycle, in a straight line: startup() → main_loop() → shutdown(),
which serve() runs in that order (uvicorn's ``Server(config).serve()`` shape),
so an asyncio application can run a relay in its own loop (docs/api.md).

Signals only set flags here; the work they ask for (stop, reload) happens in
main_loop(), one thing at a time. Only the command line installs signal
handlers and talks to systemd: an application embedding a relay owns those.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from cxrelay import __version__
from cxrelay.cameras import Cameras
from cxrelay.config import Config, ConfigError, plan_reload, require_cameras
from cxrelay.connection import descriptors_needed
from cxrelay.logs import add_secrets
from cxrelay.looplag import LoopLag
from cxrelay.metrics import Metrics
from cxrelay.sdnotify import Notifier, status_line, watchdog_loop
from cxrelay.server import RelayServer

log = structlog.get_logger("cxrelay")

# SIGTERM to exit: at most SHUTDOWN_GRACE + SHUTDOWN_CUT, whatever the viewers
# and cameras do (promised: within 5 s; systemd's TimeoutStopSec= is 10 s).
SHUTDOWN_GRACE = 2.0  # seconds for viewers' close handshakes and cameras' threads
SHUTDOWN_CLOSE_TIMEOUT = 1.0  # a viewer that has not answered its close frame by then is cut
SHUTDOWN_CUT = 0.5  # seconds, after cutting what remains, for the handlers to return
STATUS_EVERY = 5.0  # seconds between systemd STATUS= updates
# Hosts a browser on this machine reaches as localhost, a secure context where WebCodecs works.
LOCAL_HOSTS = ("127.0.0.1", "0.0.0.0", "localhost")


class Relay:
    """One relay: its cameras, its listening socket and its viewers.

    ``await Relay(config).serve()`` runs it until ``request_stop()``; the
    ``started`` event is set once it listens. ``reload_config``, if given,
    returns the configuration to apply on ``request_reload()``.
    """

    def __init__(self, config: Config, reload_config: Callable[[], Config] | None = None, *,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.metrics = Metrics()
        self.loop_lag = LoopLag(self.metrics.loop_lag, self.metrics.loop_lag_own)
        self.cameras = Cameras(self.metrics, config.server.viewer_backlog)
        self.server: RelayServer | None = None
        self.started = asyncio.Event()
        self._created = time.monotonic()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        # systemd is told about the process's one relay, by the command line.
        self.notifier = notifier or Notifier(env={})
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose, for port 0)."""
        if self.server is None:
            raise RuntimeError("the relay is not started")
        return self.server.port

    async def serve(self) -> None:
        """startup(), main_loop() until request_stop() (or until cancelled),
        then shutdown(), whatever happened."""
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()

    # --- the three phases -----------------------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop_lag.start()
        add_secrets(self.config.secrets())
        for camera in self.config.cameras:
            self.cameras.add(camera)
        self.server = RelayServer(self.config, self.cameras, self.metrics, self.status)
        await self.server.start()
        self.cameras.start()
        cfg = self.config.server
        scheme = "https" if cfg.tls_cert else "http"
        url = f"{scheme}://{cfg.host}:{self.server.port}/"
        local = url.replace(cfg.host, "localhost", 1) if cfg.host in LOCAL_HOSTS else url
        log.info("listening", url=url, cameras=len(self.cameras), version=__version__,
                 descriptor_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                 hint=f"open {local} in a browser")
        if not self.cameras:
            log.warning("no cameras configured", hint="use --camera NAME=URL, --demo or --config")
        self._check_descriptor_limit()
        self.notifier.ready(self.status_line())
        if (interval := self.notifier.watchdog_interval()) is not None:
            # Fed from the loop itself: a stuck loop stops the pings and systemd restarts us.
            self._tasks.append(loop.create_task(watchdog_loop(self.notifier, interval)))
        if self.notifier.enabled:
            self._tasks.append(loop.create_task(self._report_status()))
        self.started.set()

    def _check_descriptor_limit(self) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cfg = self.config.server
        if not cfg.max_viewers or limit == resource.RLIM_INFINITY:
            return
        needed = descriptors_needed(cfg.max_viewers, cfg.max_handshakes, len(self.config.cameras))
        if limit < needed:
            log.warning("the descriptor limit is lower than max_viewers needs: past it, new "
                        "connections are refused", descriptor_limit=limit, needed=needed,
                        hint="raise LimitNOFILE= (systemd) or ulimit -n")

    async def _report_status(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_EVERY)
            if (line := self.status_line()) != last:
                self.notifier.status(line)
                last = line

    def status_line(self) -> str:
        s = self.status()
        return status_line(s["live"], s["cameras"], s["viewers"])

    async def main_loop(self) -> None:
        while True:
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait((stop, reload), return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._stop.is_set():
                return
            self._reload.clear()
            self.notifier.reloading()
            await self.reload()
            self.notifier.ready(self.status_line())

    async def shutdown(self) -> None:
        log.info("shutting down")
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        self.loop_lag.stop()
        started = time.monotonic()
        closing = [self.cameras.close("server shutting down")]
        if self.server is not None:
            # Stop accepting; viewers get 1001 (stalled ones are cut after
            # SHUTDOWN_CLOSE_TIMEOUT). Cameras stop meanwhile, side by side.
            self.server.close(SHUTDOWN_CLOSE_TIMEOUT)
            closing.append(self.server.wait_closed())
        try:
            await asyncio.wait_for(asyncio.gather(*closing), SHUTDOWN_GRACE)
        except TimeoutError:
            log.warning("shutdown grace over: cutting the connections left",
                        seconds=SHUTDOWN_GRACE)
            if self.server is not None:
                self.server.abort()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.server.wait_closed(), SHUTDOWN_CUT)
        log.info("stopped", seconds=round(time.monotonic() - started, 2))

    # --- requests (from signals, or from an application) --------------------------------------

    def request_stop(self) -> None:
        """Ask serve() to shut down and return (safe to call from the loop at any time)."""
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # --- reload ---------------------------------------------------------------------------------

    async def reload(self) -> None:
        """Apply a new configuration: cameras added, removed and changed; the
        untouched ones (and their viewers) see nothing at all. A config with
        an error is rejected whole."""
        if self.reload_config is None:
            log.info("reload requested, but there is no config file to reread")
            return
        try:
            # In a thread: it reads files (and may wait for one being written).
            new = require_cameras(await asyncio.to_thread(self.reload_config))
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config", error=str(exc))
            return
        except Exception as exc:  # an application's reload_config, or a bug: never fatal
            log.error("reload rejected, keeping the running config",
                      error=f"{type(exc).__name__}: {exc}")
            return
        plan = plan_reload(self.config, new)
        if plan.listener_changed:
            log.warning("listener settings changed: restart cxrelay to apply them",
                        keys=list(plan.listener_changed))
        add_secrets(plan.config.secrets())
        self.config = plan.config
        if self.server is not None:
            self.server.apply(self.config)
        await self.cameras.apply(plan)
        log.info("reloaded", added=[c.name for c in plan.add], removed=list(plan.remove),
                 changed=[c.name for c in plan.restart], unchanged=len(plan.unchanged))

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime": round(time.monotonic() - self._created, 1),
            "cameras": len(self.cameras),
            "live": self.cameras.live,
            "viewers": self.cameras.viewers,
        }


async def run_relay(config: Config, reload_config: Callable[[], Config] | None = None) -> None:
    """The command line's relay: the process's signals, and systemd's notifications."""
    relay = Relay(config, reload_config, notifier=Notifier())
    relay.install_signal_handlers()
    await relay.serve()
