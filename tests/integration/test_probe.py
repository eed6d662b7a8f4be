"""cxrelay probe: the measurements, against hand-made packets and against the
real GStreamer RTSP camera, and never a password in what it prints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cxrelay.h264 import NAL_PPS, NAL_SPS, nal_type, split_annexb, to_annexb
from cxrelay.probe import ProbeReport, _Meter, format_report, level_name, probe, profile_name
from tests.recordings import recording
from tests.support import free_port

PASSWORD = "Sup3r-s3cret-pw"
WRONG = "Wr0ng-passw0rd-xyz"

# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "flags", "name"),
    [
        (66, 0xC0, "Constrained Baseline"),
        (66, 0x80, "Baseline"),
        (77, 0x40, "Main"),
        (100, 0x00, "High"),
        (100, 0x08, "Progressive High"),
        (100, 0x0C, "Constrained High"),
        (110, 0x00, "High 10"),
        (122, 0x00, "High 4:2:2"),
        (7, 0x00, "profile 7"),
    ],
)
def test_profile_name(profile: int, flags: int, name: str) -> None:
    assert profile_name(profile, flags) == name


@pytest.mark.parametrize(
    ("level", "profile", "flags", "name"),
    [(31, 100, 0, "3.1"), (40, 77, 0, "4"), (9, 100, 0, "1b"), (11, 66, 0x10, "1b"),
     (11, 100, 0x10, "1.1"), (52, 100, 0, "5.2")],
)
def test_level_name(level: int, profile: int, flags: int, name: str) -> None:
    assert level_name(level, profile, flags) == name


# --- measuring recorded streams ---------------------------------------------------------------
# Packets as the relay gets them with FFmpeg's parser off: one NAL unit each,
# or FU-A fragments (the RTSP capture).

Packets = list[tuple[bytes, int]]  # (data, pts in µs)


def nal_packets(units: list[tuple[int, bytes]]) -> Packets:
    return [(b"\x00\x00\x00\x01" + nal, pts) for pts, unit in units
            for nal in split_annexb(unit)]


def recorded(name: str) -> list[tuple[int, bytes]]:
    return [(p.pts, p.data) for p in recording(name).packets]


def feed(meter: _Meter, packets: Packets, spacing: float = 1.0) -> ProbeReport:
    """Packets ``spacing`` seconds apart (the idle flush comes after a frame interval)."""
    for i, (data, pts) in enumerate(packets):
        meter.packet(data, pts, now=i * spacing)
    meter.finish()
    report = ProbeReport(url="rtsp://cam/", transport="tcp")
    meter.fill(report, wall_seconds=99.0)
    return report


def test_meter_measures_fps_keyframes_and_bitrate() -> None:
    packets = nal_packets(recorded("baseline"))  # 60 pictures at 25 fps, keyframes every 25
    report = feed(_Meter(started=0.0), packets)
    assert report.frames == 60
    assert report.keyframes == 3
    assert report.fps == pytest.approx(25.0)
    assert report.keyframe_interval_seconds == pytest.approx(1.0)
    assert report.keyframe_interval_frames == 25
    assert report.params_inband
    assert not report.b_frames
    total = sum(len(data) for data, _ in packets)
    assert report.bitrate == round(total * 8 / (60 / 25))


def test_meter_counts_a_multi_slice_picture_once() -> None:
    report = feed(_Meter(started=0.0), nal_packets(recorded("slices4")))
    assert report.frames == 60
    assert report.keyframes == 3
    assert report.keyframe_interval_frames == 25


def test_meter_counts_pictures_from_fragments() -> None:
    """A real RTSP session: two slices per picture, AUD, FU-A fragments."""
    rec = recording("rtsp_gst")
    meter = _Meter(started=0.0, extradata=bytes.fromhex(rec.meta["extradata"]))
    # A NAL unit's fragments come back to back: no idle flush between them
    # (it would cut the NAL unit, and the picture would be dropped).
    report = feed(meter, [(data, pts) for pts, data, _ in rec.packets], spacing=0.001)
    assert report.frames == len({pts for pts, _, _ in rec.packets})
    assert report.keyframes >= 2


def test_meter_without_inband_parameter_sets() -> None:
    units = recorded("baseline")
    params = [n for n in split_annexb(units[0][1]) if nal_type(n) in (NAL_SPS, NAL_PPS)]
    stripped = [(pts, to_annexb(n for n in split_annexb(unit) if n not in params))
                for pts, unit in units]
    report = feed(_Meter(started=0.0, extradata=to_annexb(params)), nal_packets(stripped))
    assert not report.params_inband
    assert report.keyframes == 3 and report.frames == 60


def test_meter_reports_the_longest_keyframe_interval() -> None:
    # Keyframes at 0, 2 and 3 s: the camera's clock jumps a second after picture 24.
    units = [(pts + (1_000_000 if i >= 25 else 0), unit)
             for i, (pts, unit) in enumerate(recorded("baseline"))]
    report = feed(_Meter(started=0.0), nal_packets(units))
    assert report.keyframe_interval_seconds == pytest.approx(2.0)
    assert report.keyframe_interval_frames == 25


def test_meter_sees_b_frames_and_first_keyframe_time() -> None:
    units = recorded("bframes")  # decode order: presentation stamps go back
    meter = _Meter(started=-2.0)
    report = feed(meter, nal_packets(units))
    assert report.b_frames
    assert report.frames == len(units)
    # In hand with its last NAL unit (packet n - 1, at now = n - 1), counted from -2.
    first = len(split_annexb(units[0][1]))
    assert report.first_keyframe_seconds == pytest.approx(first - 1 + 2.0)


def test_meter_without_keyframes_warns_in_the_report() -> None:
    units = recorded("baseline")[1:25]
    report = feed(_Meter(started=0.0), nal_packets(units))
    assert report.frames == 24
    assert report.keyframes == 0 and report.keyframe_interval_seconds is None
    report.seconds_read = 1.0
    from cxrelay.probe import _warnings

    assert any("no keyframe" in w for w in _warnings(report))


# --- probing without a camera -----------------------------------------------------------------


def test_unreachable_camera_fails_with_a_reason() -> None:
    url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/stream"
    report = probe(url, seconds=1, timeout=5)
    assert not report.ok
    assert report.error and "refused" in report.error.lower()
    assert report.url.startswith("rtsp://***@127.0.0.1:")
    assert_no_secret(report, PASSWORD)


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://cam/stream", "unsupported scheme"), ("/tmp/file.mkv", "rtsp://"),
     (f"rtsp://u:{PASSWORD}@cam:99999/x", "malformed")],
)
def test_bad_urls(url: str, problem: str) -> None:
    report = probe(url, seconds=1)
    assert not report.ok
    assert problem in (report.error or "")
    assert_no_secret(report, PASSWORD)


def test_unknown_transport_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="transport"):
        probe("rtsp://cam/", transport="http")


def test_format_report_of_a_good_stream() -> None:
    report = ProbeReport(
        url="rtsp://***@cam/s", transport="tcp", ok=True, connect_seconds=0.3,
        first_keyframe_seconds=0.5, seconds_read=5.0, codec="avc1.64001f", profile="High",
        level="3.1", width=1280, height=720, fps=25.0, sps_fps=25.0,
        keyframe_interval_seconds=2.0, keyframe_interval_frames=50, keyframes=3, frames=125,
        bitrate=2_000_000, params_inband=True, params_in_sdp=True,
    )
    text = format_report(report)
    assert "OK" in text.splitlines()[1]
    for fact in ("H.264 High, level 3.1 (avc1.64001f)", "1280x720", "25.00 measured",
                 "every 2.00 s (50 frames)", "2.00 Mbit/s", "in the stream and in the SDP"):
        assert fact in text
    assert json.loads(json.dumps(report.to_json()))["codec"] == "avc1.64001f"


# --- the real camera --------------------------------------------------------------------------


def assert_no_secret(report: ProbeReport, secret: str) -> None:
    assert secret not in format_report(report)
    assert secret not in json.dumps(report.to_json())


@pytest.mark.rtsp
def test_probe_inband_camera(rtsp_camera: Any) -> None:
    cam = rtsp_camera(fps=25, gop=50, params="inband")
    report = probe(cam.url, seconds=6)
    assert report.ok, report.error
    assert report.codec is not None and report.codec.startswith("avc1.")
    assert report.profile and report.level
    assert (report.width, report.height) == (640, 360)
    assert report.fps == pytest.approx(25, abs=0.5)
    assert report.sps_fps == pytest.approx(25)
    assert report.keyframe_interval_seconds == pytest.approx(2.0, abs=0.05)
    assert report.keyframe_interval_frames == 50
    assert report.params_inband
    assert not report.b_frames
    assert report.bitrate and report.bitrate > 0
    assert report.connect_seconds is not None and report.first_keyframe_seconds is not None
    assert report.first_keyframe_seconds >= report.connect_seconds
    assert report.warnings == []


@pytest.mark.rtsp
def test_probe_sdp_only_camera(rtsp_camera: Any) -> None:
    cam = rtsp_camera(fps=25, gop=25, params="sdp")
    report = probe(cam.url, seconds=3)
    assert report.ok, report.error
    assert not report.params_inband
    assert report.params_in_sdp
    assert (report.width, report.height) == (640, 360)
    assert report.keyframe_interval_seconds == pytest.approx(1.0, abs=0.05)
    assert "in the SDP only" in format_report(report)


@pytest.mark.rtsp
def test_probe_with_credentials(rtsp_camera: Any) -> None:
    cam = rtsp_camera(user="admin", password=PASSWORD)
    wrong = probe(cam.url_with("admin", WRONG), seconds=1)
    assert not wrong.ok
    assert wrong.error and "401" in wrong.error
    assert_no_secret(wrong, WRONG)

    right = probe(cam.url_with("admin", PASSWORD), seconds=1)
    assert right.ok, right.error
    assert right.url.startswith("rtsp://***@")
    assert_no_secret(right, PASSWORD)


@pytest.mark.rtsp
def test_probe_over_udp(shared_camera: Any) -> None:
    report = probe(shared_camera.url, seconds=1, transport="udp")
    assert report.ok, report.error
    assert report.transport == "udp"
    assert report.frames > 0


# --- through the command line (needs `cxrelay probe` in cxrelay/cli.py) ------------------------


def run_cli(*args: str) -> Any:
    from click.testing import CliRunner

    from cxrelay.cli import main

    return CliRunner().invoke(main, ["probe", *args], catch_exceptions=False)


@pytest.mark.rtsp
def test_cli_probe_json(rtsp_camera: Any) -> None:
    cam = rtsp_camera(user="admin", password=PASSWORD)
    result = run_cli(cam.url_with("admin", PASSWORD), "--json", "--seconds", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["width"] == 640
    assert PASSWORD not in result.output


@pytest.mark.rtsp
def test_cli_probe_failure_exits_1_without_the_password(rtsp_camera: Any) -> None:
    cam = rtsp_camera(user="admin", password=PASSWORD)
    result = run_cli(cam.url_with("admin", WRONG), "--seconds", "1")
    assert result.exit_code == 1
    assert "401" in result.output
    assert WRONG not in result.output


def test_cli_probe_unreachable_transport_option() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/x"
    result = run_cli(url, "--transport", "udp", "--seconds", "1", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and data["transport"] == "udp"
