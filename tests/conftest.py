"""Fixtures for every tier: live RTSP cameras (the GStreamer test camera, tests/camera)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.camera.harness import CameraFactory, RtspCamera


@pytest.fixture
def rtsp_camera() -> Iterator[CameraFactory]:
    """Start cameras on demand: ``cam = rtsp_camera(stamp=True, slices=2)``.

    Keyword options are rtsp_camera.py's CLI options (``params="sdp"``, ``user=...``).
    The camera is started (READY) when returned; all of them stop at teardown.
    """
    cameras: list[RtspCamera] = []

    def start(**options: object) -> RtspCamera:
        camera = RtspCamera(**options)
        cameras.append(camera)
        return camera.start()

    yield start
    for camera in cameras:
        camera.stop()


@pytest.fixture(scope="session")
def shared_camera() -> Iterator[RtspCamera]:
    """One stamped camera with default options for the session: for tests that only need
    a live camera. Don't stop, restart or otherwise disturb it."""
    with RtspCamera(stamp=True) as camera:
        yield camera
