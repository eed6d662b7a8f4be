"""``cxrelay probe`` on H.265 cameras: the codec as RFC 6381 spells it, the
profile, level and tier, and which browsers can decode it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cxrelay.probe import (
    ProbeReport,
    _Meter,
    browsers,
    format_report,
    h265_level_name,
    h265_profile_name,
    probe,
)
from tests.recordings import recording


@pytest.mark.parametrize(("level_idc", "name"), [(30, "1"), (60, "2"), (63, "2.1"), (90, "3"),
                                                 (93, "3.1"), (123, "4.1"), (156, "5.2"),
                                                 (186, "6.2")])
def test_h265_level_name(level_idc: int, name: str) -> None:
    assert h265_level_name(level_idc) == name


def test_h265_profile_name() -> None:
    assert h265_profile_name(1) == "Main"
    assert h265_profile_name(2) == "Main 10"
    assert h265_profile_name(4) == "Format Range Extensions"
    assert h265_profile_name(0, 0x60000000) == "Main"  # by its compatibility flags
    assert h265_profile_name(0) == "profile 0"


def test_browsers() -> None:
    main = browsers("H.265", "Main")
    assert main["Safari"] == "yes"
    assert "hardware" in main["Chrome/Edge"] and "hardware" in main["Firefox"]
    assert all(v.startswith("unlikely") for v in browsers("H.265", "Format Range Extensions")
               .values())
    assert set(browsers("H.264", "High").values()) == {"yes"}
    assert all(v.startswith("unlikely") for v in browsers("H.264", "High 10").values())


def test_meter_counts_h265_pictures_from_fu_fragments() -> None:
    """A real RTSP session (x265enc, two slices, FU fragments, parameter sets
    in band and in the SDP), packets back to back within a picture."""
    rec = recording("h265_rtsp_gst", suffix=".h265")
    meter = _Meter(started=0.0, extradata=bytes.fromhex(rec.meta["extradata"]), codec="h265")
    for i, (pts, data, _) in enumerate(rec.packets):
        meter.packet(data, pts, now=i * 0.001)
    meter.finish()
    report = ProbeReport(url="rtsp://cam/", transport="tcp")
    meter.fill(report, wall_seconds=99.0)
    assert report.frames == len({pts for pts, _, _ in rec.packets})
    assert report.keyframes >= 2 and report.params_inband
    assert meter.sps is not None and meter.sps.codec == "hvc1.1.6.L63.90"


def test_format_report_of_an_h265_stream() -> None:
    report = ProbeReport(
        url="rtsp://***@cam/s", transport="tcp", ok=True, seconds_read=5.0,
        codec="hvc1.1.6.L93.B0", profile="Main", level="3.1", tier="Main",
        browsers=browsers("H.265", "Main"), width=1280, height=720, frames=125, keyframes=3,
        params_inband=False, params_in_sdp=True,
    )
    text = format_report(report)
    for fact in ("H.265 Main, level 3.1, Main tier (hvc1.1.6.L93.B0)", "Safari: yes",
                 "Chrome/Edge: only with a hardware H.265 decoder", "VPS/SPS/PPS",
                 "in the SDP only"):
        assert fact in text
    assert json.loads(json.dumps(report.to_json()))["browsers"]["Safari"] == "yes"


@pytest.mark.rtsp
@pytest.mark.parametrize("params", ["inband", "sdp"])
def test_probe_h265_camera(rtsp_camera: Any, params: str) -> None:
    cam = rtsp_camera(codec="h265", gop=25, params=params, slices=2)
    report = probe(cam.url, seconds=3)
    assert report.ok, report.error
    assert report.codec is not None and report.codec.startswith("hvc1.1.6.L")
    assert (report.profile, report.tier, report.width, report.height) == ("Main", "Main", 640,
                                                                          360)
    assert report.level and report.browsers["Safari"] == "yes"
    assert report.params_in_sdp
    assert report.params_inband == (params == "inband")
    assert report.keyframes >= 2 and report.frames >= 50
    assert any("H.265" in warning for warning in report.warnings)
    assert "hardware" in format_report(report)
