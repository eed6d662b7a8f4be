"""Edge-box operations against a real RTSP camera: reload without downtime,
on-demand cameras, metrics (issue 4)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed

from cxrelay.config import CameraConfig, Config, ConfigError
from cxrelay.protocol import Frame
from tests.camera.stamp import find_stamp
from tests.support import (
    aget,
    api_camera,
    http_get,
    is_frame,
    is_init,
    make_config,
    relay_process,
    running_relay,
    tcp_connections_to,
    viewer,
    wait_for,
)

pytestmark = pytest.mark.rtsp


async def frames_of(v: Any, count: int) -> list[Frame | dict[str, Any]]:
    seen: list[Frame | dict[str, Any]] = []
    while sum(isinstance(m, Frame) for m in seen) < count:
        seen.append(await v.recv())
    return seen


async def test_reload_touches_only_what_changed(rtsp_camera) -> None:
    cam = rtsp_camera(stamp=True)
    keep = CameraConfig("keep", cam.url)
    change = CameraConfig("change", cam.url)
    gone = CameraConfig("gone", cam.url)
    configs: list[Config | ConfigError] = []

    def reload_config() -> Config:
        item = configs.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    first = make_config([keep, change, gone])
    async with running_relay(first, reload_config=reload_config) as relay:
        port = relay.server.port
        async with viewer(port, "keep") as k, viewer(port, "change") as c, \
                viewer(port, "gone") as g:
            for v in (k, c, g):
                await v.until(is_frame)
            # A bad config is rejected whole: nothing changes.
            configs.append(ConfigError("cxrelay.toml: camera[1].url: missing"))
            await relay.reload()
            assert set(relay.cameras) == {"keep", "change", "gone"}

            configs.append(replace(first, cameras=(
                keep, replace(change, read_timeout=5.0), CameraConfig("new", cam.url))))
            await relay.reload()
            assert set(relay.cameras) == {"keep", "change", "new"}

            # The removed camera's viewer is closed with a reason.
            with pytest.raises(ConnectionClosed):
                while True:
                    await g.recv(timeout=5)
            assert g.ws.close_code == 1001
            assert "removed" in g.ws.close_reason

            # The changed camera restarts; its viewer stays and gets a new init.
            seen = await c.until(lambda m: isinstance(m, dict) and m["type"] == "init")
            assert seen

            # The untouched camera's viewer saw no interruption at all: every
            # camera frame in order, and no control message.
            seen = await frames_of(k, 50)
            assert all(isinstance(m, Frame) for m in seen)
            counters = [find_stamp(m.payload)[1] for m in seen]  # type: ignore[union-attr]
            assert counters == list(range(counters[0], counters[0] + len(counters)))

            async def new_is_live() -> bool:
                return (await api_camera(port, "new"))["state"] == "live"

            await wait_for(new_is_live)


def test_sighup_rereads_the_config_file(rtsp_camera, tmp_path: Path) -> None:
    cam = rtsp_camera()
    path = tmp_path / "cxrelay.toml"
    path.write_text(f'[[camera]]\nname = "one"\nurl = "{cam.url}"\n')
    with relay_process("--config", str(path)) as proc:
        names = lambda: [c["name"] for c in json.loads(http_get(proc.port, "/api/cameras")[1])]  # noqa: E731
        assert names() == ["one"]
        path.write_text(path.read_text() + f'[[camera]]\nname = "two"\nurl = "{cam.url}"\n')
        reloaded = proc.reload()
        assert reloaded["event"] == "reloaded" and reloaded["added"] == ["two"]
        assert names() == ["one", "two"]
        path.write_text("[[camera]]\nname = 'one'\nurl = 'http://nope'\n")  # invalid
        rejected = proc.reload()
        assert rejected["event"].startswith("reload rejected")
        assert "unsupported scheme 'http'" in rejected["error"]
        assert names() == ["one", "two"]
        code, _, err = proc.stop()
    assert code == 0, err


async def test_on_demand_camera_connects_for_viewers_and_lingers(rtsp_camera) -> None:
    """No timed asserts: the linger is long enough that a loaded machine rejoins within
    it, and the disconnect is bounded below by the linger (load only delays it)."""
    cam = rtsp_camera()
    linger = 10.0
    camera = CameraConfig("od", cam.url, on_demand=True, linger=linger)
    with capture_logs() as logs:
        async with running_relay(make_config([camera])) as relay:
            port = relay.server.port
            # Idle from the start (startup would already have made it 'connecting').
            assert (await api_camera(port, "od"))["state"] == "idle"
            assert tcp_connections_to(cam.port) == 0
            async with viewer(port, "od") as v:
                status = await v.recv_json()
                assert status == {"type": "status", "state": "connecting"}
                await v.until(is_frame)
                assert tcp_connections_to(cam.port) == 1
                left = time.monotonic()  # the viewer leaves after this
            # Back within the linger: still connected, so a picture at once, no new session.
            async with viewer(port, "od") as v:
                assert is_init(await v.recv())
                assert await v.recv_json() == {"type": "status", "state": "live"}
                await v.until(is_frame)
                assert time.monotonic() - left < linger, "rejoined too late to test the linger"
                left = time.monotonic()
            sessions = [e for e in logs if e["event"] in ("camera connected", "camera reconnected")]
            assert len(sessions) == 1, sessions

            async def disconnected() -> bool:
                info = await api_camera(port, "od")
                return info["state"] == "idle" and tcp_connections_to(cam.port) == 0

            await wait_for(disconnected, timeout=linger + 30)
            assert time.monotonic() - left >= linger, "disconnected before the linger was over"


async def test_metrics_parse_with_prometheus_client(rtsp_camera) -> None:
    cam = rtsp_camera()
    async with running_relay(make_config({"cam": cam.url})) as relay:
        port = relay.server.port
        async with viewer(port, "cam") as v:
            for _ in range(3):
                await v.until(is_frame)
            status, body = await aget(port, "/metrics")
        assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = [s for f in families.values() for s in f.samples]
    value = lambda name, **labels: next(  # noqa: E731
        s.value for s in samples if s.name == name and s.labels == labels)
    assert value("cxrelay_camera_state", camera="cam", stream="main", state="live") == 1
    assert value("cxrelay_camera_frames_total", camera="cam", stream="main") > 0
    assert value("cxrelay_camera_bytes_total", camera="cam", stream="main") > 1000
    assert value("cxrelay_camera_viewers", camera="cam", stream="main") == 1
    assert value("cxrelay_viewers") == 1
    assert value("cxrelay_sent_bytes_total") > 0
    assert value("cxrelay_frames_dropped_total", reason="slow_viewer") == 0
    assert value("cxrelay_relay_latency_seconds_count") >= 3
    assert "cxrelay_camera_reconnects" in families
    assert "cxrelay_camera_keyframe_interval_seconds" in families
