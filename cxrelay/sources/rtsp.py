"""RTSP cameras, demuxed by PyAV (FFmpeg) and never decoded.

By default FFmpeg's H.264/H.265 parser is switched off (``fflags=+noparse``): it
holds every access unit until the next one begins, a whole frame of latency,
and can cut a multi-slice picture in two. Packets then come one NAL unit (or
STAP-A/AP group, or FU-A/FU fragment) at a time and cxrelay assembles access
units itself.
"""

from __future__ import annotations

from typing import Any

import av.error

from cxrelay.sources.base import Source, SourceError, StreamInfo, now_us
from cxrelay.sources.pyav import describe, open_input, stream_codec, to_us, video_stream


def rtsp_options(transport: str, read_timeout: float, parser: bool) -> dict[str, str]:
    options = {
        "rtsp_transport": transport,
        # Socket timeout in microseconds; the old "stimeout" is silently ignored.
        "timeout": str(int(read_timeout * 1_000_000)),
        "allowed_media_types": "video",
        "fflags": "+nofillin" if parser else "+noparse+nofillin",
        # The SDP is all FFmpeg needs to know the stream; don't sit probing it.
        # (No +nobuffer: it throws away what probing read, and with it the
        # keyframe many cameras send right after PLAY.)
        "probesize": "32",
        "analyzeduration": "0",
    }
    if transport == "udp":
        # Reordering waits this long for a late packet: keep it to a few frames.
        options["max_delay"] = "100000"
        options["reorder_queue_size"] = "64"
    return options


class RtspSource(Source):
    kind = "rtsp"

    def describe_error(self, exc: BaseException) -> str:
        return describe(exc)

    def session(self) -> None:
        camera = self.camera
        parser = camera.assembly == "parser"
        container = open_input(
            camera.url,
            timeout_reason=f"no answer in {camera.open_timeout:g} s",
            options=rtsp_options(camera.transport, camera.read_timeout, parser),
            open_timeout=camera.open_timeout,
            read_timeout=camera.read_timeout,
        )
        try:
            self._read(container, parser)
        finally:
            container.close()  # always in this thread, never from the loop

    def _read(self, container: Any, parser: bool) -> None:
        stream = video_stream(container)
        self.connected(
            StreamInfo(
                extradata=bytes(stream.codec_context.extradata or b""),
                transport=self.camera.transport,
                whole_units=parser,
                codec=stream_codec(stream),
            )
        )
        time_base = stream.time_base
        last_pts = 0
        try:
            for packet in container.demux(stream):
                if self.stopping:
                    return
                if not packet.size:
                    continue
                ingest = now_us()
                pts = packet.pts if packet.pts is not None else packet.dts
                last_pts = to_us(pts, time_base) if pts is not None else last_pts
                self.packet(bytes(packet), last_pts, ingest)
        except SourceError:
            raise
        except (av.error.ExitError, av.error.TimeoutError):
            raise SourceError(f"no video for {self.camera.read_timeout:g} s") from None
        except Exception as exc:
            raise SourceError(describe(exc)) from None
        raise SourceError("end of stream")
