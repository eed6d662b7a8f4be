"""Grouping H.265 NAL units into access units, one whole picture each
(7.4.2.4.4). Pure: stdlib only; the hot path parses headers, never payloads.

The H.265 half: what each NAL unit is, slice segment headers and parameter
sets. The codec-neutral rest is ``cxrelay.assembly.PictureAssembler``.
"""

from __future__ import annotations

from cxrelay.assembly import AccessUnit as _AccessUnit
from cxrelay.assembly import PictureAssembler, SliceInfo
from cxrelay.h265.hvcc import parse_extradata
from cxrelay.h265.nal import (
    IRAP,
    NAL_AUD,
    NAL_PPS,
    NAL_PREFIX_SEI,
    NAL_SPS,
    NAL_VPS,
    SLICES,
    H265Error,
)
from cxrelay.h265.syntax import (
    MissingParameterSet,
    Pps,
    Sps,
    Vps,
    parse_pps,
    parse_slice_segment_header,
    parse_sps,
    parse_vps,
    slice_pps_id,
)

# After a picture's last VCL NAL unit, the first of these starts the next
# access unit (7.4.2.4.4): VPS, SPS, PPS, prefix SEI, reserved 41..44 and
# unspecified 48..55. (The access unit delimiter always does.)
_AU_STARTERS = frozenset({NAL_VPS, NAL_SPS, NAL_PPS, NAL_PREFIX_SEI, *range(41, 45),
                          *range(48, 56)})
_VCL = frozenset(range(32))

AccessUnit = _AccessUnit[Sps]


class AccessUnitAssembler(PictureAssembler[Sps]):
    """Groups H.265 NAL units into access units; see ``PictureAssembler``.

    A unit is a keyframe when its slices are IRAP (IDR, CRA, BLA): its VPS,
    SPS and PPS are then put in front if it lacks them. The slice layout is
    the slice_segment_address of each slice segment. NAL units of layers
    other than the base layer, and reserved VCL types, ride along with the
    picture they come with, unread."""

    AUD = NAL_AUD
    VCL = _VCL
    PARAMETER_SETS = (NAL_VPS, NAL_SPS, NAL_PPS)

    ERROR = H265Error

    def __init__(self, extradata: bytes = b"") -> None:
        self._vps: dict[int, Vps] = {}
        self._sps: dict[int, Sps] = {}
        self._pps: dict[int, Pps] = {}
        self._nals: dict[int, dict[int, bytes]] = {NAL_VPS: {}, NAL_SPS: {}, NAL_PPS: {}}
        super().__init__(extradata)

    def _parse_extradata(self, extradata: bytes) -> list[tuple[bytes, Vps | Sps | Pps]]:
        return [(nal, _parse(nal)) for nal in parse_extradata(extradata)]

    # --- NAL units --------------------------------------------------------------------------------

    @staticmethod
    def _nal_type(nal: bytes) -> int:
        return (nal[0] >> 1) & 0x3F

    def _dispatch(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        if len(nal) < 2 or nal[0] & 0x80 or not nal[1] & 0x07:
            # Cut short, forbidden_zero_bit, or nuh_temporal_id_plus1 0.
            self._junk(pts, out)
            return
        kind = (nal[0] >> 1) & 0x3F
        if nal[0] & 1 or nal[1] >> 3:  # nuh_layer_id > 0
            self._trailing(nal, pts, ingest, out)
        elif kind in SLICES:
            self._read_slice(nal, kind, pts, ingest, out)
        elif kind == NAL_AUD:
            self._delimiter(nal, out)
        elif kind in _AU_STARTERS:
            self._starter(nal, pts, out)
            if kind in self._nals:
                self._parameter_set(nal, kind)
        else:
            # End of sequence/bitstream, filler, suffix SEI, reserved VCL.
            self._trailing(nal, pts, ingest, out)

    def _parameter_set(self, nal: bytes, kind: int) -> None:
        try:
            item = _parse(nal)
        except H265Error:
            self._parameter_set_seen(kind, None)
            return
        self._parameter_set_seen(kind, self._adopt(nal, item))

    def _adopt(self, nal: bytes, item: Vps | Sps | Pps) -> int:
        """Keep a parameter set (and its NAL unit, for keyframes); its id."""
        if isinstance(item, Vps):
            kind, ident = NAL_VPS, item.vps_id
            self._vps[ident] = item
        elif isinstance(item, Sps):
            kind, ident = NAL_SPS, item.sps_id
            if self._nals[kind].get(ident, nal) != nal:
                self._forget_layout()  # a new sequence
            self._sps[ident] = item
        else:
            kind, ident = NAL_PPS, item.pps_id
            self._pps[ident] = item
        self._nals[kind][ident] = nal
        return ident

    def _read_slice(self, nal: bytes, kind: int, pts: int, ingest: int,
                    out: list[AccessUnit]) -> None:
        try:
            h = parse_slice_segment_header(nal, self._sps, self._pps)
        except MissingParameterSet:
            try:
                first, pps_id = slice_pps_id(nal)
            except H265Error:
                self._add_vcl(nal, pts, ingest, out, corrupt=True)
                return
            # Without its SPS the address can't be read: -1 stands for "not the first".
            info = SliceInfo(0 if first else -1, (pps_id, kind, None))
            self._slice(nal, info, pts, ingest, out, keyframe=kind in IRAP, sps=None, needs={})
            return
        except H265Error:
            self._add_vcl(nal, pts, ingest, out, corrupt=True)
            return
        sps = self._sps[self._pps[h.pps_id].sps_id]
        if h.dependent_slice_segment_flag:
            # It has no picture fields of its own: it continues the slice before it.
            key = self._last_key() or (h.pps_id, kind, None)
        else:
            key = (h.pps_id, kind, h.pic_order_cnt_lsb)
        info = SliceInfo(h.slice_segment_address, key, h.colour_plane_id or 0)
        needs: dict[tuple[int, int], bytes] = {}
        vps = self._nals[NAL_VPS].get(sps.vps_id)
        if kind in IRAP:
            if vps is None:
                # An SPS without its VPS can't be activated: no decoder starts here.
                self._slice(nal, info, pts, ingest, out, keyframe=True, sps=None, needs={})
                return
            needs = {(NAL_VPS, sps.vps_id): vps, (NAL_SPS, sps.sps_id): self._nals[NAL_SPS][
                sps.sps_id], (NAL_PPS, h.pps_id): self._nals[NAL_PPS][h.pps_id]}
        self._slice(nal, info, pts, ingest, out, keyframe=kind in IRAP, sps=sps, needs=needs)

    def _last_key(self) -> tuple[object, ...] | None:
        """The picture key of the slice segment that came before."""
        cur = self._cur
        if cur is not None and cur.last is not None:
            return cur.last.key
        prev = self._prev
        if cur is None and prev is not None and prev[1] is not None:
            return prev[1].key
        return None


def _parse(nal: bytes) -> Vps | Sps | Pps:
    """A parameter set NAL unit, parsed. Raises H265Error."""
    kind = (nal[0] >> 1) & 0x3F
    if kind == NAL_VPS:
        return parse_vps(nal)
    return parse_sps(nal) if kind == NAL_SPS else parse_pps(nal)
