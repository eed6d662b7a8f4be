"""Prometheus metrics, through prometheus_client, in a registry of the relay's
own (so two relays in one process, as in tests, never collide)."""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cxrelay.protocol import CameraState

# *_created series double the output and mean nothing to a scraper of a daemon.
disable_created_metrics()

# From well under a frame to "something is badly wrong".
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        cam = ["camera"]
        self.camera_state = Gauge("cxrelay_camera_state", "1 for the camera's current state",
                                  ["camera", "state"], registry=r)
        self.reconnects = Counter("cxrelay_camera_reconnects", "Camera reconnections", cam,
                                  registry=r)
        self.frames_in = Counter("cxrelay_camera_frames", "Access units ingested", cam,
                                 registry=r)
        self.bytes_in = Counter("cxrelay_camera_bytes", "H.264 bytes ingested", cam, registry=r)
        self.keyframe_interval = Gauge("cxrelay_camera_keyframe_interval_seconds",
                                       "Time between the last two keyframes", cam, registry=r)
        self.camera_viewers = Gauge("cxrelay_camera_viewers", "Viewers of the camera", cam,
                                    registry=r)
        self.viewers = Gauge("cxrelay_viewers", "Viewers connected", registry=r)
        self.bytes_sent = Counter("cxrelay_sent_bytes", "Bytes written to viewers", registry=r)
        self.frames_dropped = Counter("cxrelay_frames_dropped", "Frames not delivered, by reason",
                                      ["reason"], registry=r)
        self.latency = Histogram("cxrelay_relay_latency_seconds",
                                 "From ingest to written on the viewer's socket",
                                 buckets=LATENCY_BUCKETS, registry=r)
        for reason in ("slow_viewer", "gop_cache_overflow", "partial", "corrupt"):
            self.frames_dropped.labels(reason)

    def add_camera(self, name: str) -> None:
        for family in (self.reconnects, self.frames_in, self.bytes_in, self.keyframe_interval,
                       self.camera_viewers):
            family.labels(name)
        self.set_state(name, CameraState.IDLE)

    def remove_camera(self, name: str) -> None:
        for family in (self.reconnects, self.frames_in, self.bytes_in, self.keyframe_interval,
                       self.camera_viewers):
            with contextlib.suppress(KeyError):
                family.remove(name)
        for state in CameraState:
            with contextlib.suppress(KeyError):
                self.camera_state.remove(name, state)

    def set_state(self, name: str, state: CameraState) -> None:
        for s in CameraState:
            self.camera_state.labels(name, s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
