"""Recorded files (mp4, mkv, raw .h264/.h265), looped forever and paced in real time,
so a file behaves like a live camera for demos and tests."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cxrelay.sources.base import Source, SourceError, StreamInfo, now_us
from cxrelay.sources.pyav import (
    annexb_packets,
    describe,
    open_input,
    stream_codec,
    to_us,
    video_stream,
    whole_pictures,
)

DEFAULT_FPS = 25


def file_path(url: str) -> Path:
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)


class FileSource(Source):
    kind = "file"

    def describe_error(self, exc: BaseException) -> str:
        return describe(exc)

    def session(self) -> None:
        path = file_path(self.camera.url)
        if not path.is_file():
            raise SourceError(f"no such file: {path}")
        offset_us = 0  # timestamps keep rising across loops, like a live camera's
        started = time.monotonic()
        first = True
        while not self.stopping:
            end_us = self._play_once(path, offset_us, started, announce=first)
            first = False
            if end_us <= offset_us:
                raise SourceError(f"{path.name}: no video frames")
            offset_us = end_us

    def _play_once(self, path: Path, offset_us: int, started: float, announce: bool) -> int:
        container = open_input(str(path), options={}, open_timeout=5, read_timeout=5)
        try:
            stream = video_stream(container)
            if announce:
                self.connected(StreamInfo(
                    extradata=b"",  # the bitstream filter puts the parameter sets in-band
                    transport=None,
                    whole_units=True,
                    codec=stream_codec(stream),
                    whole_pictures=whole_pictures(stream),
                ))
            rate = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
            frame_us = int(1_000_000 / float(rate))
            time_base = stream.time_base
            first_pts: int | None = None
            next_us = offset_us
            try:
                for index, packet in enumerate(annexb_packets(container, stream)):
                    if self.stopping:
                        break
                    pts = packet.pts
                    if pts is None or time_base is None:
                        rel_us = index * frame_us  # raw .h264 has no timestamps
                    else:
                        first_pts = pts if first_pts is None else first_pts
                        rel_us = to_us(pts - first_pts, time_base)
                    # Pace on decode order: a packet leaves when a live camera would send it.
                    dts = packet.dts if packet.dts is not None else pts
                    send_rel = (to_us(dts - first_pts, time_base) if dts is not None and
                                first_pts is not None else rel_us)
                    self._wait_until(started, offset_us + max(send_rel, 0))
                    self.packet(bytes(packet), offset_us + rel_us, now_us())
                    next_us = max(next_us, offset_us + rel_us + frame_us)
            except SourceError:
                raise
            except Exception as exc:
                raise SourceError(describe(exc)) from None
            return next_us
        finally:
            container.close()

    def _wait_until(self, started: float, at_us: int) -> None:
        delay = started + at_us / 1e6 - time.monotonic()
        if delay > 0:
            self.sleep(delay)
