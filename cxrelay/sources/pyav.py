"""Shared PyAV plumbing: opening with timeouts, turning errors into operator
reasons, and reading an H.264 or H.265 stream's packets as Annex B."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import av.error

from cxrelay.sources.base import SourceError

_REASONS: list[tuple[type[BaseException], str]] = [
    (av.error.HTTPUnauthorizedError, "401 Unauthorized: check the camera's user name and password"),
    (av.error.HTTPForbiddenError, "403 Forbidden"),
    (av.error.HTTPNotFoundError, "404 Not Found: check the stream path"),
    (av.error.ExitError, "timed out"),
    (av.error.EOFError, "end of stream"),
]


def describe(exc: BaseException) -> str:
    """A one-line reason without the URL (FFmpeg errors carry it, credentials
    included, as their filename)."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, av.error.FFmpegError | OSError):
        return (exc.strerror or type(exc).__name__).strip()
    return type(exc).__name__


def to_us(value: int, time_base: Fraction) -> int:
    return value * time_base.numerator * 1_000_000 // time_base.denominator


def open_input(
    url: str, *, options: dict[str, str], open_timeout: float, read_timeout: float,
    timeout_reason: str = "timed out", **kw: Any
) -> Any:
    try:
        return av.open(url, options=options, timeout=(open_timeout, read_timeout), **kw)
    except (av.error.ExitError, av.error.TimeoutError):
        raise SourceError(timeout_reason) from None
    except Exception as exc:
        raise SourceError(describe(exc)) from None


# FFmpeg's codec name -> cxrelay's (``StreamInfo.codec``). Relayed as they are:
# cxrelay never decodes or re-encodes.
CODECS = {"h264": "h264", "hevc": "h265"}
_TO_ANNEXB = {"h264": "h264_mp4toannexb", "h265": "hevc_mp4toannexb"}


def video_stream(container: Any) -> Any:
    if not container.streams.video:
        raise SourceError("no video stream")
    stream = container.streams.video[0]
    name = stream.codec_context.name
    if name not in CODECS:
        raise SourceError(f"codec {name} is not supported (cxrelay relays H.264 and H.265)")
    return stream


def stream_codec(stream: Any) -> str:
    """cxrelay's name for the codec of a stream ``video_stream`` accepted."""
    return CODECS[stream.codec_context.name]


def whole_pictures(stream: Any) -> bool:
    """Does every packet of this stream hold exactly one picture? Yes when it is
    stored length-prefixed (MP4/MKV: avcC, hvcC), one sample a picture; a raw
    Annex B stream or MPEG-TS goes through FFmpeg's parser, which can cut one."""
    return (stream.codec_context.extradata or b"")[:1] == b"\x01"


def annexb_packets(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's packets in Annex B: MP4/MKV carry length-prefixed NAL units
    with the parameter sets in extradata (avcC, hvcC), which the browser's
    Annex B decoder can't take."""
    extradata = stream.codec_context.extradata or b""
    if extradata[:1] != b"\x01":
        for packet in container.demux(stream):
            if packet.size:
                yield packet
        return
    import av.bitstream

    bsf = av.bitstream.BitStreamFilterContext(_TO_ANNEXB[stream_codec(stream)], stream)
    for packet in container.demux(stream):
        if packet.size:
            yield from bsf.filter(packet)
    yield from bsf.filter(None)
