"""Record the real H.265 bitstreams the unit tests of ``cxrelay.h265`` run on.

    python3 tests/data/make_h265_bitstreams.py       # rewrite every h265_* file here

The same layout as the H.264 recordings (make_bitstreams.py): a raw Annex B
file ``NAME.h265`` with a sidecar ``NAME.json`` listing its packets,
``[pts_us, size, keyframe]``. For the libx265 encodes a packet is one access
unit as the encoder produced it, and each is checked here against FFmpeg's
hevc parser (the same boundaries, the same IRAP pictures) before it is
written. ``h265_rtsp_gst`` holds what PyAV returns from a live RTSP session
opened with ``fflags=+noparse+nofillin`` (one RTP payload each, FU
continuation fragments without start codes), served by GStreamer from
``x265enc`` with two slices per picture; it needs Debian's /usr/bin/python3
for the GStreamer bindings.

``h265_extradata_only.mkv`` keeps its VPS/SPS/PPS only in the hvcC record.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cxrelay.h264 import split_annexb
from cxrelay.h265 import IRAP, nal_type
from tests.data import make_bitstreams
from tests.data.make_bitstreams import FIXED_PARAMS, HERE, capture_rtsp, frames
from tests.data.make_bitstreams import encode as encode_any
from tests.data.make_bitstreams import write as write_any

Packets = list[tuple[int, bytes, bool]]


def encode(width: int, height: int, count: int, profile: str, params: str, **kw: object
           ) -> Packets:
    return encode_any(width, height, count, profile, params, codec="libx265", **kw)  # type: ignore[arg-type]


def parser_units(stream: bytes) -> list[bytes]:
    """FFmpeg's hevc parser's access units: the oracle."""
    parser = av.CodecContext.create("hevc", "r")
    units = [bytes(p) for p in parser.parse(stream)] + [bytes(p) for p in parser.parse(b"")]
    assert b"".join(units) == stream
    return units


def is_irap(unit: bytes) -> bool:
    return any(nal_type(nal) in IRAP for nal in split_annexb(unit))


# GStreamer's h265parse makes the hvcC record and its codec utils the RFC 6381
# string: a second opinion, from another code base, on what cxrelay.h265 builds.
_GST_CAPS = """
import sys, gi
gi.require_version("Gst", "1.0"); gi.require_version("GstPbutils", "1.0")
from gi.repository import Gst, GstPbutils
Gst.init(None)
pipeline = Gst.parse_launch(
    f"filesrc location={sys.argv[1]} ! h265parse ! video/x-h265,stream-format=hvc1 "
    "! fakesink name=sink")
pipeline.set_state(Gst.State.PLAYING)
pipeline.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
caps = pipeline.get_by_name("sink").get_static_pad("sink").get_current_caps()
record = caps.get_structure(0).get_value("codec_data")
ok, info = record.map(Gst.MapFlags.READ)
print(GstPbutils.codec_utils_caps_get_mime_codec(caps), bytes(info.data).hex())
record.unmap(info)
pipeline.set_state(Gst.State.NULL)
"""


def gstreamer_caps(path: Path) -> tuple[str, str]:
    """(codec string, hvcC record in hex) of an Annex B file, as GStreamer sees it."""
    out = subprocess.run(["/usr/bin/python3", "-c", _GST_CAPS, str(path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    return out[0], out[1]


def write(name: str, packets: Packets, width: int, height: int) -> None:
    """Write an encode after checking its units against FFmpeg's parser, with
    GStreamer's codec string and hvcC record in the sidecar."""
    units = [data for _, data, _ in packets]
    assert parser_units(b"".join(units)) == units, f"{name}: the parser splits differently"
    assert [key for _, _, key in packets] == [is_irap(unit) for unit in units]
    path = HERE / f"{name}.h265"
    path.write_bytes(b"".join(units))
    codec, hvcc = gstreamer_caps(path)
    write_any(name, packets, suffix=".h265", kind="access_units", codec=codec, hvcc=hvcc,
              width=width, height=height)


def record_encodes() -> None:
    write("h265_main", encode(640, 360, 50, "main", "keyint=25:bframes=0:repeat-headers=1",
                              crf=30),
          width=640, height=360)
    write("h265_slices4", encode(640, 360, 50, "main",
                                 "keyint=25:bframes=0:slices=4:repeat-headers=1", crf=30),
          width=640, height=360)
    # Open GOPs: CRA keyframes with RASL pictures after them, B-frame pyramid.
    write("h265_bframes", encode(1280, 720, 48, "main",
                                 "keyint=24:min-keyint=24:bframes=3:open-gop=1:repeat-headers=1",
                                 crf=36),
          width=1280, height=720)
    # AUD, buffering-period and picture-timing SEI, three temporal sub-layers,
    # two slices, and a conformance window (coded 632x360, shown 632x354).
    write("h265_sei_aud", encode(632, 354, 30, "main",
                                 "keyint=10:min-keyint=10:bframes=2:slices=2:aud=1:hrd=1:"
                                 "vbv-maxrate=800:vbv-bufsize=800:temporal-layers=3:"
                                 "repeat-headers=1", crf=34),
          width=632, height=354)
    # 4 slices, then 2 (a subset of the 4-slice layout), then 3, each at an IDR
    # (320x320: 5 rows of 64x64 CTBs; addresses (0, 5, 10, 15), (0, 10), (0, 5, 15)).
    params = "keyint=10:bframes=0:repeat-headers=1:slices="
    first = encode(320, 320, 20, "main", params + "4")
    second = encode(320, 320, 20, "main", params + "2", start=20)
    third = encode(320, 320, 20, "main", params + "3", start=40)
    write("h265_slice_change", first + second + third, width=320, height=320)


def record_variants() -> None:
    """Tiny streams for the rarer SPS syntax: 10-bit, 4:4:4 and 4:2:2 (other
    conformance window units), scaling lists."""
    write("h265_variant_main10", encode(200, 110, 6, "main10", "keyint=3:repeat-headers=1",
                                        pix_fmt="yuv420p10le"),
          width=200, height=110)
    write("h265_variant_444", encode(121, 91, 6, "main444-8", "keyint=3:repeat-headers=1",
                                     pix_fmt="yuv444p"),
          width=121, height=91)
    write("h265_variant_422", encode(122, 91, 6, "main422-10", "keyint=3:repeat-headers=1",
                                     pix_fmt="yuv422p10le"),
          width=122, height=91)
    with tempfile.TemporaryDirectory() as tmp:
        lists = Path(tmp) / "scaling.txt"
        lists.write_text(scaling_lists())
        write("h265_variant_scaling", encode(128, 96, 6, "main",
                                             f"keyint=3:scaling-list={lists}:repeat-headers=1"),
              width=128, height=96)


def scaling_lists() -> str:
    """An x265 (HM format) scaling list file, each list different: the SPS then
    carries scaling_list_data() with explicit coefficients. (Lists repeated
    across sizes make x265 3.5 write an invalid prediction.)"""
    lines = []
    for size_id, (size, count) in enumerate((("4X4", 16), ("8X8", 64), ("16X16", 64),
                                             ("32X32", 64))):
        kinds = ["LUMA"] if size == "32X32" else ["LUMA", "CHROMAU", "CHROMAV"]
        for index, name in enumerate(f"{mode}{size}_{kind}" for mode in ("INTRA", "INTER")
                                     for kind in kinds):
            values = [16 + (i * (index + 3) + size_id) % 11 for i in range(count)]
            lines.append(f"{name} =")
            lines += [",".join(map(str, values[r:r + 8])) + "," for r in range(0, count, 8)]
            if count == 64 and size_id >= 2:
                lines += [f"{name}_DC =", f"{17 + index},"]
    return "\n".join(lines) + "\n"


def record_extradata_only() -> None:
    path = HERE / "h265_extradata_only.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=25, options={
            "preset": "veryfast", "crf": "32",
            "x265-params": f"{FIXED_PARAMS['libx265']}:keyint=25:slices=2:bframes=0",
        })
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for frame in frames(640, 360, 50):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    print(f"{path.name}: {path.stat().st_size} bytes")


# Two slices, VPS/SPS/PPS in-band before every IRAP picture and in the SDP,
# x265's SEI, and pictures big enough that FU splits them across packets.
_PIPELINE = (
    "( videotestsrc is-live=true pattern=smpte horizontal-speed=4 "
    "! video/x-raw,format=I420,width=640,height=360,framerate=25/1 "
    "! x265enc tune=zerolatency bitrate=500 key-int-max=25 option-string=slices=2 "
    "! rtph265pay name=pay0 pt=96 mtu=1200 config-interval=-1 )"
)


def record_rtsp(seconds: float = 2.2) -> None:
    extradata, packets = capture_rtsp(_PIPELINE, seconds)
    # Whole access units only: from the first picture's first packet to before
    # the last picture's (the capture ends anywhere).
    starts = [i for i, (pts, _, _) in enumerate(packets) if i == 0 or pts != packets[i - 1][0]]
    first = next(i for i in starts if packets[i][1][4:5] == b"\x40")  # a VPS: a keyframe
    write_any("h265_rtsp_gst", packets[first:starts[-1]], suffix=".h265", kind="rtp_packets",
              extradata=extradata.hex(), width=640, height=360)


def main() -> None:
    make_bitstreams.main((record_encodes, record_variants, record_extradata_only), record_rtsp)


if __name__ == "__main__":
    main()
