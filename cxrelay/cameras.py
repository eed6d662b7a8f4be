"""The registry of cameras: one ``Camera`` per configured camera, by name,
each with one hub per stream (main, and sub if it has one).

The relay (lifecycle, reload) and the server (routes, admission) share this
one object; it alone adds, removes and closes cameras, and counts across them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

from cxrelay.backlog import Backlog, BacklogLimits
from cxrelay.config import CameraConfig, ReloadPlan
from cxrelay.hub import CameraHub, SourceFactory, Subscriber
from cxrelay.metrics import Metrics
from cxrelay.protocol import CLOSE_GOING_AWAY, MAIN, SUB, CameraState
from cxrelay.sources import create_source


class Camera:
    """A configured camera: its main stream and, when it names one, its
    sub-stream, each a hub of its own. The sub-stream is pulled only while
    someone watches it; the main stream as its ``on_demand`` says."""

    def __init__(self, camera: CameraConfig, *, metrics: Metrics,
                 loop: asyncio.AbstractEventLoop, limits: BacklogLimits,
                 source_factory: SourceFactory = create_source) -> None:
        self.camera = camera
        self.metrics = metrics
        self._loop = loop
        self._limits = limits
        self._source_factory = source_factory
        self.main = self._hub(MAIN)
        self.sub = self._hub(SUB) if camera.substream else None

    def _hub(self, stream: str) -> CameraHub:
        return CameraHub(self.camera.stream(stream), metrics=self.metrics, loop=self._loop,
                         limits=self._limits, source_factory=self._source_factory,
                         stream=stream, streams=self.sizes)

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def hubs(self) -> dict[str, CameraHub]:
        return {MAIN: self.main, **({SUB: self.sub} if self.sub is not None else {})}

    def hub(self, stream: str) -> CameraHub:
        """The hub of a stream; a camera without a sub-stream serves its main
        stream for "sub" (a player asking for the small one still gets video)."""
        return self.sub if stream == SUB and self.sub is not None else self.main

    def sizes(self) -> list[dict[str, Any]]:
        return [hub.size() for hub in self.hubs.values()]

    # --- viewers --------------------------------------------------------------------------------

    @property
    def limits(self) -> BacklogLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: BacklogLimits) -> None:
        self._limits = limits
        for hub in self.hubs.values():
            hub.limits = limits

    def new_backlog(self) -> Backlog:
        return self._limits.new_backlog()

    @property
    def viewers(self) -> set[Subscriber]:
        """Every viewer, of every stream."""
        return set().union(*(hub.viewers for hub in self.hubs.values()))

    def attach(self, viewer: Subscriber, stream: str = MAIN, *,
               keyframes: bool = False) -> CameraHub:
        hub = self.hub(stream)
        hub.attach(viewer, keyframes=keyframes)
        return hub

    # --- state ----------------------------------------------------------------------------------

    @property
    def state(self) -> CameraState:
        """The main stream's state (what clients from before sub-streams know)."""
        return self.main.state

    @property
    def live(self) -> bool:
        return any(hub.state == CameraState.LIVE for hub in self.hubs.values())

    def info(self) -> dict[str, Any]:
        """For /api/cameras: the main stream's fields at the top, as before
        sub-streams (viewers counted over all streams), and each stream's."""
        streams = []
        for stream, hub in self.hubs.items():
            info = hub.info()
            del info["name"], info["stream"]
            streams.append({"name": stream, **info})
        top = dict(streams[0], name=self.name, viewers=len(self.viewers))
        return {**top, "streams": streams}

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.main.start()  # a sub-stream waits for its first viewer

    async def reconfigure(self, camera: CameraConfig) -> None:
        """New settings: each stream whose own settings changed restarts (its
        viewers stay); a removed sub-stream closes its viewers with 1001, and
        their players come back to the main stream."""
        old, self.camera = self.camera, camera
        if camera.stream(MAIN) != old.stream(MAIN):
            self.main.reconfigure(camera.stream(MAIN))
        if self.sub is not None and not camera.substream:
            sub, self.sub = self.sub, None
            await sub.close(CLOSE_GOING_AWAY, "sub-stream removed from the configuration")
        elif self.sub is not None:
            if camera.stream(SUB) != old.stream(SUB):
                self.sub.reconfigure(camera.stream(SUB))
        elif camera.substream:
            self.sub = self._hub(SUB)

    async def close(self, code: int, reason: str) -> None:
        await asyncio.gather(*(hub.close(code, reason) for hub in self.hubs.values()))


class Cameras(Mapping[str, Camera]):
    def __init__(self, metrics: Metrics, limits: BacklogLimits,
                 source_factory: SourceFactory = create_source) -> None:
        self.metrics = metrics
        self.limits = limits  # every viewer's backlog, in every hub
        self._source_factory = source_factory
        self._cameras: dict[str, Camera] = {}

    def __getitem__(self, name: str) -> Camera:
        return self._cameras[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cameras)

    def __len__(self) -> int:
        return len(self._cameras)

    # --- totals ---------------------------------------------------------------------------------

    @property
    def viewers(self) -> int:
        return sum(len(camera.viewers) for camera in self._cameras.values())

    @property
    def live(self) -> int:
        """Cameras with a stream live."""
        return sum(1 for camera in self._cameras.values() if camera.live)

    # --- changes --------------------------------------------------------------------------------

    def add(self, camera: CameraConfig) -> Camera:
        """A new camera; it connects once started."""
        added = Camera(camera, metrics=self.metrics, loop=asyncio.get_running_loop(),
                       limits=self.limits, source_factory=self._source_factory)
        self._cameras[camera.name] = added
        return added

    def start(self) -> None:
        for camera in self._cameras.values():
            camera.start()

    async def remove(self, name: str, reason: str) -> None:
        """Stop a camera and close its viewers with 1001 and ``reason``."""
        await self._cameras.pop(name).close(CLOSE_GOING_AWAY, reason)

    def set_limits(self, limits: BacklogLimits) -> None:
        """New backlog bounds, for viewers that join from now on."""
        self.limits = limits
        for camera in self._cameras.values():
            camera.limits = limits

    async def apply(self, plan: ReloadPlan) -> None:
        """Carry out a reload: the cameras it leaves unchanged see nothing."""
        self.set_limits(plan.config.server.viewer_backlog)
        for name in plan.remove:
            await self.remove(name, "camera removed from the configuration")
        for camera in plan.restart:
            await self._cameras[camera.name].reconfigure(camera)
        for camera in plan.add:
            self.add(camera).start()

    async def close(self, reason: str) -> None:
        """Stop every camera and close every viewer with 1001 (shutting down)."""
        await asyncio.gather(*(camera.close(CLOSE_GOING_AWAY, reason)
                               for camera in self._cameras.values()))
