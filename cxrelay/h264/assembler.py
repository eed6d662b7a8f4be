"""Grouping H.264 NAL units into access units, one whole picture each
(7.4.1.2.3). Pure: stdlib only; the hot path parses headers, never payloads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from cxrelay.h264.bits import (
    NAL_AUD,
    NAL_DPA,
    NAL_DPB,
    NAL_DPC,
    NAL_DPS,
    NAL_IDR,
    NAL_PPS,
    NAL_PREFIX,
    NAL_SEI,
    NAL_SLICE,
    NAL_SPS,
    NAL_SPS_EXT,
    NAL_SUBSET_SPS,
    START_CODE,
    VCL_TYPES,
    H264Error,
    split_nals,
)
from cxrelay.h264.syntax import (
    MissingParameterSet,
    Pps,
    Sps,
    parse_extradata,
    parse_pps,
    parse_slice_header,
    parse_sps,
    slice_prefix,
)
from cxrelay.ingest import StreamParams

# Bounds on what a broken stream can make the assembler hold: NAL units in one
# picture (cameras that slice per macroblock row stay far below), and NAL units
# waiting for a picture to join.
_MAX_UNIT_NALS = 4096
_MAX_TAIL_NALS = 256

# After a VCL NAL unit, the first of these starts a new access unit (7.4.1.2.3);
# 17 and 18 are reserved types the standard lists with them.
_AU_STARTERS = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_SPS_EXT, NAL_PREFIX, NAL_SUBSET_SPS,
                          NAL_DPS, 17, 18})


@dataclass(frozen=True, slots=True)
class AccessUnit:
    data: bytes  # the whole picture, Annex B with 4-byte start codes, ready to send
    pts_us: int  # presentation timestamp, µs (as pushed)
    ingest_us: int  # wall clock (µs) of the push that delivered its last NAL unit
    keyframe: bool  # holds an IDR slice; then data always holds SPS and PPS
    sps: Sps | None  # the SPS active for its slices (None only if unknown)
    discontinuity: bool  # units were dropped (partial/corrupt) since the previous one emitted
    slices: int  # number of VCL NAL units

    @property
    def params(self) -> StreamParams | None:
        sps = self.sps
        return None if sps is None else StreamParams(sps.codec, sps.width, sps.height)


class _Slice:
    """What the assembler keeps of a slice header."""

    __slots__ = ("colour_plane", "first_mb", "key", "redundant")

    def __init__(self, first_mb: int, key: tuple[object, ...], colour_plane: int = 0,
                 redundant: bool = False) -> None:
        self.first_mb = first_mb
        # Equal keys <=> same primary coded picture (7.4.1.2.4), first_mb aside.
        self.key = key
        self.colour_plane = colour_plane
        self.redundant = redundant

    def continues(self, previous: _Slice) -> bool:
        """This slice belongs to the picture ``previous`` belongs to."""
        if self.redundant:
            return True
        if self.first_mb == 0 and self.colour_plane == 0:
            return False
        return self.key == previous.key


class _Picture:
    """The access unit being assembled."""

    __slots__ = (
        "corrupt",
        "first_mbs",
        "headless",
        "idr",
        "ingest",
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
        self.first_mbs: list[int] = []  # of the primary slices, in arrival order
        self.last: _Slice | None = None
        self.slices = 0
        self.idr = False
        self.sps: Sps | None = None
        self.corrupt = corrupt
        self.headless = False  # its first VCL NAL unit had no slice header
        self.unknown_params = False  # a slice refers to a PPS/SPS never seen
        # Parameter sets an IDR picture needs, as they were when its slices came,
        # keyed (nal type, id); and those it carries before its first slice.
        self.needs: dict[tuple[int, int], bytes] = {}
        self.present = present


class AccessUnitAssembler:
    """Groups NAL units into access units (7.4.1.2.3), one whole picture each.

    Feed it Annex B in arrival (decode) order: whole NAL units, one at a time,
    a few (STAP-A), or whole access units. A unit is complete when the next
    one starts (AUD, new timestamp, SPS/PPS/SEI then a slice of a new picture,
    or a slice of a new picture), when ``flush()`` is called, or, once the
    slice layout of the stream is known, as soon as its last slice arrives.

    Driving it from a live source: after each push, if ``pending and not
    slice_count_known``, arm an idle timer that calls ``flush()``; it must
    be longer than the gap between two slices of one picture, or pictures
    get cut (the cut-off slices are then dropped and counted). Whole-unit
    sources are driven the same way: FFmpeg's parser can cut one picture in
    two packets, and this rejoins them.

    ``push`` and ``flush`` never raise: bad input is dropped and counted, and
    the next unit out carries ``discontinuity``. The only edit to the NAL
    units is SPS/PPS put in front of an IDR unit that lacks them.
    """

    def __init__(self, extradata: bytes = b"") -> None:
        self._sps: dict[int, Sps] = {}
        self._pps: dict[int, Pps] = {}
        self._sps_nal: dict[int, bytes] = {}
        self._pps_nal: dict[int, bytes] = {}
        self._cur: _Picture | None = None
        # NAL units not yet in a picture: before its first slice, or after the
        # current picture's last slice while it is unclear whether they end
        # it (SPS/PPS/SEI with the same timestamp: the next slice decides).
        self._tail: list[bytes] = []
        self._tail_present: set[tuple[int, int]] = set()
        self._tail_corrupt = False
        self._layout: tuple[int, ...] | None = None  # first_mb of each slice, once confirmed
        self._last_layout: tuple[int, ...] | None = None
        # A unit with fewer slices than the layout: lost slices, or the camera
        # now sends fewer. Held until the next unit tells which (same slices: emit both).
        self._held: _Picture | None = None
        # The unit just emitted before the next one started: (pts, last slice).
        self._prev: tuple[int, _Slice | None] | None = None
        self._discontinuity = False
        self.units = 0
        self.dropped_partial = 0
        self.dropped_corrupt = 0
        self.dropped_no_parameter_sets = 0  # IDR units whose SPS/PPS were never seen
        self.internal_errors = 0  # bugs caught to keep the camera going; should stay 0
        if extradata:
            # Malformed extradata is ignored: in-band SPS/PPS may still come.
            with contextlib.suppress(H264Error):
                self.set_extradata(extradata)

    # --- public -----------------------------------------------------------------------------------

    def set_extradata(self, extradata: bytes) -> None:
        """Adopt the SPS/PPS of the SDP or container (avcC or Annex B).

        Raises H264Error if any of it is malformed; nothing is adopted then,
        and in-band parameter sets still work. (The constructor doesn't
        raise: it ignores malformed extradata.)"""
        nals = parse_extradata(extradata)
        sps = dict(self._sps)
        parsed: list[tuple[bytes, Sps | Pps]] = []
        for nal in sorted(nals, key=lambda n: n[0] & 0x1F):  # SPS before PPS
            if nal[0] & 0x1F == NAL_SPS:
                s = parse_sps(nal)
                sps[s.sps_id] = s
                parsed.append((nal, s))
            else:
                parsed.append((nal, parse_pps(nal, sps)))
        for nal, item in parsed:
            self._adopt(nal, item)

    def push(self, data: bytes, pts_us: int, ingest_us: int) -> list[AccessUnit]:
        """Take Annex B data (one or more NAL units, or a whole access unit);
        return the access units it completes, in decode order."""
        out: list[AccessUnit] = []
        try:
            nals, stray = split_nals(bytes(data))
            if stray:
                self._junk(pts_us, out)
            for nal in nals:
                self._nal(nal, pts_us, ingest_us, out)
        except Exception:  # a bug here must not take a camera down
            self._internal_error()
        return out

    def flush(self) -> list[AccessUnit]:
        """Emit the unit being assembled now (idle timer, whole-unit source, EOF)."""
        out: list[AccessUnit] = []
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
        n = len(cur.first_mbs)
        return 0 < n < len(layout) and tuple(cur.first_mbs) == layout[:n]

    @property
    def drops(self) -> dict[str, int]:
        """Pictures dropped since the start, by reason: ``partial`` (lost
        slices), ``corrupt`` (malformed, or an IDR whose parameter sets were
        never seen), ``internal_error`` (a bug caught; should stay 0)."""
        return {
            "partial": self.dropped_partial,
            "corrupt": self.dropped_corrupt + self.dropped_no_parameter_sets,
            "internal_error": self.internal_errors,
        }

    @property
    def layout(self) -> tuple[int, ...] | None:
        """The learned slice layout: first_mb_in_slice of each slice of a picture."""
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
        self._layout = self._last_layout = None
        self._prev = None

    # --- NAL units --------------------------------------------------------------------------------

    def _nal(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        if self._cur is not None and len(self._cur.nals) >= _MAX_UNIT_NALS:
            self._cur.corrupt = True
            self._close(out, "boundary")
        if len(self._tail) >= _MAX_TAIL_NALS:
            self._clear_tail()
            self.dropped_corrupt += 1
            self._discontinuity = True
        header = nal[0]
        kind = header & 0x1F
        if header & 0x80:
            self._junk(pts, out)
        elif kind in (NAL_SLICE, NAL_IDR, NAL_DPA):
            self._slice(nal, kind, pts, ingest, out)
        elif kind in (NAL_DPB, NAL_DPC):
            self._add_vcl(nal, pts, ingest, out, corrupt=False)
        elif kind == NAL_AUD:
            self._close(out, "boundary")
            self._tail.append(nal)
        elif kind in _AU_STARTERS:
            cur = self._cur
            if cur is not None and pts != cur.pts:
                self._close(out, "boundary")
            self._tail.append(nal)
            if kind in (NAL_SPS, NAL_PPS):
                self._parameter_set(nal, kind)
        else:
            # End of sequence/stream, filler, extensions, reserved: they go
            # with the picture before them.
            cur = self._cur
            if cur is not None and pts == cur.pts and not self._tail:
                cur.nals.append(nal)
                cur.ingest = ingest
                return
            if cur is not None and pts != cur.pts:
                self._close(out, "boundary")
            self._tail.append(nal)

    def _parameter_set(self, nal: bytes, kind: int) -> None:
        try:
            item: Sps | Pps = parse_sps(nal) if kind == NAL_SPS else parse_pps(nal, self._sps)
        except H264Error:
            self._tail_corrupt = True  # not adopted, and the unit holding it is dropped
            return
        self._adopt(nal, item)
        self._tail_present.add((kind, item.sps_id if isinstance(item, Sps) else item.pps_id))

    def _adopt(self, nal: bytes, item: Sps | Pps) -> None:
        if isinstance(item, Sps):
            if self._sps_nal.get(item.sps_id) != nal:
                if item.sps_id in self._sps:
                    # A new sequence: the slice layout may have changed with it.
                    self._layout = self._last_layout = None
                self._sps[item.sps_id] = item
                self._sps_nal[item.sps_id] = nal
        else:
            self._pps[item.pps_id] = item
            self._pps_nal[item.pps_id] = nal

    def _slice(self, nal: bytes, kind: int, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        sps: Sps | None = None
        pps_id = sps_id = -1
        try:
            h = parse_slice_header(nal, self._sps, self._pps)
        except MissingParameterSet:
            try:
                _, first_mb, _, pps_id = slice_prefix(nal)
            except H264Error:
                self._add_vcl(nal, pts, ingest, out, corrupt=True)
                return
            info = _Slice(first_mb, (None, pps_id, kind, nal[0] & 0x60 == 0))
        except H264Error:
            self._add_vcl(nal, pts, ingest, out, corrupt=True)
            return
        else:
            pps_id = h.pps_id
            sps_id = self._pps[pps_id].sps_id
            sps = self._sps[sps_id]
            info = _Slice(
                h.first_mb_in_slice,
                (pps_id, h.frame_num, h.field_pic_flag, h.bottom_field_flag, h.nal_ref_idc == 0,
                 h.pic_order_cnt_lsb, h.delta_pic_order_cnt_bottom, h.delta_pic_order_cnt,
                 kind, h.idr_pic_id),
                h.colour_plane_id, h.redundant_pic_cnt > 0)
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
        if kind == NAL_IDR:
            cur.idr = True
        if sps is None:
            cur.unknown_params = True
        else:
            if cur.sps is None:
                cur.sps = sps
            if kind == NAL_IDR:
                needs = cur.needs
                needs[(NAL_PPS, pps_id)] = self._pps_nal[pps_id]
                needs[(NAL_SPS, sps_id)] = self._sps_nal[sps_id]
        if info.redundant:
            return
        if cur.last is None and cur.slices > 1:
            cur.headless = True  # it began with a slice whose header we could not read
        cur.last = info
        cur.first_mbs.append(info.first_mb)
        layout = self._layout
        if layout is not None and len(cur.first_mbs) == len(layout) \
                and tuple(cur.first_mbs) == layout:
            self._close(out, "layout")

    def _add_vcl(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit],
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

    def _junk(self, pts: int, out: list[AccessUnit]) -> None:
        """Bytes that are no NAL unit (or one with forbidden_zero_bit set)
        spoil the unit they arrive in."""
        cur = self._cur
        if cur is not None and pts == cur.pts and not self._tail:
            cur.corrupt = True
            return
        if cur is not None and pts != cur.pts:
            self._close(out, "boundary")
        self._tail_corrupt = True

    def _start(self, pts: int, ingest: int) -> _Picture:
        cur = _Picture(pts, ingest, self._tail, self._tail_present, self._tail_corrupt)
        self._tail = []
        self._tail_present = set()
        self._tail_corrupt = False
        self._cur = cur
        return cur

    def _join_tail(self, cur: _Picture, ingest: int) -> None:
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

    def _after_emitted(self, info: _Slice, pts: int) -> None:
        """First slice after a unit went out before the next one started: is
        it more of that picture?"""
        prev = self._prev
        if prev is None:
            return
        self._prev = None
        prev_pts, prev_last = prev
        if pts == prev_pts and prev_last is not None and info.continues(prev_last):
            # The unit was cut short (idle timer too short, or the learned
            # layout is wrong): what was learned from it is wrong.
            self._layout = self._last_layout = None

    def _learn(self, layout: tuple[int, ...]) -> None:
        if layout == self._last_layout:
            self._layout = layout
        elif self._layout is not None and layout != self._layout:
            self._layout = None
        self._last_layout = layout

    def _close(self, out: list[AccessUnit], how: str) -> None:
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        units = self._finish(cur)
        if not units:
            self._prev = None
            return
        out.extend(units)
        self._learn(tuple(cur.first_mbs))
        # Closed by the next unit's start, it was whole; else the next slice will tell.
        self._prev = None if how == "boundary" else (cur.pts, cur.last)

    def _finish(self, cur: _Picture) -> list[AccessUnit]:
        """The units that closing ``cur`` lets out: none (dropped or held),
        ``cur``, or a held unit and ``cur``."""
        held, self._held = self._held, None
        mbs = tuple(cur.first_mbs)
        if cur.corrupt or cur.headless or not mbs or mbs[0] != 0:
            if held is not None:
                self._drop_partial()
            if cur.corrupt:
                self.dropped_corrupt += 1
                self._discontinuity = True
            else:
                self._drop_partial()
            return []
        if held is not None:
            if mbs == tuple(held.first_mbs):
                # The same slices twice: the camera sends fewer now. Both are whole.
                self._layout = self._last_layout = mbs
                return self._build(held) + self._build(cur)
            self._drop_partial()
        layout = self._layout
        if layout is not None and len(mbs) < len(layout) and set(mbs) <= set(layout):
            self._held = cur
            return []
        return self._build(cur)

    def _build(self, cur: _Picture) -> list[AccessUnit]:
        nals = cur.nals
        if cur.idr:
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
            keyframe=cur.idr, sps=cur.sps, discontinuity=discontinuity, slices=cur.slices)]

    def _with_parameter_sets(self, cur: _Picture) -> list[bytes]:
        """The IDR unit's NAL units with the SPS/PPS it lacks put in front
        (after a leading AUD), SPS first."""
        missing = [(key, nal) for key, nal in cur.needs.items() if key not in cur.present]
        if not missing:
            return cur.nals
        nals = list(cur.nals)
        at = 1 if nals and nals[0][0] & 0x1F == NAL_AUD else 0
        nals[at:at] = [nal for (kind, _), nal in missing if kind == NAL_SPS]
        # A PPS goes after the SPS it may depend on, whether sent or injected.
        pos = at
        for index, nal in enumerate(nals):
            kind = nal[0] & 0x1F
            if kind in VCL_TYPES:
                break
            if kind == NAL_SPS:
                pos = index + 1
        nals[pos:pos] = [nal for (kind, _), nal in missing if kind == NAL_PPS]
        return nals

    def _drop_partial(self) -> None:
        self.dropped_partial += 1
        self._discontinuity = True

    def _internal_error(self) -> None:
        self.internal_errors += 1
        self._cur = self._held = None
        self._clear_tail()
        self._layout = self._last_layout = None
        self._prev = None
        self._discontinuity = True
