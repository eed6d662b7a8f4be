#!/usr/bin/python3
"""The glass benchmark's floor: the camera read and decoded by GStreamer's own client.

    /usr/bin/python3 benchmarks/glass_floor.py rtsp://127.0.0.1:PORT/cam SECONDS

rtspsrc (latency=0, TCP) -> depayloader -> avdec_h264 (one thread: frame threads hold
pictures back) -> raw luma in an appsink; every decoded picture's glass code
(tests/camera/glass.py) is read, and the time from its capture to its decoding printed:
one JSON object at the end, {"latency_ms": [...], "decoded": N, "unread": M}. There is no
screen: this is the least any player on this machine could add, decode included.

Runs under Debian's /usr/bin/python3 (the gi bindings), like the test camera.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "camera"))
from glass import read_code, unwrap_ms  # noqa: E402


def main() -> int:
    url, seconds = sys.argv[1], float(sys.argv[2])
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"rtspsrc location={url} latency=0 protocols=tcp ! rtph264depay ! h264parse ! "
        "avdec_h264 max-threads=1 ! videoconvert ! video/x-raw,format=GRAY8 ! "
        "appsink name=sink sync=false emit-signals=true max-buffers=4 drop=false"
    )
    latencies: list[float] = []
    counts = {"decoded": 0, "unread": 0}

    def on_sample(sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        now_ms = time.time_ns() / 1e6
        info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
        buffer = sample.get_buffer()
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.ERROR
        try:
            code = read_code(mapped.data, info.width, info.stride[0])
        finally:
            buffer.unmap(mapped)
        counts["decoded"] += 1
        if code is None:
            counts["unread"] += 1
        else:
            latencies.append(now_ms - unwrap_ms(code[0], now_ms))
        return Gst.FlowReturn.OK

    pipeline.get_by_name("sink").connect("new-sample", on_sample)
    loop = GLib.MainLoop()
    bus = pipeline.get_bus()
    bus.add_signal_watch()
    errors: list[str] = []

    def on_error(_bus: Gst.Bus, message: Gst.Message) -> None:
        errors.append(message.parse_error()[0].message)
        loop.quit()

    bus.connect("message::error", on_error)
    pipeline.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()
    pipeline.set_state(Gst.State.NULL)
    print(json.dumps({"latency_ms": latencies, **counts, "errors": errors}))
    return 1 if errors and not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
