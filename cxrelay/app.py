"""The daemon's lifecycle, in a straight line: startup() → serve() → shutdown().

Signals only set flags here; the work they ask for (stop, reload) happens in
serve()'s loop, one thing at a time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from cxrelay import __version__
from cxrelay.config import Config, ConfigError
from cxrelay.hub import CameraHub
from cxrelay.logs import add_secrets
from cxrelay.metrics import Metrics
from cxrelay.protocol import CLOSE_GOING_AWAY, CameraState
from cxrelay.redact import url_secrets
from cxrelay.sdnotify import Notifier, status_line, watchdog_loop
from cxrelay.server import RelayServer

log = structlog.get_logger("cxrelay")

SHUTDOWN_GRACE = 3.0  # seconds for viewers to close and sources to stop; SIGTERM exits < 5 s
STATUS_EVERY = 5.0  # seconds between systemd STATUS= updates
# Hosts a browser on this machine reaches as localhost, a secure context where WebCodecs works.
LOCAL_HOSTS = ("127.0.0.1", "0.0.0.0", "localhost")


class Relay:
    def __init__(self, config: Config, reload_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.metrics = Metrics()
        self.hubs: dict[str, CameraHub] = {}
        self.server: RelayServer | None = None
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.notifier = Notifier()
        self._tasks: list[asyncio.Task[None]] = []

    # --- the three phases -----------------------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        for camera in self.config.cameras:
            self._add_hub(camera, loop)
        self.server = RelayServer(self.config, self.hubs, self.metrics, self.status)
        await self.server.start()
        for hub in self.hubs.values():
            hub.start()
        cfg = self.config.server
        scheme = "https" if cfg.tls_cert else "http"
        url = f"{scheme}://{cfg.host}:{self.server.port}/"
        local = url.replace(cfg.host, "localhost", 1) if cfg.host in LOCAL_HOSTS else url
        log.info("listening", url=url, cameras=len(self.hubs), version=__version__,
                 hint=f"open {local} in a browser")
        if not self.hubs:
            log.warning("no cameras configured", hint="use --camera NAME=URL, --demo or --config")
        self.notifier.ready(self.status_line())
        if (interval := self.notifier.watchdog_interval()) is not None:
            # Fed from the loop itself: a stuck loop stops the pings and systemd restarts us.
            self._tasks.append(loop.create_task(watchdog_loop(self.notifier, interval)))
        if self.notifier.enabled:
            self._tasks.append(loop.create_task(self._report_status()))

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

    async def serve(self) -> None:
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
        if self.server is not None:
            self.server.close()  # stop accepting; viewers get 1001
        await asyncio.gather(
            *(hub.close(CLOSE_GOING_AWAY, "server shutting down") for hub in self.hubs.values())
        )
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), SHUTDOWN_GRACE)
            except TimeoutError:
                log.warning("viewers did not close in time")
        log.info("stopped")

    # --- requests from signals ------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    # --- cameras --------------------------------------------------------------------------------

    def _add_hub(self, camera: Any, loop: asyncio.AbstractEventLoop) -> CameraHub:
        hub = CameraHub(camera, metrics=self.metrics, loop=loop,
                        limits=self.config.server.viewer_backlog)
        self.hubs[camera.name] = hub
        return hub

    async def reload(self) -> None:
        """Apply a new configuration: cameras added, removed and changed; the
        untouched ones (and their viewers) see nothing at all. A config with
        an error is rejected whole."""
        if self.reload_config is None:
            log.info("reload requested, but there is no config file to reread")
            return
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config", error=str(exc))
            return
        loop = asyncio.get_running_loop()
        old = {c.name: c for c in self.config.cameras}
        fresh = {c.name: c for c in new.cameras}
        removed = [name for name in old if name not in fresh]
        added = [name for name in fresh if name not in old]
        changed = [name for name in fresh if name in old and fresh[name] != old[name]]
        old_server = self.config.server
        # The listener itself can't change under running viewers; everything
        # else (origins, limits, backlog bounds, the secret) applies at once.
        fixed = ("host", "port", "tls_cert", "tls_key", "handshake_timeout", "max_message_size",
                 "ping_interval", "ping_timeout")
        server = replace(new.server, **{k: getattr(old_server, k) for k in fixed})
        if any(getattr(new.server, k) != getattr(old_server, k) for k in fixed):
            log.warning("listener settings changed: restart cxrelay to apply them",
                        keys=[k for k in fixed if getattr(new.server, k) != getattr(old_server, k)])
        add_secrets(s for c in new.cameras for s in url_secrets(c.url))
        if new.auth.secret:
            add_secrets([new.auth.secret])
        self.config = Config(server=server, cameras=new.cameras, auth=new.auth,
                             log=self.config.log, path=new.path)
        if self.server is not None:
            self.server.apply(self.config)
        for hub in self.hubs.values():
            hub.limits = server.viewer_backlog
        for name in removed:
            hub = self.hubs.pop(name)
            await hub.close(CLOSE_GOING_AWAY, "camera removed from the configuration")
        for name in changed:
            self.hubs[name].reconfigure(fresh[name])
        for name in added:
            self._add_hub(fresh[name], loop).start()
        log.info("reloaded", added=added, removed=removed, changed=changed,
                 unchanged=len(fresh) - len(added) - len(changed))

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime": round(time.monotonic() - self.started, 1),
            "cameras": len(self.hubs),
            "live": sum(1 for h in self.hubs.values() if h.state == CameraState.LIVE),
            "viewers": sum(len(h.viewers) for h in self.hubs.values()),
        }


async def run_relay(config: Config, reload_config: Callable[[], Config] | None = None) -> None:
    relay = Relay(config, reload_config)
    relay.install_signal_handlers()
    try:
        await relay.startup()
        await relay.serve()
    finally:
        await relay.shutdown()
