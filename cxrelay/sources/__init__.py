"""Where video comes from: RTSP cameras, recorded files, the demo pattern."""

from __future__ import annotations

import asyncio

from cxrelay.config import CameraConfig
from cxrelay.sources.base import Source, SourceError, SourceSink, StreamInfo

__all__ = ["Source", "SourceError", "SourceSink", "StreamInfo", "create_source"]


def create_source(
    camera: CameraConfig, sink: SourceSink, loop: asyncio.AbstractEventLoop
) -> Source:
    scheme = camera.url.split("://", 1)[0].lower() if "://" in camera.url else "file"
    if scheme in ("rtsp", "rtsps"):
        from cxrelay.sources.rtsp import RtspSource

        return RtspSource(camera, sink, loop)
    if scheme == "demo":
        from cxrelay.sources.demo import DemoSource

        return DemoSource(camera, sink, loop)
    from cxrelay.sources.file import FileSource

    return FileSource(camera, sink, loop)
