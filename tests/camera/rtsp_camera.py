#!/usr/bin/python3
"""A live H.264 or H.265 RTSP test camera built on GStreamer's gst-rtsp-server.

Run it with Debian's /usr/bin/python3 (it has the gi bindings):

    /usr/bin/python3 tests/camera/rtsp_camera.py --port 0 --path /cam --stamp

One encoder (x264, or x265 with --codec h265) runs for the whole life of the process (a
real camera does not restart its encoder per viewer); its access units are pushed into
the appsrc of one SHARED RTSP media. Going through Python between encoder and payloader
lets the camera stamp every unit (--stamp) and move the parameter sets (SPS/PPS, and
H.265's VPS) into the SDP only (--params sdp).

Once listening it prints exactly one line, ``READY rtsp://127.0.0.1:PORT/PATH``.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstBase, GstRtsp, GstRtspServer, GstVideo  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glass import bgra_strip  # noqa: E402
from stamp import (  # noqa: E402
    draw_counter,
    h265_nal_type,
    is_slice,
    iter_annexb,
    make_stamp_sei,
    nal_type,
    unescape_rbsp,
)

START_CODE = b"\x00\x00\x00\x01"


@dataclass(frozen=True)
class Codec:
    """What the camera needs to know of a codec's bitstream and GStreamer elements."""

    name: str
    caps: str  # GStreamer media type
    payloader: str
    packed: str  # stream-format of length-prefixed units with codec_data
    nal_type: Callable[[bytes], int]
    keyframes: frozenset[int]  # slice types a decoder can start at
    parameter_sets: tuple[int, ...]  # in the order a decoder needs them


H264 = Codec("h264", "video/x-h264", "rtph264pay", "avc", nal_type, frozenset({5}), (7, 8))
# IRAP pictures: BLA, IDR, CRA; VPS, SPS, PPS.
H265 = Codec("h265", "video/x-h265", "rtph265pay", "hvc1", h265_nal_type,
             frozenset(range(16, 22)), (32, 33, 34))
CODECS = {codec.name: codec for codec in (H264, H265)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264",
                        help="h264 (x264enc, rtph264pay) or h265 (x265enc, rtph265pay)")
    parser.add_argument("--path", default="/cam", help="mount point, e.g. /cam")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=50, help="keyframe interval, in frames")
    parser.add_argument("--slices", type=int, default=1, help="slices per picture")
    parser.add_argument("--bframes", type=int, default=0, help="B-frames (drops zerolatency)")
    parser.add_argument("--bitrate", type=int, default=1000, help="kbit/s")
    parser.add_argument(
        "--params",
        choices=("inband", "sdp"),
        default="inband",
        help="inband: parameter sets before every keyframe (and in the SDP); sdp: in the "
        "SDP only",
    )
    parser.add_argument(
        "--aggregate",
        choices=("none", "zero-latency", "max"),
        default="none",
        help="STAP-A (H.264) or AP (H.265) aggregation; none (one NAL unit per packet) is what "
        "most real cameras do",
    )
    parser.add_argument("--mtu", type=int, default=1400, help="RTP packet size (FU-A/FU above)")
    parser.add_argument("--stamp", action="store_true", help="stamp SEI in every access unit")
    parser.add_argument(
        "--draw-counter",
        action="store_true",
        help="draw each picture's number (from 1; the stamp's counter when there are no "
        "B-frames) into it as blocks at the top left (stamp.read_drawn_counter reads it)",
    )
    parser.add_argument(
        "--glass",
        action="store_true",
        help="draw each picture's capture time (ms) into it as a strip of blocks across "
        "the top, as it goes into the encoder (glass.read_code reads it; "
        "benchmarks/glass.py)",
    )
    parser.add_argument("--user", help="require RTSP authentication as this user")
    parser.add_argument("--password", default="", help="password for --user")
    parser.add_argument("--auth", choices=("basic", "digest"), default="basic")
    parser.add_argument(
        "--no-idr-on-play",
        dest="idr_on_play",
        action="store_false",
        help="by default each PLAY asks the encoder for an IDR, so viewers start at once",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="quit when stdin closes (the harness's pipe: no orphan camera if it dies)",
    )
    args = parser.parse_args(argv)
    if not args.path.startswith("/"):
        args.path = "/" + args.path
    if args.slices < 1 or args.fps < 1 or args.gop < 1:
        parser.error("--slices, --fps and --gop must be positive")
    if args.glass and args.draw_counter:
        parser.error("--glass and --draw-counter both draw at the top left: pick one")
    return args


def encoder_description(args: argparse.Namespace) -> str:
    """The producer pipeline: live test pattern -> encoder -> appsink, one unit per buffer."""
    options = ["scenecut=0", f"slices={args.slices}"]
    if args.codec == "h265":
        # x265 writes its parameter sets before the first picture only, unless asked.
        # Closed GOPs (IDR keyframes), as cameras send.
        options += ["repeat-headers=1", "open-gop=0"]
        if args.bframes > 0:
            options += [f"bframes={args.bframes}", "b-adapt=0", "frame-threads=1"]
            encoder = "x265enc speed-preset=ultrafast"
        else:
            encoder = "x265enc tune=zerolatency speed-preset=ultrafast"
    elif args.bframes > 0:
        # zerolatency forbids B-frames; frame threads would add yet more delay.
        encoder = (
            f"x264enc speed-preset=ultrafast bframes={args.bframes} b-adapt=false "
            f"threads=1 sliced-threads=false"
        )
    else:
        # Sliced threads give exactly `threads` slices: make that the asked number.
        encoder = (
            f"x264enc tune=zerolatency speed-preset=ultrafast "
            f"threads={args.slices} sliced-threads=true"
        )
    return (
        f"videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,format=I420,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 ! "
        f"{'overlaycomposition name=counter ! ' if args.draw_counter else ''}"
        f"{'overlaycomposition name=glass ! ' if args.glass else ''}"
        f"{encoder} key-int-max={args.gop} bitrate={args.bitrate} "
        f'option-string="{":".join(options)}" name=encoder ! '
        f"{CODECS[args.codec].caps},stream-format=byte-stream,alignment=au ! "
        f"appsink name=sink sync=false max-buffers=4 drop=false emit-signals=false"
    )


def media_description(args: argparse.Namespace) -> str:
    """The RTSP media: encoded units come in through the appsrc, one buffer per unit."""
    return (
        "( appsrc name=src is-live=true format=time do-timestamp=false "
        "max-bytes=0 max-buffers=100 block=false "
        # config-interval=0: never re-insert parameter sets; in sdp mode they must stay
        # out of band. In inband mode the payloader copies them into the SDP as well.
        f"! {CODECS[args.codec].payloader} name=pay0 pt=96 config-interval=0 "
        f"aggregate-mode={args.aggregate} "
        f"mtu={args.mtu} )"
    )


def avcc_from(sps: bytes, pps: bytes) -> bytes:
    """An AVCDecoderConfigurationRecord (avcC) with one SPS and one PPS."""
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + struct.pack(">H", len(sps))
        + sps
        + bytes([1])
        + struct.pack(">H", len(pps))
        + pps
    )


def hvcc_from(vps: bytes, sps: bytes, pps: bytes) -> bytes:
    """An HEVCDecoderConfigurationRecord (hvcC) with one VPS, SPS and PPS, for this
    camera's 8-bit 4:2:0 video. The general profile, tier and level are the SPS's own
    twelve bytes, byte-aligned right after its first (ISO/IEC 14496-15 8.3.3.1)."""
    rbsp = unescape_rbsp(sps[2:])
    sub_layers = ((rbsp[0] >> 1) & 7) + 1
    nested = rbsp[0] & 1
    record = (
        bytes([1]) + rbsp[1:13]
        # min_spatial_segmentation 0, parallelism unknown, 4:2:0, 8-bit, no frame rate
        + bytes([0xF0, 0x00, 0xFC, 0xFD, 0xF8, 0xF8, 0x00, 0x00])
        + bytes([(sub_layers << 3) | (nested << 2) | 3, 3])  # 4-byte lengths; 3 arrays
    )
    for kind, nal in ((32, vps), (33, sps), (34, pps)):
        record += bytes([0x80 | kind]) + struct.pack(">HH", 1, len(nal)) + nal
    return record


@dataclass
class Feed:
    """One prepared RTSP media (shared by all its clients) that receives encoded units."""

    appsrc: Gst.Element
    started: bool = False
    offset: int = 0  # added to encoder timestamps to get this media's running time


@dataclass
class Camera:
    args: argparse.Namespace
    loop: GLib.MainLoop = field(default_factory=GLib.MainLoop)
    feeds: list[Feed] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0
    drawn: int = 0  # pictures numbered by --draw-counter
    params: dict[int, bytes] = field(default_factory=dict)  # the first of each kind
    first_unit: threading.Event = field(default_factory=threading.Event)
    producer: Any = None
    failed: bool = False
    last_idr: int = -(10**9)
    stopping: bool = False
    encoder: Any = None
    server: Any = None

    # -- producer side (encoder streaming thread) ------------------------------------

    def start_producer(self) -> None:
        self.producer = Gst.parse_launch(encoder_description(self.args))
        self.encoder = self.producer.get_by_name("encoder")
        if self.args.draw_counter:
            self.producer.get_by_name("counter").connect("draw", self.on_draw)
        if self.args.glass:
            self.producer.get_by_name("glass").connect("draw", self.on_glass)
        sink = self.producer.get_by_name("sink")
        sink.set_property("emit-signals", True)
        sink.connect("new-sample", self.on_sample)
        bus = self.producer.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_producer_error)
        self.producer.set_state(Gst.State.PLAYING)

    def on_draw(self, _element: Gst.Element, _sample: Gst.Sample) -> Any:
        """The overlay for the next raw picture: its number, as blocks (stamp.py)."""
        self.drawn += 1
        return overlay(*draw_counter(self.drawn, self.args.width))

    def on_glass(self, _element: Gst.Element, _sample: Gst.Sample) -> Any:
        """The overlay for the next raw picture: the time now, its capture time (glass.py)."""
        self.drawn += 1
        return overlay(*bgra_strip(self.args.width, time.time_ns() // 1_000_000, self.drawn))

    def on_producer_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        print(f"camera: encoder error: {error.message} ({debug})", file=sys.stderr, flush=True)
        self.failed = True
        self.loop.quit()

    def on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        inbuf = sample.get_buffer()
        ok, info = inbuf.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.ERROR
        try:
            nals = list(iter_annexb(bytes(info.data)))
        finally:
            inbuf.unmap(info)
        codec = CODECS[self.args.codec]
        keyframe = any(codec.nal_type(n) in codec.keyframes for n in nals)
        self.remember_parameter_sets(nals)
        self.counter += 1
        if keyframe:
            self.last_idr = self.counter
        with self.lock:
            feeds = list(self.feeds)
        for feed in feeds:
            self.push(feed, nals, keyframe, inbuf)
        self.first_unit.set()
        return Gst.FlowReturn.OK

    def remember_parameter_sets(self, nals: list[bytes]) -> None:
        codec = CODECS[self.args.codec]
        for nal in nals:
            kind = codec.nal_type(nal)
            if kind in codec.parameter_sets:
                self.params.setdefault(kind, nal)

    def push(self, feed: Feed, nals: list[bytes], keyframe: bool, inbuf: Gst.Buffer) -> None:
        if feed.appsrc.get_clock() is None:
            return  # media not running yet: a stale backlog would only add delay
        if not feed.started:
            if not keyframe:
                return  # viewers can't decode anything before the first IDR
            feed.started = True
            feed.offset = self.running_time(feed.appsrc) - first_valid(inbuf.dts, inbuf.pts)
        payload = self.serialize(nals)
        outbuf = Gst.Buffer.new_wrapped(payload)
        outbuf.pts = shift(inbuf.pts, feed.offset)
        outbuf.dts = shift(inbuf.dts, feed.offset)
        outbuf.duration = inbuf.duration
        if not keyframe:
            outbuf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        feed.appsrc.emit("push-buffer", outbuf)

    def serialize(self, nals: list[bytes]) -> bytes:
        """The unit as the payloader gets it; the stamp is taken last, right before the push."""
        codec = CODECS[self.args.codec]
        sdp_only = self.args.params == "sdp"
        if sdp_only:
            nals = [n for n in nals if codec.nal_type(n) not in codec.parameter_sets]
        first_vcl = next((i for i, n in enumerate(nals) if is_slice(n, codec.name)), len(nals))
        before, after = nals[:first_vcl], nals[first_vcl:]
        if self.args.stamp:
            stamp = make_stamp_sei(time.time_ns() // 1000, self.counter, codec.name)
            before = [*before, stamp]
        if sdp_only:
            return b"".join(struct.pack(">I", len(n)) + n for n in before + after)
        return b"".join(START_CODE + n for n in before + after)

    @staticmethod
    def running_time(element: Gst.Element) -> int:
        clock = element.get_clock()
        return clock.get_time() - element.get_base_time()

    def request_keyframe(self) -> None:
        structure = Gst.Structure.new_from_string(
            "GstForceKeyUnit, all-headers=(boolean)true, count=(uint)0"
        )
        event = Gst.Event.new_custom(Gst.EventType.CUSTOM_UPSTREAM, structure)
        self.encoder.get_static_pad("src").send_event(event)

    # -- RTSP side (main loop thread) --------------------------------------------------

    def appsrc_caps(self) -> Gst.Caps:
        args = self.args
        codec = CODECS[args.codec]
        common = f"width={args.width},height={args.height},framerate={args.fps}/1"
        if args.params == "sdp":
            params = [self.params[kind] for kind in codec.parameter_sets]
            caps = Gst.Caps.from_string(
                f"{codec.caps},stream-format={codec.packed},alignment=au,{common}")
            record = hvcc_from(*params) if codec is H265 else avcc_from(*params)
            caps.set_value("codec_data", Gst.Buffer.new_wrapped(record))
            return caps
        return Gst.Caps.from_string(f"{codec.caps},stream-format=byte-stream,alignment=au,{common}")

    def on_media_configure(self, _factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        appsrc.set_property("caps", self.appsrc_caps())
        pipeline = media.get_element().get_parent()
        if pipeline is not None:
            pipeline.connect("deep-element-added", unsync_sink)
        feed = Feed(appsrc)
        with self.lock:
            self.feeds.append(feed)
        media.connect("unprepared", self.on_media_unprepared, feed)
        self.request_keyframe()

    def on_media_unprepared(self, _media: Any, feed: Feed) -> None:
        with self.lock:
            if feed in self.feeds:
                self.feeds.remove(feed)

    def on_client_connected(self, _server: Any, client: GstRtspServer.RTSPClient) -> None:
        if self.args.idr_on_play:
            client.connect("play-request", self.on_play_request)

    def on_play_request(self, *_: Any) -> None:
        # The first viewer of a new media still has the IDR that prepared it queued up;
        # a second one right behind it would only break the GOP pattern.
        if self.counter - self.last_idr > max(1, self.args.fps // 5):
            self.request_keyframe()

    def make_factory(self) -> GstRtspServer.RTSPMediaFactory:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(media_description(self.args))
        factory.set_shared(True)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
        factory.connect("media-configure", self.on_media_configure)
        if self.args.user:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    "viewer, media.factory.access=(boolean)true, "
                    "media.factory.construct=(boolean)true"
                )
            )
        return factory

    def make_auth(self) -> GstRtspServer.RTSPAuth:
        args = self.args
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        if args.auth == "digest":
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        return auth

    def start_server(self) -> int:
        server = GstRtspServer.RTSPServer()
        server.set_address("127.0.0.1")
        server.set_service(str(self.args.port))
        if self.args.user:
            server.set_auth(self.make_auth())
        server.get_mount_points().add_factory(self.args.path, self.make_factory())
        server.connect("client-connected", self.on_client_connected)
        # attach() creates the listening socket (with SO_REUSEADDR, so a restarted camera
        # can take the same port back at once); 0 means it failed to bind.
        if server.attach(None) == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{self.args.port}")
        self.server = server
        return server.get_bound_port()

    def stop_from_signal(self, *_: Any) -> bool:
        self.stopping = True  # a signal may come before loop.run(), where quit() is lost
        self.loop.quit()
        return GLib.SOURCE_REMOVE

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.client_filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE)
        if self.producer is not None:
            self.producer.set_state(Gst.State.NULL)


def overlay(pixels: bytes, width: int, height: int) -> Any:
    """A composition putting BGRA `pixels` (width x height) at a picture's top left."""
    buffer = Gst.Buffer.new_wrapped(pixels)
    GstVideo.buffer_add_video_meta(
        buffer, GstVideo.VideoFrameFlags.NONE, GstVideo.VideoFormat.BGRA, width, height
    )
    rectangle = GstVideo.VideoOverlayRectangle.new_raw(
        buffer, 0, 0, width, height, GstVideo.VideoOverlayFormatFlags.NONE
    )
    return GstVideo.VideoOverlayComposition.new(rectangle)


def unsync_sink(_bin: Gst.Bin, _parent: Gst.Bin, element: Gst.Element) -> None:
    """Send every unit the moment it is encoded, like a camera.

    gst-rtsp-server's RTP sinks sync on buffer timestamps (that paces file playback), and
    the media pipeline pauses for a moment while it gets ready, which leaves its running
    time behind the timestamps we derived from it: the sinks would then hold every unit
    back for as long as that pause lasted.
    """
    if isinstance(element, GstBase.BaseSink):
        element.set_property("sync", False)
        # gst-rtsp-server sets sync again once the sink is in: undo it whenever that happens.
        element.connect("notify::sync", keep_unsynced)


def keep_unsynced(element: Gst.Element, _spec: object) -> None:
    if element.get_property("sync"):
        element.set_property("sync", False)


def first_valid(*times: int) -> int:
    return next((t for t in times if t != Gst.CLOCK_TIME_NONE), 0)


def shift(timestamp: int, offset: int) -> int:
    if timestamp == Gst.CLOCK_TIME_NONE:
        return Gst.CLOCK_TIME_NONE
    return max(0, timestamp + offset)


def watch_stdin(loop: GLib.MainLoop) -> None:
    """Quit when the harness's pipe closes: the harness died without stopping us."""

    def on_input(_channel: Any, condition: GLib.IOCondition) -> bool:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data or condition & (GLib.IOCondition.HUP | GLib.IOCondition.ERR):
            loop.quit()
            return False
        return True

    GLib.io_add_watch(
        GLib.IOChannel.unix_new(sys.stdin.fileno()),
        GLib.PRIORITY_DEFAULT,
        GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
        on_input,
    )


def wait_first_unit(camera: Camera, timeout: float) -> bool:
    """Run the main context (bus errors, signals) until the encoder's first unit is out."""
    context = GLib.MainContext.default()
    deadline = time.monotonic() + timeout
    while not camera.first_unit.wait(0.01):
        while context.pending():
            context.iteration(False)
        if camera.failed or camera.stopping or time.monotonic() > deadline:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Gst.init(None)
    camera = Camera(args)
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, camera.stop_from_signal)
    if args.exit_on_stdin_eof:
        watch_stdin(camera.loop)
    camera.start_producer()
    # Wait for SPS/PPS: the SDP (and --params sdp caps) need them before any client comes.
    if not wait_first_unit(camera, timeout=20.0):
        print("camera: the encoder produced nothing", file=sys.stderr, flush=True)
        camera.shutdown()
        return 1
    try:
        port = camera.start_server()
    except OSError as exc:
        print(f"camera: {exc}", file=sys.stderr, flush=True)
        camera.shutdown()
        return 1
    print(f"READY rtsp://127.0.0.1:{port}{args.path}", flush=True)
    if not camera.stopping:
        camera.loop.run()
    # A wedged pipeline must not keep a test waiting: give cleanup two seconds.
    watchdog = threading.Timer(2.0, lambda: os._exit(0))
    watchdog.daemon = True
    watchdog.start()
    camera.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
