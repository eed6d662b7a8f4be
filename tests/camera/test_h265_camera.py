"""The test camera's H.265 mount is what it claims: real RTSP/H.265 (x265enc,
rtph265pay), read back with PyAV (FFmpeg's parser and decoder)."""

from __future__ import annotations

import av

from tests.camera.harness import CameraFactory, Capture, read_packets
from tests.camera.stamp import count_slices, find_stamp, find_stamps, h265_nal_type, iter_annexb

VPS, SPS, PPS, PREFIX_SEI = 32, 33, 34, 39
IRAP = range(16, 22)


def nal_types(unit: bytes) -> list[int]:
    return [h265_nal_type(nal) for nal in iter_annexb(unit)]


def decoded(capture: Capture) -> list[av.VideoFrame]:
    """The pictures FFmpeg's decoder makes of the capture, given the SDP's
    parameter sets as a container would give them."""
    codec = av.CodecContext.create("hevc", "r")
    codec.extradata = capture.extradata
    frames = [f for unit in capture.packets for f in codec.decode(av.Packet(unit))]
    return frames + list(codec.decode(None))


def test_streams_h265_at_the_asked_size(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(codec="h265", width=320, height=240, gop=5)
    capture = read_packets(camera.url, 12)
    assert capture.codec == "hevc"
    assert (capture.width, capture.height) == (320, 240)
    assert capture.keyframes[0], "a new viewer starts at a keyframe"
    assert nal_types(capture.extradata) == [VPS, SPS, PPS]  # sprop-vps/sps/pps in the SDP
    keyframes = [u for u in capture.packets if set(nal_types(u)) & set(IRAP)]
    assert len(keyframes) >= 2
    for unit in keyframes:  # and in band, before every keyframe
        types = nal_types(unit)
        assert types[:3] == [VPS, SPS, PPS]
        assert {19, 20} & set(types)  # IDR: closed GOPs, as cameras send
    frames = decoded(capture)
    assert len(frames) == 12 and {(f.width, f.height) for f in frames} == {(320, 240)}


def test_sdp_only_parameter_sets(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(codec="h265", params="sdp", width=320, height=240, gop=5)
    capture = read_packets(camera.url, 12)
    assert nal_types(capture.extradata) == [VPS, SPS, PPS]
    assert sum(bool(set(nal_types(u)) & set(IRAP)) for u in capture.packets) >= 2
    for unit in capture.packets:
        assert not {VPS, SPS, PPS} & set(nal_types(unit))
    # The hvcC record the camera built for the payloader made a usable SDP.
    assert len(decoded(capture)) == 12


def test_two_slices_and_a_stamp_in_every_unit(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(codec="h265", slices=2, stamp=True, width=320, height=240)
    capture = read_packets(camera.url, 10)
    assert [count_slices(unit, "h265") for unit in capture.packets] == [2] * 10
    counters = []
    for unit in capture.packets:
        (stamp,) = find_stamps(unit)
        counters.append(stamp[1])
        types = nal_types(unit)
        stamp_at = next(i for i, n in enumerate(iter_annexb(unit)) if find_stamp(b"\0\0\1" + n))
        assert types[stamp_at] == PREFIX_SEI
        assert stamp_at < next(i for i, t in enumerate(types) if t < 32)
    assert counters == list(range(counters[0], counters[0] + 10))


def test_h265_bframes_reorder_presentation(rtsp_camera: CameraFactory) -> None:
    camera = rtsp_camera(codec="h265", bframes=2, gop=25, width=320, height=240)
    capture = read_packets(camera.url, 12)
    pts = [p for p in capture.pts if p is not None]
    assert pts != sorted(pts), "B-frames make presentation order differ from decode order"
