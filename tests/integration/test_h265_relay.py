"""H.265 cameras end to end: the GStreamer test camera's H.265 mount (x265enc,
rtph265pay, two slices) in, real WebSocket viewers out. Nothing is re-encoded:
each message is one whole picture, keyframes carry VPS/SPS/PPS, and the NAL
units are the camera's own."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from cxrelay.config import CameraConfig
from cxrelay.h264 import split_annexb
from cxrelay.h265 import IRAP, NAL_PPS, NAL_SPS, NAL_VPS, nal_type, parse_sps
from cxrelay.protocol import FLAG_DISCONTINUITY, FLAG_KEYFRAME, Frame
from tests.camera.harness import read_packets
from tests.camera.stamp import count_slices, find_stamp, find_stamps, stamp_of_nal
from tests.integration.test_relay_rtsp import first_live_frames
from tests.recordings import DATA
from tests.support import api_camera, make_config, running_relay, viewer

pytestmark = pytest.mark.rtsp
PARAMETER_SETS = [NAL_VPS, NAL_SPS, NAL_PPS]


def types(frame: Frame) -> list[int]:
    return [nal_type(n) for n in split_annexb(frame.payload)]


def assert_keyframes_carry_parameter_sets(frames: list[Frame]) -> None:
    assert frames[0].flags & FLAG_KEYFRAME
    keyframes = [f for f in frames if f.flags & FLAG_KEYFRAME]
    assert len(keyframes) >= 2
    for key in keyframes:
        kinds = types(key)
        first_slice = next(i for i, k in enumerate(kinds) if k < 32)
        assert kinds[first_slice] in IRAP
        # Each once, in the order a decoder needs them, before the slices.
        assert [k for k in kinds if k in PARAMETER_SETS] == PARAMETER_SETS
        assert kinds.index(NAL_PPS) < first_slice
    for delta in (f for f in frames if not f.flags & FLAG_KEYFRAME):
        kinds = types(delta)
        assert not set(kinds) & set(PARAMETER_SETS) and not set(kinds) & IRAP


async def test_h265_camera_is_relayed_picture_by_picture_unchanged(rtsp_camera) -> None:
    # A small MTU: NAL units cut in several FU fragments, which the relay rejoins.
    cam = rtsp_camera(codec="h265", slices=2, stamp=True, gop=10, mtu=500)
    async with running_relay(make_config({"cam": cam.url})) as relay, \
            viewer(relay.server.port, "cam") as v:
        # What the camera sends, read at the same time by FFmpeg (its parser on).
        reading = asyncio.create_task(asyncio.to_thread(read_packets, cam.url, 30))
        init, frames = await first_live_frames(v, 70)
        capture = await reading
        assert init["codec"].startswith("hvc1.1.6.L")  # Main profile
        assert (init["width"], init["height"]) == (640, 360)
        sps = parse_sps(next(n for n in split_annexb(frames[0].payload)
                             if nal_type(n) == NAL_SPS))
        assert sps.codec == init["codec"]
        assert_keyframes_carry_parameter_sets(frames)
        # One message, one whole picture: both slices, one stamp, every picture in
        # order. A gap is allowed only where the relay says so: on a busy machine
        # this in-process viewer can fall behind and be cut back to a keyframe, or
        # a starved source thread can cut a picture, which is dropped; the frame
        # after a gap carries the discontinuity flag (protocol v1's contract).
        counters = []
        for frame in frames:
            assert count_slices(frame.payload, "h265") == 2
            (stamp,) = find_stamps(frame.payload)
            counters.append(stamp[1])
        resumed = 0
        for (a, _), (b, frame) in itertools.pairwise(zip(counters, frames, strict=True)):
            if b != a + 1:
                assert b > a, f"picture {b} after {a}: out of order or repeated"
                assert frame.flags & FLAG_DISCONTINUITY, \
                    f"picture {b} after {a}: a gap the relay did not flag"
                resumed += 1
        assert resumed <= 3, f"{resumed} gaps in {len(frames)} pictures"
        assert all(a.pts_us != b.pts_us for a, b in itertools.pairwise(frames))
        # Byte for byte the camera's NAL units, in a row (the relay writes 4-byte
        # start codes). Found around each stamp in all the NAL units the reader
        # got, not in its units: on a loaded machine FFmpeg's parser, the
        # reference, sometimes cuts a picture elsewhere (a unit without a stamp).
        camera = [nal for unit in capture.packets for nal in split_annexb(unit)]
        at = {stamp[1]: i for i, nal in enumerate(camera)
              if (stamp := stamp_of_nal(nal)) is not None}
        compared = 0
        for frame in frames:
            nals = split_annexb(frame.payload)
            stamp = find_stamp(frame.payload)[1]
            if stamp not in at:
                continue
            start = at[stamp] - next(i for i, n in enumerate(nals) if stamp_of_nal(n))
            if start >= 0 and start + len(nals) <= len(camera):  # not cut by the capture
                assert nals == camera[start:start + len(nals)], f"picture {stamp}"
                compared += 1
        assert compared >= 10
        info = await api_camera(relay.server.port, "cam")
        assert (info["codec"], info["width"], info["height"]) == (init["codec"], 640, 360)


async def test_h265_sdp_only_parameter_sets_go_in_front_of_each_keyframe(rtsp_camera) -> None:
    cam = rtsp_camera(codec="h265", params="sdp", gop=8, slices=2)
    async with running_relay(make_config({"cam": cam.url})) as relay, \
            viewer(relay.server.port, "cam") as v:
        init, frames = await first_live_frames(v, 25)
        assert init["codec"].startswith("hvc1.")
        assert_keyframes_carry_parameter_sets(frames)
        assert all(count_slices(f.payload, "h265") == 2 for f in frames)


async def test_h265_with_ffmpegs_parser(rtsp_camera) -> None:
    """assembly = "parser": FFmpeg's hevc parser cuts the pictures; they come out the same."""
    cam = rtsp_camera(codec="h265", slices=2, stamp=True, gop=10)
    camera = CameraConfig(name="cam", url=cam.url, assembly="parser")
    async with running_relay(make_config([camera])) as relay, \
            viewer(relay.server.port, "cam") as v:
        init, frames = await first_live_frames(v, 25)
        assert init["codec"].startswith("hvc1.")
        assert_keyframes_carry_parameter_sets(frames)
        counters = [find_stamp(f.payload)[1] for f in frames]
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        assert all(count_slices(f.payload, "h265") == 2 for f in frames)


async def test_h265_file_with_an_hvcc_record() -> None:
    """A Matroska file keeps its parameter sets in the hvcC record only: the
    file source turns the stream into Annex B with them in front of each keyframe."""
    path = str(DATA / "h265_extradata_only.mkv")
    async with running_relay(make_config({"file": path})) as relay, \
            viewer(relay.server.port, "file") as v:
        init, frames = await first_live_frames(v, 30)
        assert (init["codec"], init["width"], init["height"]) == ("hvc1.1.6.L63.90", 640, 360)
        assert_keyframes_carry_parameter_sets(frames)
        assert all(count_slices(f.payload, "h265") == 2 for f in frames)
