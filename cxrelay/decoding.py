"""Access units in, pictures out, with PyAV: for Python clients and snapshots.

Decoding costs CPU that the live path never pays: callers run it on demand, in
a worker thread, never on the event loop. A Decoder belongs to one thread at a
time.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import av
from av.video.frame import VideoFrame

# RFC 6381 codec prefixes (the `codec` of a protocol init) -> FFmpeg decoders.
DECODERS = {"avc1": "h264", "avc3": "h264", "hvc1": "hevc", "hev1": "hevc"}
MICROSECONDS = Fraction(1, 1_000_000)
MAX_REMEMBERED = 256  # pts -> caller's tag, for pictures the decoder still holds back


def decoder_name(codec: str) -> str:
    """The FFmpeg decoder for an RFC 6381 codec string; ValueError if there is none."""
    name = DECODERS.get(codec.split(".", 1)[0].lower())
    if name is None:
        raise ValueError(f"no decoder for codec {codec[:40]!r}")
    return name


class Decoder:
    """One video decoder. Feed it access units in decode order (the first a
    keyframe); it gives back the newest picture and the tag of its unit.

    Slice threading, not frame threading: frame threads hold every picture back
    by a frame per thread, and callers here want the newest picture now.
    """

    def __init__(self, codec: str, threads: int = 0) -> None:
        """``threads``: FFmpeg's slice threads, 0 for one per core; 1 keeps a
        decode on the caller's thread, for callers that bound CPU themselves."""
        self.codec = codec
        context = av.CodecContext.create(decoder_name(codec), "r")
        assert isinstance(context, av.VideoCodecContext)
        context.thread_type = "SLICE"
        context.thread_count = threads
        self._context = context
        self._tags: dict[int, object] = {}

    def decode(self, units: Iterable[tuple[bytes, int, object]]
               ) -> tuple[VideoFrame, object] | None:
        """Decode (Annex B data, pts in µs, tag) units; the last picture that came
        out, with the tag of the unit it was coded in, or None if none did yet
        (B-frames keep pictures back). Raises av.FFmpegError on bad data."""
        last: VideoFrame | None = None
        for data, pts, tag in units:
            if len(self._tags) >= MAX_REMEMBERED:  # only if the decoder swallowed units
                self._tags.clear()
            self._tags[pts] = tag
            packet = av.Packet(data)
            packet.pts = pts
            packet.time_base = MICROSECONDS
            for picture in self._context.decode(packet):
                last = picture
        return self._tagged(last)

    def drain(self) -> tuple[VideoFrame, object] | None:
        """The pictures a reordering decoder still holds: the last one, tagged.
        The decoder is done after this; make a new one to go on."""
        last: VideoFrame | None = None
        for picture in self._context.decode(None):
            last = picture
        return self._tagged(last)

    def _tagged(self, last: VideoFrame | None) -> tuple[VideoFrame, object] | None:
        if last is None:
            return None
        tag = self._tags.get(last.pts) if last.pts is not None else None
        for pts in [p for p in self._tags if last.pts is not None and p <= last.pts]:
            del self._tags[pts]
        return last, tag


def fit(width: int, height: int, want_width: int | None, want_height: int | None
        ) -> tuple[int, int]:
    """The output size for a picture of width x height asked to be want_width
    and/or want_height: the missing one keeps the aspect ratio; even numbers,
    which every pixel format accepts."""
    if want_width and want_height:
        w, h = want_width, want_height
    elif want_width:
        w, h = want_width, round(height * want_width / width)
    elif want_height:
        w, h = round(width * want_height / height), want_height
    else:
        return width, height
    return max(2, w - w % 2), max(2, h - h % 2)


def convert(picture: VideoFrame, format: str, width: int | None = None,
            height: int | None = None) -> VideoFrame:
    """The picture in another pixel format and/or size (a new frame)."""
    w, h = fit(picture.width, picture.height, width, height)
    if (w, h) == (picture.width, picture.height) and picture.format.name == format:
        return picture
    return picture.reformat(width=w, height=h, format=format)


def packed_bytes(picture: VideoFrame) -> bytes:
    """The picture's pixels, plane after plane, row after row, without the
    padding FFmpeg puts at the end of each row."""
    fmt = picture.format
    out = bytearray()
    for index, plane in enumerate(picture.planes):
        if fmt.is_planar:
            bits = sum(c.bits for c in fmt.components if c.plane == index)
        else:
            bits = fmt.bits_per_pixel
        row = (plane.width * bits + 7) // 8
        data = memoryview(plane)
        if plane.line_size == row:
            out += data[: row * plane.height]
        else:
            for y in range(plane.height):
                start = y * plane.line_size
                out += data[start : start + row]
    return bytes(out)


JPEG_QUALITY = 4  # FFmpeg's scale, 2 (best) to 31: 1080p comes to about 100 KB


def encode_jpeg(picture: VideoFrame, width: int | None = None, quality: int = JPEG_QUALITY
                ) -> bytes:
    """The picture as a baseline JPEG, scaled to ``width`` (aspect ratio kept)."""
    image = convert(picture, "yuvj420p", width)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = image.width, image.height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin = encoder.qmax = quality
    encoder.thread_count = 1
    return b"".join(bytes(p) for p in [*encoder.encode(image), *encoder.encode(None)])


def decode_jpeg(data: bytes) -> VideoFrame:
    """A JPEG back into a picture (to scale a kept one); av.FFmpegError if it isn't one."""
    decoder = av.CodecContext.create("mjpeg", "r")
    assert isinstance(decoder, av.VideoCodecContext)
    pictures = [*decoder.decode(av.Packet(data)), *decoder.decode(None)]
    if not pictures:
        raise av.error.InvalidDataError(0, "no picture in the JPEG")
    return pictures[-1]
