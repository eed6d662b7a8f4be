"""The registry of cameras: one hub per configured camera, by name.

The relay (lifecycle, reload) and the server (routes, admission) share this
one object; it alone adds, removes and closes hubs, and counts across them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

from cxrelay.backlog import BacklogLimits
from cxrelay.config import CameraConfig, ReloadPlan
from cxrelay.hub import CameraHub
from cxrelay.metrics import Metrics
from cxrelay.protocol import CLOSE_GOING_AWAY, CameraState


class Cameras(Mapping[str, CameraHub]):
    def __init__(self, metrics: Metrics, limits: BacklogLimits) -> None:
        self.metrics = metrics
        self.limits = limits  # every viewer's backlog, in every hub
        self._hubs: dict[str, CameraHub] = {}

    def __getitem__(self, name: str) -> CameraHub:
        return self._hubs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hubs)

    def __len__(self) -> int:
        return len(self._hubs)

    # --- totals ---------------------------------------------------------------------------------

    @property
    def viewers(self) -> int:
        return sum(len(hub.viewers) for hub in self._hubs.values())

    @property
    def live(self) -> int:
        return sum(1 for hub in self._hubs.values() if hub.state == CameraState.LIVE)

    # --- changes --------------------------------------------------------------------------------

    def add(self, camera: CameraConfig) -> CameraHub:
        """A hub for a new camera; it connects once started."""
        hub = CameraHub(camera, metrics=self.metrics, loop=asyncio.get_running_loop(),
                        limits=self.limits)
        self._hubs[camera.name] = hub
        return hub

    def start(self) -> None:
        for hub in self._hubs.values():
            hub.start()

    async def remove(self, name: str, reason: str) -> None:
        """Stop a camera and close its viewers with 1001 and ``reason``."""
        await self._hubs.pop(name).close(CLOSE_GOING_AWAY, reason)

    def set_limits(self, limits: BacklogLimits) -> None:
        """New backlog bounds, for viewers that join from now on."""
        self.limits = limits
        for hub in self._hubs.values():
            hub.limits = limits

    async def apply(self, plan: ReloadPlan) -> None:
        """Carry out a reload: the cameras it leaves unchanged see nothing."""
        self.set_limits(plan.config.server.viewer_backlog)
        for name in plan.remove:
            await self.remove(name, "camera removed from the configuration")
        for camera in plan.restart:
            self._hubs[camera.name].reconfigure(camera)
        for camera in plan.add:
            self.add(camera).start()

    async def close(self, reason: str) -> None:
        """Stop every camera and close every viewer with 1001 (shutting down)."""
        await asyncio.gather(*(hub.close(CLOSE_GOING_AWAY, reason)
                               for hub in self._hubs.values()))
