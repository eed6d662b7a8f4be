"""Record the real H.264 bitstreams the unit tests of ``cxrelay.h264`` run on.

    .venv/bin/python tests/data/make_bitstreams.py            # rewrite every file here

Each stream is a raw Annex B file ``NAME.h264`` with a sidecar ``NAME.json``
listing the packets it is made of, in order: ``[pts_us, size, keyframe]``.
For the libx264 encodes a packet is exactly one access unit as the encoder
produced it (the truth the assembler is checked against). ``rtsp_gst`` is
different: its packets are what PyAV returns from a live RTSP session opened
with ``fflags=+noparse+nofillin`` (one RTP payload each, FU-A continuation
fragments without start codes), served by GStreamer's RTSP server from
``x264enc``; it needs Debian's /usr/bin/python3 for the GStreamer bindings.

``extradata_only.mkv`` keeps its SPS/PPS only in the avcC record (Matroska
wants a global header, so libx264 leaves them out of the IDR pictures).

The encodes are deterministic (``threads=1``); the RTSP capture is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tests.support import free_port  # noqa: E402

FPS = 25
# One frame thread: the same encode every run. x265's version string SEI
# (info) would change with every x265 release.
FIXED_PARAMS = {"libx264": "threads=1:scenecut=0",
                "libx265": "frame-threads=1:scenecut=0:info=0:log-level=error"}


def frames(width: int, height: int, count: int, start: int = 0) -> Iterator[av.VideoFrame]:
    """A real moving picture (lavfi testsrc2), not a flat colour."""
    source = av.open(f"testsrc2=size={width}x{height}:rate={FPS}", format="lavfi")
    try:
        for index, frame in enumerate(source.decode(video=0)):
            if index >= start + count:
                return
            if index >= start:
                out = frame.reformat(format="yuv420p")
                out.pts = index
                # lavfi marks every frame I, which libx264 would obey with an IDR.
                out.pict_type = PictureType.NONE
                yield out
    finally:
        source.close()


def encode(width: int, height: int, count: int, profile: str, params: str, *,
           start: int = 0, crf: int = 32, pix_fmt: str = "yuv420p", codec: str = "libx264"
           ) -> list[tuple[int, bytes, bool]]:
    """(pts_us, Annex B access unit, keyframe) in decode order, from libx264
    or libx265 (``params`` are x264-params or x265-params)."""
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, pix_fmt
    enc.time_base = Fraction(1, FPS)
    enc.framerate = Fraction(FPS, 1)
    enc.options = {
        "preset": "veryfast",
        "profile": profile,
        "crf": str(crf),
        f"{codec[3:]}-params": f"{FIXED_PARAMS[codec]}:{params}",
    }
    out = []
    pictures = [f if pix_fmt == "yuv420p" else f.reformat(format=pix_fmt)
                for f in frames(width, height, count, start)]
    for frame in [*pictures, None]:
        for packet in enc.encode(frame):
            out.append((packet.pts * 1_000_000 // FPS, bytes(packet), packet.is_keyframe))
    return out


def write(name: str, packets: list[tuple[int, bytes, bool]], suffix: str = ".h264",
          **meta: object) -> None:
    (HERE / f"{name}{suffix}").write_bytes(b"".join(data for _, data, _ in packets))
    sidecar = {**meta, "packets": [[pts, len(data), key] for pts, data, key in packets]}
    (HERE / f"{name}.json").write_text(json.dumps(sidecar, separators=(",", ":")) + "\n")
    size = sum(len(data) for _, data, _ in packets)
    print(f"{name}: {len(packets)} packets, {size} bytes")


def record_encodes() -> None:
    write("baseline", encode(640, 360, 60, "baseline", "keyint=25", crf=30),
          kind="access_units", codec="avc1.42c01e", width=640, height=360)
    write("slices4", encode(640, 360, 60, "main", "keyint=25:slices=4:bframes=0", crf=30),
          kind="access_units", codec="avc1.4d401e", width=640, height=360)
    write("bframes", encode(1280, 720, 48, "high", "keyint=24:bframes=2:b-adapt=0", crf=36),
          kind="access_units", codec="avc1.64001f", width=1280, height=720)
    # Buffering-period and picture-timing SEI in every unit, AUD first.
    write("sei_aud", encode(1920, 1080, 30, "high",
                            "keyint=15:bframes=2:b-adapt=0:aud=1:nal-hrd=vbr:"
                            "vbv-maxrate=1500:vbv-bufsize=1500:slices=2", crf=40),
          kind="access_units", codec="avc1.640028", width=1920, height=1080)
    # The camera goes from 4 slices to 2 (a subset of the 4-slice layout: it
    # looks like lost slices at first), then to 3, each time at an IDR.
    first = encode(320, 180, 20, "main", "keyint=10:slices=4:bframes=0", crf=28)
    second = encode(320, 180, 20, "main", "keyint=10:slices=2:bframes=0", start=20, crf=28)
    third = encode(320, 180, 20, "main", "keyint=10:slices=3:bframes=0", start=40, crf=28)
    write("slice_change", first + second + third, kind="access_units",
          codec="avc1.4d400c", width=320, height=180)


def record_variants() -> None:
    """Tiny streams for the rarer SPS/PPS syntax: scaling matrices, 4:4:4
    (12 scaling lists, crop units of one pixel), interlaced (MBAFF:
    frame_mbs_only_flag 0, crop units of two rows per field)."""
    write("variant_cqm", encode(128, 96, 8, "high", "keyint=4:cqm=jvt:bframes=1", crf=30),
          kind="access_units", codec="avc1.64000a", width=128, height=96)
    write("variant_444", encode(120, 90, 8, "high444", "keyint=4:cqm=jvt:bframes=0", crf=30,
                                pix_fmt="yuv444p"),
          kind="access_units", codec="avc1.f4000a", width=120, height=90)
    write("variant_interlaced", encode(120, 88, 8, "high", "keyint=4:interlaced=1:bframes=1",
                                       crf=30),
          kind="access_units", codec="avc1.640015", width=120, height=88)


def record_extradata_only() -> None:
    path = HERE / "extradata_only.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={
            "preset": "veryfast", "profile": "main", "crf": "32",
            "x264-params": "threads=1:scenecut=0:keyint=25:slices=2:bframes=0",
        })
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for frame in frames(640, 360, 50):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    print(f"extradata_only.mkv: {path.stat().st_size} bytes")


_SERVER = textwrap.dedent("""
    import sys, gi
    gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
    from gi.repository import Gst, GstRtspServer, GLib
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(sys.argv[2])
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()
""")

# Two slices (sliced threads), AUD, SPS/PPS in-band before every IDR, and
# pictures big enough that FU-A splits them across several RTP packets.
_PIPELINE = (
    "( videotestsrc is-live=true pattern=smpte horizontal-speed=4 "
    "! video/x-raw,width=640,height=360,framerate=25/1 "
    "! x264enc tune=zerolatency bitrate=500 key-int-max=25 threads=2 "
    "! rtph264pay name=pay0 pt=96 mtu=1200 )"
)


def capture_rtsp(pipeline: str, seconds: float) -> tuple[bytes, list[tuple[int, bytes, bool]]]:
    """(extradata, packets) of a live RTSP session with GStreamer's server
    running ``pipeline``, read as the relay reads it (parser off)."""
    port = free_port()
    server = subprocess.Popen(["/usr/bin/python3", "-c", _SERVER, str(port), pipeline],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        container = av.open(f"rtsp://127.0.0.1:{port}/cam", timeout=10, options={
            "rtsp_transport": "tcp", "fflags": "+noparse+nofillin"})
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        tb = stream.time_base
        packets: list[tuple[int, bytes, bool]] = []
        deadline = time.monotonic() + seconds
        for packet in container.demux(stream):
            if packet.size:
                pts = packet.pts if packet.pts is not None else packet.dts
                packets.append((pts * tb.numerator * 1_000_000 // tb.denominator,
                                bytes(packet), False))
            if time.monotonic() > deadline:
                break
        container.close()
    finally:
        server.terminate()
        server.wait(10)
    return extradata, packets


def record_rtsp(seconds: float = 1.7) -> None:
    extradata, packets = capture_rtsp(_PIPELINE, seconds)
    # Keep whole access units only: from the first AUD to before the last one.
    auds = [i for i, (_, data, _) in enumerate(packets) if data[:5] == b"\0\0\0\x01\x09"]
    write("rtsp_gst", packets[auds[0]:auds[-1]], kind="rtp_packets", extradata=extradata.hex(),
          codec="avc1.42c01e", width=640, height=360)


def main(recorders: tuple[Callable[[], None], ...] = (record_encodes, record_variants,
                                                      record_extradata_only),
         rtsp: Callable[[], None] = record_rtsp) -> None:
    for record in recorders:
        record()
    if "--no-rtsp" not in sys.argv:
        rtsp()


if __name__ == "__main__":
    main()
