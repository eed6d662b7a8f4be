"""The built-in demo camera: a moving test pattern with a clock, encoded
in-process by libx264, so `cxrelay serve --demo` shows video with no camera.

Options ride on the URL: ``demo://?size=640x360&fps=25&gop=2`` (gop in seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import parse_qs, urlsplit

import av
from av.video.frame import PictureType

from cxrelay.sources.base import Source, SourceError, StreamInfo, now_us


@dataclass(frozen=True, slots=True)
class DemoSettings:
    width: int = 640
    height: int = 360
    fps: int = 25
    gop_seconds: float = 2.0

    @classmethod
    def from_url(cls, url: str) -> DemoSettings:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        try:
            width, height = (int(x) for x in query.get("size", "640x360").split("x"))
            settings = cls(width, height, int(query.get("fps", 25)),
                           float(query.get("gop", 2.0)))
        except ValueError:
            raise SourceError("demo:// options: size=WxH, fps=N, gop=SECONDS") from None
        if not (16 <= width <= 3840 and 16 <= height <= 2160 and 1 <= settings.fps <= 60
                and 0.04 <= settings.gop_seconds <= 60):
            raise SourceError("demo:// options out of range")
        return settings


class DemoSource(Source):
    kind = "demo"

    def session(self) -> None:
        s = DemoSettings.from_url(self.camera.url)
        pattern = av.open(
            f"testsrc2=size={s.width}x{s.height}:rate={s.fps}", format="lavfi"
        )
        encoder = av.VideoCodecContext.create("libx264", "w")
        encoder.width, encoder.height = s.width, s.height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = Fraction(1, s.fps)
        encoder.framerate = Fraction(s.fps, 1)
        keyint = max(1, round(s.gop_seconds * s.fps))
        encoder.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        encoder.bit_rate = 1_500_000
        try:
            # libx264 hands out one picture a packet.
            self.connected(StreamInfo(extradata=b"", transport=None, whole_units=True,
                                      whole_pictures=True))
            self._run_encoder(pattern, encoder, s)
        finally:
            pattern.close()

    def _run_encoder(self, pattern: av.container.InputContainer,
                     encoder: av.VideoCodecContext, s: DemoSettings) -> None:
        frame_us = 1_000_000 // s.fps
        started = time.monotonic()
        for index, frame in enumerate(pattern.decode(video=0)):
            if self.stopping:
                return
            # Real time: a live camera can't send frames before they happen.
            delay = started + index / s.fps - time.monotonic()
            if delay > 0 and self.sleep(delay):
                return
            frame.pts = index
            # lavfi marks every frame as I; x264 would obey and make them all IDR.
            frame.pict_type = PictureType.NONE
            frame.time_base = encoder.time_base
            for packet in encoder.encode(frame):
                pts = packet.pts if packet.pts is not None else index
                self.packet(bytes(packet), pts * frame_us, now_us())
