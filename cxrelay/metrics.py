"""Prometheus metrics, through prometheus_client, in a registry of the relay's
own (so two relays in one process, as in tests, never collide)."""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cxrelay.protocol import CameraState

# *_created series double the output and mean nothing to a scraper of a daemon.
disable_created_metrics()

# From well under a frame to "something is badly wrong".
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
# What viewers see, decoding and painting included: tens to hundreds of milliseconds.
GLASS_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Deliveries(Collector):
    """Bytes written to viewers and the relay latency of each frame written:
    counted on the fan-out's hot path as plain numbers (a prometheus_client
    counter or histogram takes a lock per call, several per observation), and
    turned into a counter and a histogram when scraped."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = buckets
        self.sent_bytes = 0
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.latency_sum = 0.0

    def add(self, nbytes: int, ingest_us: int | None, count: int = 1) -> None:
        """``count`` frames of ``nbytes`` each, written now; a frame's latency
        runs from its ingest time (None: not a live frame, no latency)."""
        self.sent_bytes += nbytes * count
        if ingest_us is None:
            return
        latency = max(0.0, time.time() - ingest_us / 1e6)
        self.counts[bisect.bisect_left(self.bounds, latency)] += count
        self.latency_sum += latency * count

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily("cxrelay_sent_bytes", "Bytes written to viewers")
        sent.add_metric([], self.sent_bytes)
        yield sent
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        latency = HistogramMetricFamily("cxrelay_relay_latency_seconds",
                                        "From ingest to written on the viewer's socket")
        latency.add_metric([], buckets, self.latency_sum)
        yield latency


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        cam = ["camera", "stream"]  # a camera's streams: "main", and "sub" if it has one
        self.camera_state = Gauge("cxrelay_camera_state", "1 for the stream's current state",
                                  ["camera", "stream", "state"], registry=r)
        self.reconnects = Counter("cxrelay_camera_reconnects", "Camera reconnections", cam,
                                  registry=r)
        self.frames_in = Counter("cxrelay_camera_frames", "Access units ingested", cam,
                                 registry=r)
        self.bytes_in = Counter("cxrelay_camera_bytes", "H.264 bytes ingested", cam, registry=r)
        self.keyframe_interval = Gauge("cxrelay_camera_keyframe_interval_seconds",
                                       "Time between the last two keyframes", cam, registry=r)
        self.camera_viewers = Gauge("cxrelay_camera_viewers", "Viewers of the stream", cam,
                                    registry=r)
        self.glass_latency = Histogram(
            "cxrelay_glass_latency_seconds",
            "From ingest to painted on a viewer's screen, as players report it",
            cam, buckets=GLASS_BUCKETS, registry=r)
        self.player_dropped = Counter("cxrelay_player_frames_dropped",
                                      "Frames players skipped rather than fall behind, "
                                      "as they report it", cam, registry=r)
        self.viewers = Gauge("cxrelay_viewers", "Viewers connected", registry=r)
        self.frames_dropped = Counter("cxrelay_frames_dropped", "Frames not delivered, by reason",
                                      ["reason"], registry=r)
        self.deliveries = Deliveries()
        r.register(self.deliveries)
        self.delivered = self.deliveries.add
        self.loop_lag = Histogram("cxrelay_loop_lag_seconds",
                                  "How late the event loop ran a timer: the longest "
                                  "stretch anything held the loop",
                                  buckets=LOOP_LAG_BUCKETS, registry=r)
        self.snapshot_decodes = Counter("cxrelay_snapshot_decodes",
                                        "Snapshot decodes (requests that shared one or hit "
                                        "the cache are not counted)", registry=r)
        self.snapshot_decode_seconds = Histogram("cxrelay_snapshot_decode_seconds",
                                                 "Time to decode a snapshot's frames",
                                                 buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag_own = Histogram("cxrelay_loop_lag_own_seconds",
                                      "The part of the loop's lag not spent waiting for a "
                                      "CPU: how long the relay's own work held the loop",
                                      buckets=LOOP_LAG_BUCKETS, registry=r)
        for reason in ("slow_viewer", "relay_busy", "gop_cache_overflow", "partial", "corrupt"):
            self.frames_dropped.labels(reason)

    def _per_stream(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (self.reconnects, self.frames_in, self.bytes_in, self.keyframe_interval,
                self.camera_viewers, self.glass_latency, self.player_dropped)

    def add_stream(self, camera: str, stream: str) -> None:
        for family in self._per_stream():
            family.labels(camera, stream)
        self.set_state(camera, stream, CameraState.IDLE)

    def remove_stream(self, camera: str, stream: str) -> None:
        for family in self._per_stream():
            with contextlib.suppress(KeyError):
                family.remove(camera, stream)
        for state in CameraState:
            with contextlib.suppress(KeyError):
                self.camera_state.remove(camera, stream, state)

    def set_state(self, camera: str, stream: str, state: CameraState) -> None:
        for s in CameraState:
            self.camera_state.labels(camera, stream, s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
