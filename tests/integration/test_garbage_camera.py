"""A real camera that sends garbage (tests/camera/garbage_rtsp.py: proper RTSP, then RTP
packets of random bytes over TCP): its viewers and the operator get one clear line
saying so, and another camera's viewers see nothing of it. The mocked version of this,
hub by hub, is tests/unit/test_hostile_camera.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from structlog.testing import capture_logs

from cxrelay.config import CameraConfig
from cxrelay.protocol import FLAG_DISCONTINUITY, Frame
from tests.camera.garbage_rtsp import GarbageCamera
from tests.support import api_camera, is_frame, make_config, running_relay, viewer, wait_for

READ_TIMEOUT = 2.0  # the junk camera's: how long it may go without a picture


async def test_garbage_camera_gets_a_clear_error_and_touches_no_other_camera() -> None:
    async with GarbageCamera(seed=7) as junk:
        cameras = [CameraConfig("junk", junk.url, read_timeout=READ_TIMEOUT, open_timeout=5),
                   CameraConfig("demo", "demo://?size=160x90&fps=10")]
        with capture_logs() as logs:
            async with running_relay(make_config(cameras)) as relay:
                port = relay.server.port
                async with viewer(port, "demo") as good, viewer(port, "junk") as bad:
                    await good.until(is_frame)  # init, status live, then frames
                    seen: list[Any] = []

                    async def offline() -> bool:
                        while True:  # the good viewer keeps reading meanwhile
                            try:
                                seen.append(await good.recv(timeout=0.05))
                            except TimeoutError:
                                break
                        return (await api_camera(port, "junk"))["state"] == "offline"

                    started = time.monotonic()
                    await wait_for(offline, timeout=60)
                    seconds = time.monotonic() - started
                    told = await bad.until(
                        lambda m: isinstance(m, dict) and m.get("state") == "offline")
                    junk_info = await api_camera(port, "junk")

    assert junk.sessions >= 1 and junk.packets_sent > 20, "the garbage really went out"

    # One clear line for the operator: in the API, to the junk camera's viewers, in the log.
    reason = junk_info["last_error"]
    assert reason and "\n" not in reason and len(reason) < 200, reason
    assert "picture" in reason, reason
    assert told[-1]["reason"] == reason
    assert not any(isinstance(m, Frame) for m in told), "no garbage reaches a viewer"
    failures = [e for e in logs if e.get("camera") == "junk" and e["log_level"] != "debug"
                and e["event"] not in ("camera connected", "camera reconnected",
                                       "viewer joined", "viewer left")]
    assert [e["event"] for e in failures][:1] == ["camera failed"], failures
    assert failures[0]["reason"] == reason
    assert not any("exc_info" in e or "exception" in e for e in logs)

    # The other camera's viewer saw nothing of it: only frames, in order, no gap marked,
    # and they kept coming (counted with a wide margin, not timed).
    assert seen and all(isinstance(m, Frame) for m in seen), \
        [m for m in seen if not isinstance(m, Frame)]
    frames = [m for m in seen if isinstance(m, Frame)]
    assert not any(f.flags & FLAG_DISCONTINUITY for f in frames)
    pts = [f.pts_us for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert len(frames) >= 10 * seconds / 4, (len(frames), seconds)  # 10 fps, a quarter kept


async def test_garbage_camera_fails_again_after_reconnecting() -> None:
    """The error is not a one-off: the relay keeps retrying (with backoff) and keeps
    saying the same thing, once, not on every retry."""
    async with GarbageCamera(seed=8) as junk:
        camera = CameraConfig("junk", junk.url, read_timeout=READ_TIMEOUT, open_timeout=5)
        with capture_logs() as logs:
            async with running_relay(make_config([camera])) as relay:
                port = relay.server.port

                async def retried() -> bool:
                    return junk.sessions >= 2 and \
                        (await api_camera(port, "junk"))["state"] == "offline"

                await wait_for(retried, timeout=60)
                await asyncio.sleep(0)
    warnings = [e for e in logs if e["event"] == "camera failed"]
    assert len(warnings) == 1, warnings
