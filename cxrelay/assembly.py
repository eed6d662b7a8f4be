"""The codec-neutral half of grouping NAL units into access units, one whole
picture each: a picture's slices and the NAL units around them, the learned
slice layout that lets a picture out with its last slice, partial pictures
held or dropped, parameter sets put in front of keyframes. Pure: stdlib only.

The layout is a guess from earlier pictures. Once a picture sent with the
layout's last slice proves longer (more of its slices come), the guess is
wrong for this camera (one that slices by size, say, one slice for small
pictures, several for keyframes): the stream's pictures then wait for the
next one's start, and are never again sent by layout, until a new sequence
or a reset.

H.264 (``cxrelay.h264.assembler``) and H.265 (``cxrelay.h265.assembler``)
subclass ``PictureAssembler``: they say what each NAL unit is and read slice
headers; this module does the rest the same way for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from cxrelay.annexb import START_CODE, split_nals
from cxrelay.ingest import StreamParams

__all__ = ["AccessUnit", "Picture", "PictureAssembler", "SequenceParams", "SliceInfo"]

# Bounds on what a broken stream can make the assembler hold: NAL units in one
# picture (cameras that slice per macroblock row stay far below), and NAL units
# waiting for a picture to join.
MAX_UNIT_NALS = 4096
MAX_TAIL_NALS = 256


class SequenceParams(Protocol):
    """What every codec's SPS tells a viewer."""

    @property
    def codec(self) -> str: ...  # RFC 6381

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


S = TypeVar("S", bound=SequenceParams)


@dataclass(frozen=True, slots=True)
class AccessUnit(Generic[S]):
    data: bytes  # the whole picture, Annex B with 4-byte start codes, ready to send
    pts_us: int  # presentation timestamp, µs (as pushed)
    ingest_us: int  # wall clock (µs) of the push that delivered its last NAL unit
    keyframe: bool  # a decoder can start here; then data always holds the parameter sets
    sps: S | None  # the SPS active for its slices (None only if unknown)
    discontinuity: bool  # units were dropped (partial/corrupt) since the previous one emitted
    slices: int  # number of slices (VCL NAL units of the types the codec reads)

    @property
    def params(self) -> StreamParams | None:
        sps = self.sps
        return None if sps is None else StreamParams(sps.codec, sps.width, sps.height)


class SliceInfo:
    """What the assembler keeps of a slice header."""

    __slots__ = ("address", "colour_plane", "key", "redundant")

    def __init__(self, address: int, key: tuple[object, ...], colour_plane: int = 0,
                 redundant: bool = False) -> None:
        self.address = address  # where the slice starts: 0 for a picture's first
        # Equal keys <=> same primary coded picture, address aside.
        self.key = key
        self.colour_plane = colour_plane
        self.redundant = redundant

    def continues(self, previous: SliceInfo) -> bool:
        """This slice belongs to the picture ``previous`` belongs to."""
        if self.redundant:
            return True
        if self.address == 0 and self.colour_plane == 0:
            return False
        return self.key == previous.key


class Picture(Generic[S]):
    """The access unit being assembled."""

    __slots__ = (
        "addresses",
        "corrupt",
        "headless",
        "ingest",
        "keyframe",
        "last",
        "nals",
        "needs",
        "present",
        "pts",
        "slices",
        "sps",
        "unknown_params",
    )

    def __init__(self, pts: int, ingest: int, lead: list[bytes], present: set[tuple[int, int]],
                 corrupt: bool) -> None:
        self.nals = lead
        self.pts = pts
        self.ingest = ingest
        self.addresses: list[int] = []  # of the primary slices, in arrival order
        self.last: SliceInfo | None = None
        self.slices = 0
        self.keyframe = False
        self.sps: S | None = None
        self.corrupt = corrupt
        self.headless = False  # its first VCL NAL unit had no slice header
        self.unknown_params = False  # a slice refers to a parameter set never seen
        # Parameter sets a keyframe needs, as they were when its slices came,
        # keyed (nal type, id); and those it carries before its first slice.
        self.needs: dict[tuple[int, int], bytes] = {}
        self.present = present


class PictureAssembler(Generic[S]):
    """Groups NAL units into access units, one whole picture each.

    Feed it Annex B in arrival (decode) order: whole NAL units, one at a time,
    a few (aggregation packets), or whole access units. A unit is complete
    when the next one starts (access unit delimiter, new timestamp, parameter
    sets/SEI then a slice of a new picture, or a slice of a new picture), when
    ``flush()`` is called, or, once the slice layout of the stream is known,
    as soon as its last slice arrives.

    Driving it from a live source: after each push, if ``pending and not
    slice_count_known``, arm an idle timer that calls ``flush()``; it must
    be longer than the gap between two slices of one picture as the reader
    sees it, starved of CPU or not, or pictures get cut (the cut-off slices
    are then dropped and counted): ``cxrelay.ingest`` waits about one frame
    interval, which the next picture's start cuts short. Whole-unit
    sources are driven the same way: FFmpeg's parser can cut one picture in
    two packets, and this rejoins them.

    ``push`` and ``flush`` never raise: bad input is dropped and counted, and
    the next unit out carries ``discontinuity``. The only edit to the NAL
    units is parameter sets put in front of a keyframe that lacks them.

    A codec implements ``_dispatch`` (what a NAL unit is, calling the helpers
    below), ``_nal_type``, ``_parse_extradata`` and ``_adopt``, and sets
    ``AUD``, ``VCL``, ``PARAMETER_SETS`` and ``ERROR``.
    """

    AUD: ClassVar[int]  # the access unit delimiter's type
    VCL: ClassVar[frozenset[int]]  # types of the NAL units that carry slices
    PARAMETER_SETS: ClassVar[tuple[int, ...]]  # in the order a keyframe needs them
    ERROR: ClassVar[type[ValueError]]  # what the codec's parsers raise

    def __init__(self, extradata: bytes = b"") -> None:
        """``extradata``: parameter sets from the SDP or container; malformed
        ones are ignored (in-band parameter sets may still come)."""
        self._cur: Picture[S] | None = None
        # NAL units not yet in a picture: before its first slice, or after the
        # current picture's last slice while it is unclear whether they end
        # it (parameter sets/SEI with the same timestamp: the next slice decides).
        self._tail: list[bytes] = []
        self._tail_present: set[tuple[int, int]] = set()
        self._tail_corrupt = False
        self._layout: tuple[int, ...] | None = None  # address of each slice, once confirmed
        self._last_layout: tuple[int, ...] | None = None
        self._layout_failed = False  # a picture sent by layout proved longer: learn no more
        # A unit with fewer slices than the layout: lost slices, or the camera
        # now sends fewer. Held until the next unit tells which (same slices: emit both).
        self._held: Picture[S] | None = None
        # The unit just emitted before the next one started: (pts, last slice,
        # sent by the layout).
        self._prev: tuple[int, SliceInfo | None, bool] | None = None
        self._discontinuity = False
        self.units = 0
        self.dropped_partial = 0
        self.dropped_corrupt = 0
        self.dropped_no_parameter_sets = 0  # keyframes whose parameter sets were never seen
        self.internal_errors = 0  # bugs caught to keep the camera going; should stay 0
        if extradata:
            with contextlib.suppress(self.ERROR):
                self.set_extradata(extradata)

    # --- public -----------------------------------------------------------------------------------

    def set_extradata(self, extradata: bytes) -> None:
        """Adopt the parameter sets of the SDP or container (avcC/hvcC or
        Annex B). Raises the codec's error if any of it is malformed; nothing
        is adopted then, and in-band parameter sets still work."""
        for nal, item in self._parse_extradata(extradata):
            self._adopt(nal, item)

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> list[AccessUnit[S]]:
        """Take Annex B data (one or more NAL units, or a whole access unit);
        return the access units it completes, in decode order."""
        out: list[AccessUnit[S]] = []
        try:
            nals, stray = split_nals(bytes(data))
            if stray:
                self._junk(pts_us, out)
            for nal in nals:
                self._nal(nal, pts_us, ingest_us, out)
        except Exception:  # a bug here must not take a camera down
            self._internal_error()
        return out

    def flush(self) -> list[AccessUnit[S]]:
        """Emit the unit being assembled now (idle timer, whole-unit source, EOF)."""
        out: list[AccessUnit[S]] = []
        try:
            self._close(out, "flush")
        except Exception:  # as in push()
            self._internal_error()
        return out

    @property
    def pending(self) -> bool:
        """A unit with at least one slice is being assembled."""
        return self._cur is not None

    @property
    def slice_count_known(self) -> bool:
        """The slice layout is known and the pending unit follows it, so push()
        will emit the unit when its last slice arrives: no idle timer needed."""
        layout = self._layout
        if layout is None:
            return False
        cur = self._cur
        if cur is None:
            return True
        n = len(cur.addresses)
        return 0 < n < len(layout) and tuple(cur.addresses) == layout[:n]

    @property
    def drops(self) -> Mapping[str, int]:
        """Pictures dropped since the start, by reason: ``partial`` (lost
        slices), ``corrupt`` (malformed, or a keyframe whose parameter sets
        were never seen), ``internal_error`` (a bug caught; should stay 0)."""
        return {
            "partial": self.dropped_partial,
            "corrupt": self.dropped_corrupt + self.dropped_no_parameter_sets,
            "internal_error": self.internal_errors,
        }

    @property
    def layout(self) -> tuple[int, ...] | None:
        """The learned slice layout: where each slice of a picture starts."""
        return self._layout

    def reset(self) -> None:
        """Forget the stream (e.g. reconnect): drop the partial unit and the
        learned layout. Parameter sets are kept."""
        if self._cur is not None:
            self._drop_partial()
        if self._held is not None:
            self._drop_partial()
        self._cur = self._held = None
        self._clear_tail()
        self._forget_layout()
        self._prev = None

    # --- for the codec ----------------------------------------------------------------------------

    @staticmethod
    def _nal_type(nal: bytes) -> int:
        raise NotImplementedError

    def _parse_extradata(self, extradata: bytes) -> list[tuple[bytes, Any]]:
        """(NAL unit, parsed) of each parameter set in extradata, all parsed
        before any is adopted. Raises ``ERROR``."""
        raise NotImplementedError

    def _adopt(self, nal: bytes, item: Any) -> object:
        """Keep a parsed parameter set."""
        raise NotImplementedError

    def _dispatch(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit[S]]) -> None:
        """Hand one NAL unit to the helper for its kind."""
        raise NotImplementedError

    def _delimiter(self, nal: bytes, out: list[AccessUnit[S]]) -> None:
        """An access unit delimiter: the next unit starts here."""
        self._close(out, "boundary")
        self._tail.append(nal)

    def _starter(self, nal: bytes, pts: int, out: list[AccessUnit[S]]) -> None:
        """A NAL unit that starts the next unit if a slice of a new picture follows."""
        cur = self._cur
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
        self._tail.append(nal)

    def _trailing(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit[S]]) -> None:
        """End of sequence/stream, filler, reserved types: they go with the
        picture before them."""
        cur = self._cur
        if cur is not None and pts == cur.pts and not self._tail:
            cur.nals.append(nal)
            cur.ingest = ingest
            return
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
        self._tail.append(nal)

    def _parameter_set_seen(self, kind: int, ident: int | None) -> None:
        """A parameter set arrived in-band (``None``: malformed, not adopted;
        the unit holding it is dropped)."""
        if ident is None:
            self._tail_corrupt = True
        else:
            self._tail_present.add((kind, ident))

    def _forget_layout(self) -> None:
        """The slice layout may have changed (a new SPS, a reset)."""
        self._layout = self._last_layout = None
        self._layout_failed = False

    def _slice(self, nal: bytes, info: SliceInfo, pts: int, ingest: int,
               out: list[AccessUnit[S]], *, keyframe: bool, sps: S | None,
               needs: Mapping[tuple[int, int], bytes]) -> None:
        """A slice whose header was read: ``sps`` None when its parameter sets
        are unknown; ``needs``: the parameter sets a keyframe must carry."""
        cur = self._cur
        if cur is None:
            self._after_emitted(info, pts)
        elif pts != cur.pts or (cur.last is not None and not info.continues(cur.last)):
            self._close(out, "boundary")
            cur = None
        if cur is None:
            cur = self._start(pts, ingest)
        else:
            self._join_tail(cur, ingest)
        cur.nals.append(nal)
        cur.slices += 1
        cur.keyframe |= keyframe
        if sps is None:
            cur.unknown_params = True
        else:
            if cur.sps is None:
                cur.sps = sps
            cur.needs.update(needs)
        if info.redundant:
            return
        if cur.last is None and cur.slices > 1:
            cur.headless = True  # it began with a slice whose header we could not read
        cur.last = info
        cur.addresses.append(info.address)
        layout = self._layout
        if layout is not None and len(cur.addresses) == len(layout) \
                and tuple(cur.addresses) == layout:
            self._close(out, "layout")

    def _add_vcl(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit[S]],
                 corrupt: bool) -> None:
        """A VCL NAL unit without a usable slice header: part of the current
        picture if it has the same timestamp, else the start of a broken one."""
        cur = self._cur
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
            cur = None
        if cur is None:
            self._prev = None
            cur = self._start(pts, ingest)
            cur.headless = True
        else:
            self._join_tail(cur, ingest)
        cur.nals.append(nal)
        cur.slices += 1
        cur.corrupt |= corrupt

    def _junk(self, pts: int, out: list[AccessUnit[S]]) -> None:
        """Bytes that are no NAL unit (or one with a broken header) spoil the
        unit they arrive in."""
        cur = self._cur
        if cur is not None and pts == cur.pts and not self._tail:
            cur.corrupt = True
            return
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
        self._tail_corrupt = True

    # --- NAL units --------------------------------------------------------------------------------

    def _nal(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit[S]]) -> None:
        if self._cur is not None and len(self._cur.nals) >= MAX_UNIT_NALS:
            self._cur.corrupt = True
            self._close(out, "boundary")
        if len(self._tail) >= MAX_TAIL_NALS:
            self._clear_tail()
            self.dropped_corrupt += 1
            self._discontinuity = True
        self._dispatch(nal, pts, ingest, out)

    def _start(self, pts: int, ingest: int) -> Picture[S]:
        cur: Picture[S] = Picture(pts, ingest, self._tail, self._tail_present,
                                  self._tail_corrupt)
        self._tail = []
        self._tail_present = set()
        self._tail_corrupt = False
        self._cur = cur
        return cur

    def _join_tail(self, cur: Picture[S], ingest: int) -> None:
        if self._tail or self._tail_corrupt:
            cur.nals.extend(self._tail)
            cur.corrupt |= self._tail_corrupt
            self._clear_tail()
        cur.ingest = ingest

    def _clear_tail(self) -> None:
        self._tail = []
        self._tail_present = set()
        self._tail_corrupt = False

    # --- completing units -------------------------------------------------------------------------

    def _after_emitted(self, info: SliceInfo, pts: int) -> None:
        """First slice after a unit went out before the next one started: is
        it more of that picture?"""
        prev = self._prev
        if prev is None:
            return
        self._prev = None
        prev_pts, prev_last, by_layout = prev
        if pts == prev_pts and prev_last is not None and info.continues(prev_last):
            # The unit was cut short (the idle flush gave up waiting, or the
            # learned layout is wrong): what was learned from it is wrong.
            self._layout = self._last_layout = None
            # A layout that cut a picture once would again: this camera's
            # pictures don't keep one.
            self._layout_failed |= by_layout

    def _learn(self, layout: tuple[int, ...]) -> None:
        if self._layout_failed:
            return
        if layout == self._last_layout:
            self._layout = layout
        elif self._layout is not None and layout != self._layout:
            self._layout = None
        self._last_layout = layout

    def _close(self, out: list[AccessUnit[S]], how: str) -> None:
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        units = self._finish(cur)
        if not units:
            self._prev = None
            return
        out.extend(units)
        self._learn(tuple(cur.addresses))
        # Closed by the next unit's start, it was whole; else the next slice will tell.
        self._prev = None if how == "boundary" else (cur.pts, cur.last, how == "layout")

    def _finish(self, cur: Picture[S]) -> list[AccessUnit[S]]:
        """The units that closing ``cur`` lets out: none (dropped or held),
        ``cur``, or a held unit and ``cur``."""
        held, self._held = self._held, None
        addresses = tuple(cur.addresses)
        if cur.corrupt or cur.headless or not addresses or addresses[0] != 0:
            if held is not None:
                self._drop_partial()
            if cur.corrupt:
                self.dropped_corrupt += 1
                self._discontinuity = True
            else:
                self._drop_partial()
            return []
        if held is not None:
            if addresses == tuple(held.addresses):
                # The same slices twice: the camera sends fewer now. Both are whole.
                self._layout = self._last_layout = addresses
                return self._build(held) + self._build(cur)
            self._drop_partial()
        layout = self._layout
        if layout is not None and len(addresses) < len(layout) and set(addresses) <= set(layout):
            self._held = cur
            return []
        return self._build(cur)

    def _build(self, cur: Picture[S]) -> list[AccessUnit[S]]:
        nals = cur.nals
        if cur.keyframe:
            if cur.unknown_params:
                self.dropped_no_parameter_sets += 1
                self._discontinuity = True
                return []
            nals = self._with_parameter_sets(cur)
        discontinuity = self._discontinuity
        self._discontinuity = False
        self.units += 1
        return [AccessUnit(
            data=START_CODE + START_CODE.join(nals), pts_us=cur.pts, ingest_us=cur.ingest,
            keyframe=cur.keyframe, sps=cur.sps, discontinuity=discontinuity, slices=cur.slices)]

    def _with_parameter_sets(self, cur: Picture[S]) -> list[bytes]:
        """The keyframe's NAL units with the parameter sets it lacks put in
        front (after a leading AUD): each kind after the kinds it may depend
        on, whether sent or injected."""
        missing = [(key, nal) for key, nal in cur.needs.items() if key not in cur.present]
        if not missing:
            return cur.nals
        nals = list(cur.nals)
        kind_of = self._nal_type
        at = 1 if nals and kind_of(nals[0]) == self.AUD else 0
        for rank, kind in enumerate(self.PARAMETER_SETS):
            before = self.PARAMETER_SETS[:rank]
            pos = at
            for index, nal in enumerate(nals):
                nal_kind = kind_of(nal)
                if nal_kind in self.VCL:
                    break
                if nal_kind in before:
                    pos = index + 1
            nals[pos:pos] = [nal for (k, _), nal in missing if k == kind]
        return nals

    def _drop_partial(self) -> None:
        self.dropped_partial += 1
        self._discontinuity = True

    def _internal_error(self) -> None:
        self.internal_errors += 1
        self._cur = self._held = None
        self._clear_tail()
        self._forget_layout()
        self._prev = None
        self._discontinuity = True
