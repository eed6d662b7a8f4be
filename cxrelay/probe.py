"""``cxrelay probe``: what an installer needs to know about a camera.

Connects exactly as the relay does (same PyAV options, H.264 parser off),
reads for a few seconds without decoding, and measures what matters for live
viewing: codec, profile and level, size, frame rate, keyframe interval,
bitrate, where the parameter sets come from, and how long a viewer waits.

Blocking: it runs PyAV in the calling thread. Credentials never appear in a
report: the URL is redacted and every error text is scrubbed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cxrelay import h264, h265
from cxrelay.config import TRANSPORTS, validate_url
from cxrelay.h264 import split_annexb
from cxrelay.ingest import Ingest, IngestResult, StreamInfo
from cxrelay.redact import redact_text, redact_url, url_secrets
from cxrelay.sources.base import SourceError
from cxrelay.sources.pyav import describe, open_input, stream_codec, to_us, video_stream
from cxrelay.sources.rtsp import rtsp_options

__all__ = ["ProbeReport", "browsers", "format_report", "h265_level_name", "h265_profile_name",
           "level_name", "probe", "profile_name"]

# Past this, a viewer who joins when the GOP cache can't help waits too long.
LONG_KEYFRAME_INTERVAL = 4.0
# What browsers' H.264 decoders reliably take (Constrained Baseline, Main, High).
BROWSER_PROFILES = frozenset({66, 77, 100})
_CONSTRAINT_SET1, _CONSTRAINT_SET3, _CONSTRAINT_SET4, _CONSTRAINT_SET5 = 0x40, 0x10, 0x08, 0x04


@dataclass
class ProbeReport:
    url: str  # always redacted
    transport: str
    ok: bool = False
    error: str | None = None  # one line, scrubbed of credentials
    connect_seconds: float | None = None  # until the camera streams (DESCRIBE, SETUP, PLAY)
    first_keyframe_seconds: float | None = None  # from the start, connecting included
    seconds_read: float = 0.0
    codec: str | None = None  # RFC 6381 ("avc1.64001f", "hvc1.1.6.L93.B0"); else FFmpeg's name
    profile: str | None = None  # "High", "Constrained Baseline", "Main 10", ...
    level: str | None = None  # "3.1"
    tier: str | None = None  # H.265: "Main" or "High"
    # Whether common browsers can decode it: {"Chrome/Edge": "yes", ...}
    browsers: dict[str, str] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    fps: float | None = None  # measured from the timestamps
    sps_fps: float | None = None  # declared in the SPS (VUI timing), if at all
    keyframe_interval_seconds: float | None = None  # the longest seen
    keyframe_interval_frames: int | None = None  # frames in that interval
    keyframes: int = 0
    frames: int = 0
    bitrate: int | None = None  # bits per second, measured
    params_inband: bool = False  # SPS and PPS (and H.265's VPS) seen in the stream itself
    params_in_sdp: bool = False  # ... in the SDP (sprop-parameter-sets, sprop-vps/sps/pps)
    b_frames: bool = False  # frames come out of presentation order
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 3)
        return data


# --- names ------------------------------------------------------------------------------------

_PROFILES = {
    66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
    122: "High 4:2:2", 244: "High 4:4:4 Predictive", 44: "CAVLC 4:4:4 Intra",
    83: "Scalable Baseline", 86: "Scalable High", 118: "Multiview High", 128: "Stereo High",
}


def profile_name(profile_idc: int, constraint_flags: int = 0) -> str:
    """The H.264 profile's name (Annex A), constraint flags considered."""
    if profile_idc == 66 and constraint_flags & _CONSTRAINT_SET1:
        return "Constrained Baseline"
    if profile_idc == 100 and constraint_flags & _CONSTRAINT_SET4:
        both = _CONSTRAINT_SET4 | _CONSTRAINT_SET5
        return "Constrained High" if constraint_flags & both == both else "Progressive High"
    return _PROFILES.get(profile_idc, f"profile {profile_idc}")


def level_name(level_idc: int, profile_idc: int = 0, constraint_flags: int = 0) -> str:
    """"3.1" for level_idc 31; "1b" has two spellings (A.3.1, A.3.2)."""
    if level_idc == 9 or (
        level_idc == 11 and profile_idc in (66, 77, 88) and constraint_flags & _CONSTRAINT_SET3
    ):
        return "1b"
    major, minor = divmod(level_idc, 10)
    return f"{major}.{minor}" if minor else str(major)


_H265_PROFILES = {
    1: "Main", 2: "Main 10", 3: "Main Still Picture", 4: "Format Range Extensions",
    5: "High Throughput", 6: "Multiview Main", 7: "Scalable Main", 8: "3D Main",
    9: "Screen Content Coding", 10: "Scalable Format Range Extensions",
    11: "High Throughput Screen Content Coding",
}


def h265_profile_name(profile_idc: int, compatibility_flags: int = 0) -> str:
    """The H.265 profile's name (A.3); with profile_idc 0, the first profile
    the stream says it conforms to."""
    if profile_idc not in _H265_PROFILES:
        profile_idc = next((j for j in range(1, 32) if compatibility_flags >> (31 - j) & 1),
                           profile_idc)
    return _H265_PROFILES.get(profile_idc, f"profile {profile_idc}")


def h265_level_name(level_idc: int) -> str:
    """"3.1" for general_level_idc 93 (30 times the level)."""
    major, minor = divmod(level_idc, 30)
    return f"{major}.{minor // 3}" if minor else str(major)


# What Safari, Chrome/Edge and Firefox decode, by format and profile (field notes:
# Chrome and Edge decode H.265 only with a platform/hardware decoder; Safari does;
# Firefox on Linux does through the system's FFmpeg, on the Media Source path only
# (Firefox ESR 153 on Debian 12, tests/browser/test_h265.py), elsewhere only with a
# hardware decoder).
_HARDWARE = "only with a hardware H.265 decoder"
_FIREFOX = "Linux: yes (Media Source, system FFmpeg); elsewhere " + _HARDWARE
_H265_BROWSERS = {
    "Main": {"Safari": "yes", "Chrome/Edge": _HARDWARE, "Firefox": _FIREFOX},
    "Main 10": {"Safari": "yes", "Chrome/Edge": _HARDWARE, "Firefox": _FIREFOX},
}


def browsers(format_: str, profile: str) -> dict[str, str]:
    """Whether common browsers can decode a stream of this format and profile."""
    if format_ == "H.264":
        ok = profile in ("Constrained Baseline", "Baseline", "Main", "High",
                         "Constrained High", "Progressive High")
        answer = "yes" if ok else "unlikely (not Baseline, Main or High)"
        return dict.fromkeys(("Chrome/Edge", "Firefox", "Safari"), answer)
    return _H265_BROWSERS.get(profile, dict.fromkeys(
        ("Chrome/Edge", "Firefox", "Safari"), f"unlikely ({profile}: few decoders take it)"))


@dataclass(frozen=True)
class _Format:
    """What the probe reads of a codec's stream."""

    name: str  # "H.264"
    nal_type: Callable[[bytes], int]
    sps: int  # the SPS's NAL unit type
    parameter_sets: frozenset[int]  # all of them needed to decode
    parse_sps: Callable[[bytes], Any]
    parse_extradata: Callable[[bytes], list[bytes]]
    error: type[ValueError]


_FORMATS = {
    "h264": _Format("H.264", h264.nal_type, h264.NAL_SPS,
                    frozenset({h264.NAL_SPS, h264.NAL_PPS}), h264.parse_sps,
                    h264.parse_extradata, h264.H264Error),
    "h265": _Format("H.265", h265.nal_type, h265.NAL_SPS, h265.PARAMETER_SETS,
                    h265.parse_sps, h265.parse_extradata, h265.H265Error),
}


# --- measuring --------------------------------------------------------------------------------


@dataclass
class _Unit:
    pts: float  # seconds
    keyframe: bool


class _Meter:
    """Counts pictures as the relay makes them: packets as the relay gets them
    (with FFmpeg's parser off, one or a few NAL units per packet, or a FU-A
    fragment of one) go through the relay's own ``Ingest``."""

    def __init__(self, started: float, extradata: bytes = b"", codec: str = "h264") -> None:
        self.started = started
        self.bytes = 0
        self.units: list[_Unit] = []
        self.sps: Any = None
        self.params_seen: set[int] = set()
        self.first_keyframe_at: float | None = None
        self.use_extradata(extradata, codec)

    def use_extradata(self, extradata: bytes, codec: str = "h264") -> None:
        """The stream's codec and the SDP's parameter sets, before the first packet."""
        self.format = _FORMATS[codec]
        # Pictures before the first keyframe count too: a camera that never
        # sends one is what the probe must report.
        self._ingest = Ingest(StreamInfo(extradata, None, whole_units=False, codec=codec),
                              from_keyframe=False)

    def packet(self, data: bytes, pts_us: int, now: float) -> None:
        self.bytes += len(data)
        form = self.format
        for nal in split_annexb(data):  # none in a fragment's continuation (no start code)
            kind = form.nal_type(nal)
            if kind in form.parameter_sets:
                self.params_seen.add(kind)
                if kind == form.sps:
                    self.sps = _parse_sps(form, nal) or self.sps
        received_us = round(now * 1e6)
        # The relay's idle timer would have fired while this reader waited.
        self._count(self._ingest.flush(received_us))
        self._count(self._ingest.push(data, pts_us, received_us))

    def finish(self) -> None:
        """The end of reading: the picture in progress is complete."""
        self._count(self._ingest.flush())

    def _count(self, result: IngestResult) -> None:
        for frame in result.frames:
            self.units.append(_Unit(frame.pts_us / 1e6, frame.keyframe))
            if frame.keyframe and self.first_keyframe_at is None:
                self.first_keyframe_at = frame.ingest_us / 1e6 - self.started

    def fill(self, report: ProbeReport, wall_seconds: float) -> None:
        report.frames = len(self.units)
        report.keyframes = sum(u.keyframe for u in self.units)
        report.first_keyframe_seconds = self.first_keyframe_at
        report.params_inband = self.params_seen == self.format.parameter_sets
        stamps = [u.pts for u in self.units]
        report.b_frames = any(b < a for a, b in itertools.pairwise(stamps))
        distinct = sorted(set(stamps))
        if len(distinct) >= 2 and distinct[-1] > distinct[0]:
            report.fps = (len(distinct) - 1) / (distinct[-1] - distinct[0])
        self._keyframe_interval(report)
        duration = report.frames / report.fps if report.fps else wall_seconds
        if self.bytes and duration > 0:
            report.bitrate = round(self.bytes * 8 / duration)

    def _keyframe_interval(self, report: ProbeReport) -> None:
        keys = [i for i, u in enumerate(self.units) if u.keyframe]
        longest: tuple[float, int] | None = None
        for a, b in itertools.pairwise(keys):
            interval = (self.units[b].pts - self.units[a].pts, b - a)
            if longest is None or interval > longest:
                longest = interval
        if longest is not None:
            report.keyframe_interval_seconds, report.keyframe_interval_frames = longest


def _parse_sps(form: _Format, nal: bytes) -> Any:
    try:
        return form.parse_sps(nal)
    except form.error:
        return None


def _sdp_parameter_sets(form: _Format, extradata: bytes) -> tuple[bool, Any]:
    """Whether the SDP carried all the parameter sets, and its SPS."""
    try:
        nals = form.parse_extradata(extradata)
    except form.error:
        return False, None
    types = {form.nal_type(n) for n in nals}
    sps = next((s for n in nals if form.nal_type(n) == form.sps
                if (s := _parse_sps(form, n))), None)
    return types == form.parameter_sets, sps


def _describe_sps(report: ProbeReport, form: _Format, sps: Any) -> None:
    report.codec = sps.codec
    report.width, report.height = sps.width, sps.height
    report.sps_fps = sps.fps
    if isinstance(sps, h265.Sps):
        ptl = sps.ptl
        report.profile = h265_profile_name(ptl.profile_idc, ptl.compatibility_flags)
        report.level = h265_level_name(ptl.level_idc)
        report.tier = "High" if ptl.tier_flag else "Main"
        reorder = sps.max_num_reorder_pics
    else:
        report.profile = profile_name(sps.profile_idc, sps.constraint_flags)
        report.level = level_name(sps.level_idc, sps.profile_idc, sps.constraint_flags)
        reorder = sps.max_num_reorder_frames
    report.browsers = browsers(form.name, report.profile)
    if reorder:
        report.b_frames = True


# --- probing ----------------------------------------------------------------------------------


def probe(
    url: str, *, seconds: float = 5.0, transport: str = "tcp", timeout: float = 10.0
) -> ProbeReport:
    """Connect to an RTSP camera as the relay would and measure its stream for
    ``seconds``. Never raises for a camera problem: see ``report.error``."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    report = ProbeReport(url=redact_url(url), transport=transport)
    secrets = url_secrets(url)
    if problem := _url_problem(url):
        report.error = redact_text(problem, secrets)
        return report
    started = time.monotonic()
    try:
        container = open_input(url, options=rtsp_options(transport, timeout, parser=False),
                               open_timeout=timeout, read_timeout=timeout)
    except SourceError as exc:
        report.error = redact_text(str(exc), secrets)
        return report
    report.connect_seconds = time.monotonic() - started
    meter = _Meter(started)
    try:
        _read(container, report, meter, seconds)
    except SourceError as exc:
        report.error = redact_text(str(exc), secrets)
    except Exception as exc:  # whatever FFmpeg throws mid-stream: a reason, no URL
        report.error = redact_text(describe(exc), secrets)
    finally:
        container.close()
    meter.finish()
    meter.fill(report, report.seconds_read)
    if meter.sps is not None:
        _describe_sps(report, meter.format, meter.sps)  # the stream's beats the SDP's
    if report.error is None and report.frames == 0:
        report.error = f"no video in {report.seconds_read:.1f} s"
    report.ok = report.error is None
    report.warnings = _warnings(report)
    return report


def _url_problem(url: str) -> str | None:
    if problem := validate_url(url):
        return problem
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        return "probe takes an rtsp:// or rtsps:// URL"
    return None


def _read(container: Any, report: ProbeReport, meter: _Meter, seconds: float) -> None:
    video = container.streams.video
    if video:
        report.codec = video[0].codec_context.name  # replaced by avc1/hvc1 once the SPS is known
    stream = video_stream(container)  # SourceError for no video, or neither H.264 nor H.265
    codec = stream_codec(stream)
    extradata = bytes(stream.codec_context.extradata or b"")
    meter.use_extradata(extradata, codec)
    report.params_in_sdp, sdp_sps = _sdp_parameter_sets(meter.format, extradata)
    if sdp_sps is not None:
        _describe_sps(report, meter.format, sdp_sps)
    time_base = stream.time_base
    begin = time.monotonic()
    pts_us = 0
    try:
        for packet in container.demux(stream):
            now = time.monotonic()
            if packet.size:
                pts = packet.pts if packet.pts is not None else packet.dts
                pts_us = to_us(pts, time_base) if pts is not None else pts_us  # as the relay does
                meter.packet(bytes(packet), pts_us, now)
            if now - begin >= seconds:
                break
        else:
            raise SourceError("end of stream")
    finally:
        report.seconds_read = time.monotonic() - begin


def _warnings(r: ProbeReport) -> list[str]:
    out: list[str] = []
    if r.frames and not r.keyframes:
        out.append(f"no keyframe in {r.seconds_read:.1f} s: viewers see nothing until one "
                   "comes; set the camera's keyframe (I-frame) interval to 1-2 s")
    elif r.keyframes == 1 and r.keyframe_interval_seconds is None:
        out.append(f"one keyframe in {r.seconds_read:.1f} s: the keyframe interval is longer "
                   "than that; probe longer (--seconds) to measure it, and aim for 1-2 s")
    if r.keyframe_interval_seconds and r.keyframe_interval_seconds > LONG_KEYFRAME_INTERVAL:
        out.append(f"keyframes only every {r.keyframe_interval_seconds:.1f} s: a new viewer "
                   "may wait that long for a picture; 1-2 s is best for live viewing")
    if r.frames and not (r.params_inband or r.params_in_sdp):
        out.append(f"no {_params_name(r)} seen, neither in the stream nor in the SDP: "
                   "browsers cannot decode this stream")
    if r.b_frames:
        out.append("the stream has B-frames, which add delay: turn them off in the camera "
                   "if you can (a Baseline or Main profile, 'low latency' mode)")
    if r.codec and r.codec.startswith("avc1.") and r.profile and \
            int(r.codec[5:7], 16) not in BROWSER_PROFILES:
        out.append(f"{r.profile} profile: browsers may not decode it; use Baseline, Main "
                   "or High")
    if _format_name(r) == "H.265":
        out.append("H.265: Safari and Firefox on Linux play it, but Chrome, Edge and Firefox "
                   "elsewhere only with a hardware H.265 decoder; for viewers without one, give "
                   "the camera an H.264 sub-stream")
    if r.fps and r.sps_fps and abs(r.fps - r.sps_fps) > 0.2 * r.sps_fps:
        out.append(f"the camera sends {r.fps:.1f} fps but declares {r.sps_fps:g} fps")
    return out


# --- output -----------------------------------------------------------------------------------


def format_report(report: ProbeReport) -> str:
    """The report for people, one fact per line."""
    r = report
    lines = [("camera", r.url), ("result", "OK" if r.ok else f"FAILED: {r.error}"),
             ("transport", r.transport)]
    if r.connect_seconds is not None:
        lines.append(("connect", f"{r.connect_seconds:.2f} s"))
    if r.first_keyframe_seconds is not None:
        lines.append(("first keyframe", f"after {r.first_keyframe_seconds:.2f} s"))
    if r.codec:
        detail = r.codec
        if r.profile:
            tier = f", {r.tier} tier" if r.tier else ""
            detail = f"{_format_name(r)} {r.profile}, level {r.level}{tier} ({r.codec})"
        lines.append(("codec", detail))
    if r.browsers:
        lines.append(("browsers", "; ".join(f"{name}: {answer}"
                                            for name, answer in sorted(r.browsers.items()))))
    if r.width and r.height:
        lines.append(("size", f"{r.width}x{r.height}"))
    if r.fps or r.sps_fps:
        parts = [f"{r.fps:.2f} measured" if r.fps else "not measured"]
        if r.sps_fps:
            parts.append(f"{r.sps_fps:g} declared in the SPS")
        lines.append(("frame rate", ", ".join(parts)))
    if r.keyframe_interval_seconds is not None:
        lines.append(("keyframes", f"every {r.keyframe_interval_seconds:.2f} s "
                                   f"({r.keyframe_interval_frames} frames)"))
    elif r.frames:
        lines.append(("keyframes", f"{r.keyframes} in {r.seconds_read:.1f} s"))
    if r.bitrate:
        lines.append(("bitrate", f"{r.bitrate / 1e6:.2f} Mbit/s"))
    if r.frames:
        lines.append((_params_name(r), _params_text(r)))
        lines.append(("B-frames", "yes" if r.b_frames else "no"))
        lines.append(("read", f"{r.frames} frames in {r.seconds_read:.1f} s"))
    width = max(len(k) for k, _ in lines)
    text = [f"{key:<{width}}  {value}" for key, value in lines]
    text += [f"warning: {w}" for w in r.warnings]
    return "\n".join(text)


def _format_name(r: ProbeReport) -> str | None:
    """"H.264" or "H.265", from the RFC 6381 codec string."""
    prefix = (r.codec or "")[:4]
    return {"avc1": "H.264", "avc3": "H.264", "hvc1": "H.265", "hev1": "H.265"}.get(prefix)


def _params_name(r: ProbeReport) -> str:
    return "VPS/SPS/PPS" if _format_name(r) == "H.265" else "SPS/PPS"


def _params_text(r: ProbeReport) -> str:
    if r.params_inband and r.params_in_sdp:
        return "in the stream and in the SDP"
    if r.params_inband:
        return "in the stream only"
    if r.params_in_sdp:
        return "in the SDP only"
    return "missing"
