"""The test camera is what it claims: real RTSP/H.264, read back with PyAV (FFmpeg)."""

from __future__ import annotations

import socket
import threading

import av
import pytest

from tests.camera.harness import CameraFactory, Capture, RtspCamera, camera_argv, read_packets
from tests.camera.stamp import (
    count_slices,
    find_stamp,
    find_stamps,
    iter_annexb,
    nal_type,
    read_drawn_counter,
)

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS = 5, 6, 7, 8


def nal_types(unit: bytes) -> list[int]:
    return [nal_type(nal) for nal in iter_annexb(unit)]


def stamps_of(capture: Capture) -> list[tuple[int, int]]:
    found = [find_stamp(unit) for unit in capture.packets]
    # A reader that joins a running stream may first get a unit
    # from before its first whole picture (FFmpeg hands it over stampless);
    # from the first whole picture on, every one carries a stamp.
    while found and found[0] is None:
        found.pop(0)
    assert found and None not in found, "every access unit carries a stamp"
    return [stamp for stamp in found if stamp is not None]


def rtsp_describe(port: int, path: str) -> str:
    """Status line and headers of a bare DESCRIBE (no credentials)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        request = f"DESCRIBE rtsp://127.0.0.1:{port}{path} RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        sock.sendall(request.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode(errors="replace")


def test_camera_argv_turns_keywords_into_options() -> None:
    argv = camera_argv({"slices": 2, "stamp": True, "bframes": None, "idr_on_play": False})
    assert argv == ["--slices", "2", "--stamp"]


def test_streams_h264_at_the_asked_size(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(width=320, height=240, fps=25)
    assert camera.url == f"rtsp://127.0.0.1:{camera.port}/cam"
    capture = read_packets(camera.url, 10)
    assert capture.codec == "h264"
    assert (capture.width, capture.height) == (320, 240)
    assert capture.keyframes[0], "a new viewer starts at an IDR"
    # The pictures decode, at that size: the stream is real H.264, not just headers.
    codec = av.CodecContext.create("h264", "r")
    frames = [f for unit in capture.packets for f in codec.decode(av.Packet(unit))]
    assert frames and all((f.width, f.height) == (320, 240) for f in frames)


def test_inband_parameter_sets_come_before_every_idr(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(gop=5)
    capture = read_packets(camera.url, 12)
    idr_units = [u for u in capture.packets if NAL_IDR in nal_types(u)]
    assert len(idr_units) >= 2
    for unit in idr_units:
        types = nal_types(unit)
        assert NAL_SPS in types and NAL_PPS in types
        assert types.index(NAL_SPS) < types.index(NAL_IDR)


def test_sdp_params_are_in_extradata_and_never_inband(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(params="sdp", gop=5)
    capture = read_packets(camera.url, 12)
    extradata_types = nal_types(capture.extradata)
    assert NAL_SPS in extradata_types and NAL_PPS in extradata_types
    assert sum(NAL_IDR in nal_types(u) for u in capture.packets) >= 2
    for unit in capture.packets:
        types = nal_types(unit)
        assert NAL_SPS not in types and NAL_PPS not in types, types


def test_stamp_sei_in_every_unit_before_the_first_slice(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True)
    capture = read_packets(camera.url, 20)
    stamps = stamps_of(capture)
    counters = [counter for _, counter in stamps]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    walls = [wall for wall, _ in stamps]
    assert walls == sorted(walls) and walls[0] > 1_600_000_000_000_000  # µs since 1970
    for unit in capture.packets:
        assert len(find_stamps(unit)) == 1
        types = nal_types(unit)
        first_slice = next(i for i, t in enumerate(types) if 1 <= t <= 5)
        stamp_at = next(i for i, n in enumerate(iter_annexb(unit)) if find_stamp(b"\0\0\1" + n))
        assert types[stamp_at] == NAL_SEI and stamp_at < first_slice
        assert count_slices(unit) == 1  # the default is one slice per picture


def test_no_stamp_unless_asked(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera()
    capture = read_packets(camera.url, 5)
    assert all(find_stamp(unit) is None for unit in capture.packets)


def test_two_slices_per_picture(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(slices=2, stamp=True)
    capture = read_packets(camera.url, 10)
    assert [count_slices(unit) for unit in capture.packets] == [2] * 10


def test_bframes_reorder_presentation(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(bframes=2, gop=25)
    capture = read_packets(camera.url, 12)
    pts = [p for p in capture.pts if p is not None]
    assert pts != sorted(pts), "B-frames make presentation order differ from decode order"
    assert len(set(pts)) == len(pts)


def test_udp_transport(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True)
    capture = read_packets(camera.url, 5, transport="udp")
    assert len(stamps_of(capture)) == 5


def test_viewers_share_one_encoder(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True)
    captures: list[Capture] = []

    def read() -> None:
        captures.append(read_packets(camera.url, 25))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    first, second = (dict((c, w) for w, c in stamps_of(cap)) for cap in captures)
    common = first.keys() & second.keys()
    assert common, "both viewers see the same pictures"
    assert all(first[c] == second[c] for c in common), "stamped once, by one encoder"


@pytest.mark.parametrize("method", ["basic", "digest"])
def test_auth_rejects_wrong_passwords(rtsp_camera: CameraFactory, method: str) -> None:
    camera = rtsp_camera(user="viewer", password="pa:ss w@rd", auth=method, stamp=True)
    challenge = rtsp_describe(camera.port, "/cam")
    assert challenge.startswith("RTSP/1.0 401")
    assert f"WWW-Authenticate: {method.capitalize()}" in challenge
    for url in (camera.url, camera.url_with("viewer", "wrong"), camera.url_with("x", "pa:ss w@rd")):
        with pytest.raises(av.error.HTTPUnauthorizedError):
            read_packets(url, 1)
    capture = read_packets(camera.url_with("viewer", "pa:ss w@rd"), 3)
    assert len(stamps_of(capture)) == 3


def test_restart_on_the_same_port(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True)
    url, port = camera.url, camera.port
    # A viewer stays connected across the restart: the camera closes that connection
    # itself, leaving the port in TIME_WAIT, which the new camera must not mind.
    streaming = threading.Event()
    viewer: list[Capture] = []
    reader = threading.Thread(
        target=lambda: viewer.append(read_packets(url, 10**6, streaming=streaming))
    )
    reader.start()
    while reader.is_alive() and not streaming.wait(0.05):
        pass
    camera.restart()
    reader.join(15)
    assert (camera.url, camera.port) == (url, port)
    before = stamps_of(viewer[0])
    after = stamps_of(read_packets(url, 3))
    assert after[0][0] > before[-1][0], "a new stream, stamped after the old one"
    camera.stop()
    with pytest.raises(av.error.ConnectionRefusedError):
        read_packets(url, 1, timeout=2)


def test_sigterm_exits_cleanly_while_streaming(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True)
    process = camera._process
    assert process is not None
    result: list[Capture] = []
    streaming = threading.Event()

    def read() -> None:
        result.append(read_packets(camera.url, 10**6, streaming=streaming))

    reader = threading.Thread(target=read)
    reader.start()
    while reader.is_alive() and not streaming.wait(0.05):
        pass
    assert streaming.is_set()
    camera.stop()
    reader.join(15)
    assert not reader.is_alive(), "the viewer sees the end of the stream"
    assert process.returncode == 0
    assert result and result[0].packets


def test_harness_reports_camera_stderr_when_it_cannot_start() -> None:
    with pytest.raises(RuntimeError, match="camera stderr"):
        RtspCamera(params="bogus").start()


def test_one_nal_unit_per_rtp_packet_and_fu_a_above_the_mtu(rtsp_camera: CameraFactory) -> None:
    # Like most real cameras: no STAP-A aggregation, big slices fragmented (FU-A).
    camera = rtsp_camera(slices=2, stamp=True, mtu=300, gop=5)
    options = {"rtsp_transport": "tcp", "probesize": "32", "fflags": "+noparse+nofillin"}
    with av.open(camera.url, options=options, timeout=(5, 5)) as container:
        payloads = [
            bytes(packet) for _, packet in zip(range(200), container.demux(video=0), strict=False)
        ]
    starts = [p for p in payloads if p.startswith(b"\0\0\0\1") or p.startswith(b"\0\0\1")]
    assert all(len(list(iter_annexb(p))) == 1 for p in starts), "one NAL unit per packet"
    assert len(starts) < len(payloads), "FU-A continuations come without a start code"
    whole = b"".join(payloads)
    assert len(find_stamps(whole)) >= 10


def test_drawn_counter_is_the_stamp_counter_and_survives_scaling(
        rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(stamp=True, draw_counter=True)
    capture = read_packets(camera.url, 10)
    codec = av.CodecContext.create("h264", "r")
    for unit in capture.packets:
        for picture in codec.decode(av.Packet(unit)):
            stamp = find_stamp(unit)
            assert stamp is not None
            for width, height in ((640, 360), (320, 180)):
                gray = picture.reformat(width=width, height=height, format="gray")
                plane = gray.planes[0]
                assert read_drawn_counter(bytes(plane), width, plane.line_size) == stamp[1]
    plain = rtsp_camera()
    unit = read_packets(plain.url, 1).packets[0]
    gray = next(iter(av.CodecContext.create("h264", "r").decode(av.Packet(unit))))
    gray = gray.reformat(format="gray")
    assert read_drawn_counter(bytes(gray.planes[0]), 640, gray.planes[0].line_size) is None
