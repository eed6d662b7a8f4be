"""From a camera's packets to whole pictures, for any codec. Pure: no asyncio,
av or websockets; tests feed it bytes.

One ``Ingest`` per stream (a source's connection): it rejoins FU-A fragments
(``FragmentJoiner``), has the codec's ``Assembler`` group NAL units into
access units, holds frames back until the first keyframe, says when the
stream's parameters change (a new ``init`` for the viewers), counts what the
assembler dropped by reason, and says until when a held picture may wait for
more packets before the idle flush takes it as complete.

A picture goes out the moment ingest can tell it is whole: its last slice
came (the learned slice layout says so, or the source's packets are whole
pictures: ``StreamInfo.whole_pictures``) and no NAL unit of it may still be
missing a fragment. One it can't tell is whole (the layout is not known yet,
or differs; or its last NAL unit ended on a full-size fragment, which may go
on) waits for the next packet, whose start tells, or for about one frame
interval (longer for a fragment, see HOLD_MAX_US). A few milliseconds of quiet
are no evidence: the quiet is measured from the source thread's last push, and
a thread starved of CPU (or of the GIL) leaves the rest of the picture unread
in the socket meanwhile; an idle flush then cuts the picture short.

A codec plugs in by implementing ``Assembler`` (and its ``AccessUnit``) and
adding a branch to ``new_assembler``; the sources choose the codec through
``StreamInfo.codec``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cxrelay.fragments import FragmentJoiner

__all__ = [
    "HOLD_MAX_US",
    "HOLD_MIN_US",
    "AccessUnit",
    "Assembler",
    "Ingest",
    "IngestResult",
    "StreamInfo",
    "StreamParams",
    "new_assembler",
]

# How long a picture ingest can't tell is whole may wait for more packets
# before the idle flush takes it as complete: one frame interval (the smallest
# timestamp step of the last few pictures), within these bounds. In a flowing
# stream the next picture's first packet ends the wait sooner; the bound is for
# a camera that pauses. Not less than a starved thread's usual lag behind the
# socket (a few scheduler slices on a loaded machine); not more than a
# fraction of a second for a camera that sends a picture a second.
# A NAL unit that ended on a full-size fragment waits HOLD_MAX_US: a
# payloader sends a NAL unit's fragments back to back, so only a starved
# thread keeps them apart, and the chance that a full-size fragment was the
# last is about one in the fragment size (seen at load 19 on 2 cores: a
# thread starved past a 40 ms hold between two fragments).
HOLD_MIN_US = 25_000
HOLD_MAX_US = 250_000
_HOLD_UNKNOWN_US = 100_000  # before two pictures give the frame interval
_INTERVALS = 8  # timestamp steps the frame interval is learned from


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source knows about a stream when it connects."""

    extradata: bytes  # parameter sets from the SDP or container; may be empty
    transport: str | None  # "tcp" / "udp" for RTSP
    whole_units: bool  # packets are whole access units (FFmpeg's parser, files, demo)
    codec: str = "h264"  # which Assembler groups its NAL units
    # Each packet is exactly one picture, never part of one: MP4/MKV samples, an
    # encoder's output. (FFmpeg's parser, on RTSP or a raw .h264, can cut a
    # picture in two: not these.) A picture then leaves with its packet whatever
    # its slices: a stream sliced by size has no layout to learn, and would wait
    # for the next picture.
    whole_pictures: bool = False


@dataclass(frozen=True, slots=True)
class StreamParams:
    """What a decoder must know before the first frame: the viewers' ``init``."""

    codec: str  # RFC 6381 codec string, e.g. "avc1.42c01e"
    width: int
    height: int


class AccessUnit(Protocol):
    """One whole picture, as a codec's assembler emits it."""

    @property
    def data(self) -> bytes: ...  # Annex B, ready to send

    @property
    def pts_us(self) -> int: ...  # presentation timestamp, as pushed

    @property
    def ingest_us(self) -> int: ...  # arrival of the packet that completed it

    @property
    def keyframe(self) -> bool: ...  # a decoder can start here (its parameter sets included)

    @property
    def discontinuity(self) -> bool: ...  # pictures were dropped since the previous one

    @property
    def params(self) -> StreamParams | None: ...  # known for every keyframe


class Assembler(Protocol):
    """Groups one codec's NAL units into access units. ``push`` and ``flush``
    never raise: bad input is dropped, counted in ``drops``, and the next unit
    out carries ``discontinuity``."""

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> Sequence[AccessUnit]:
        """Annex B data (NAL units, or whole access units) in decode order;
        the access units it completes."""
        ...

    def flush(self) -> Sequence[AccessUnit]:
        """Take the unit being assembled as complete (idle flush, end of stream)."""
        ...

    def reset(self) -> None:
        """Forget the stream's state (the partial unit is dropped); parameter sets are kept."""
        ...

    @property
    def pending(self) -> bool:
        """A unit with at least one slice is being assembled."""
        ...

    @property
    def slice_count_known(self) -> bool:
        """push() will emit the pending unit with its last slice: no idle flush needed."""
        ...

    @property
    def drops(self) -> Mapping[str, int]:
        """Pictures dropped since the start, by reason ("partial", "corrupt", ...)."""
        ...


def new_assembler(info: StreamInfo) -> Assembler:
    """The assembler for the stream's codec, primed with its extradata."""
    if info.codec == "h264":
        # Imported here: cxrelay.h264 imports StreamParams from this module.
        from cxrelay.h264 import AccessUnitAssembler

        return AccessUnitAssembler(info.extradata)
    if info.codec == "h265":
        from cxrelay.h265 import AccessUnitAssembler as H265Assembler

        return H265Assembler(info.extradata)
    raise ValueError(f"no assembler for codec {info.codec!r}")


@dataclass(slots=True)
class IngestResult:
    frames: list[AccessUnit] = field(default_factory=list)  # whole pictures, decode order
    # frames[i] is the keyframe that starts a stream with new parameters:
    # announce them (an ``init``) before sending it. Empty nearly always.
    inits: dict[int, StreamParams] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # newly dropped pictures, by reason
    # Wall clock (as ``received_us``) at which ``flush(now)`` would take what is
    # held as complete (``Ingest.hold_us`` after the last push); None: nothing
    # waits for the idle flush.
    deadline_us: int | None = None


class Ingest:
    """Packets of one stream in, whole pictures out. Not thread-safe: one
    caller at a time (a source's thread pushes, and the loop's idle timer
    flushes, under the source's lock)."""

    def __init__(self, info: StreamInfo, *, hold_us: int | None = None,
                 assembler: Assembler | None = None, from_keyframe: bool = True) -> None:
        """``hold_us``: how long a picture that may not be whole waits for more
        packets; None: about one frame interval, learned from the timestamps."""
        self.info = info
        self._hold_us = hold_us
        self._steps: deque[int] = deque(maxlen=_INTERVALS)  # timestamp steps > 0
        self._last_pts: int | None = None
        # No decoder can start before a keyframe, so frames before the first
        # are held back; a probe, counting pictures, wants them all.
        self.from_keyframe = from_keyframe
        self._assembler = assembler if assembler is not None else new_assembler(info)
        # Whole-unit sources need no rejoining; they still go through the
        # assembler, since FFmpeg's parser can cut a multi-slice picture in two.
        self._joiner = None if info.whole_units else FragmentJoiner(
            header_size=2 if info.codec == "h265" else 1)
        self._params: StreamParams | None = None
        self._drops_seen = dict(self._assembler.drops)
        self.deadline_us: int | None = None

    @property
    def hold_us(self) -> int:
        """How long a picture whose last slice can't be told waits for more packets."""
        if self._hold_us is not None:
            return self._hold_us
        if not self._steps:
            return _HOLD_UNKNOWN_US
        return min(max(min(self._steps), HOLD_MIN_US), HOLD_MAX_US)

    @property
    def params(self) -> StreamParams | None:
        """The stream's parameters, once a keyframe has announced them."""
        return self._params

    def push(self, data: bytes, pts_us: int, received_us: int) -> IngestResult:
        """One packet as the source read it, and the wall clock (µs) it arrived."""
        assembler = self._assembler
        if self._joiner is None:
            units = list(assembler.push(data, pts_us, received_us))
            if self.info.whole_pictures:
                units += assembler.flush()
        else:
            units = []
            for chunk in self._joiner.push(data, pts_us, received_us):
                units += assembler.push(chunk.data, chunk.pts_us, chunk.ingest_us)
        # Held: a NAL unit that ended on a full-size fragment, or a picture
        # whose last slice can't be told. Only more data says it is whole.
        if self._joiner is not None and self._joiner.pending:
            hold: int | None = HOLD_MAX_US if self._hold_us is None else self._hold_us
        elif assembler.pending and not assembler.slice_count_known:
            hold = self.hold_us
        else:
            hold = None
        self.deadline_us = None if hold is None else received_us + hold
        return self._result(units)

    def flush(self, now_us: int | None = None) -> IngestResult:
        """The idle flush: once ``now_us`` has reached the deadline, whatever
        is held is taken as complete. ``None``: flush now (end of stream)."""
        if now_us is not None and (self.deadline_us is None or now_us < self.deadline_us):
            return self._result([])
        self.deadline_us = None
        units: list[AccessUnit] = []
        if self._joiner is not None:
            for chunk in self._joiner.flush():
                units += self._assembler.push(chunk.data, chunk.pts_us, chunk.ingest_us)
        units += self._assembler.flush()
        return self._result(units)

    def _result(self, units: list[AccessUnit]) -> IngestResult:
        result = IngestResult(deadline_us=self.deadline_us)
        frames = result.frames
        for unit in units:
            last, self._last_pts = self._last_pts, unit.pts_us
            if last is not None and 0 < unit.pts_us - last <= 4 * HOLD_MAX_US:
                self._steps.append(unit.pts_us - last)
            if unit.keyframe:
                params = unit.params
                if params is not None and params != self._params:
                    self._params = params
                    result.inits[len(frames)] = params
            if self._params is not None or not self.from_keyframe:
                frames.append(unit)
        drops = self._assembler.drops
        if drops != self._drops_seen:
            seen = self._drops_seen
            result.drops = {reason: count - seen.get(reason, 0) for reason, count in drops.items()
                            if count != seen.get(reason, 0)}
            self._drops_seen = dict(drops)
        return result
