"""Grouping H.264 NAL units into access units, one whole picture each
(7.4.1.2.3). Pure: stdlib only; the hot path parses headers, never payloads.

The H.264 half: what each NAL unit is, slice headers and parameter sets. The
codec-neutral rest is ``cxrelay.assembly.PictureAssembler``.
"""

from __future__ import annotations

from cxrelay.assembly import AccessUnit as _AccessUnit
from cxrelay.assembly import PictureAssembler, SliceInfo
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
    VCL_TYPES,
    H264Error,
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

# After a VCL NAL unit, the first of these starts a new access unit (7.4.1.2.3);
# 17 and 18 are reserved types the standard lists with them.
_AU_STARTERS = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_SPS_EXT, NAL_PREFIX, NAL_SUBSET_SPS,
                          NAL_DPS, 17, 18})

AccessUnit = _AccessUnit[Sps]


class AccessUnitAssembler(PictureAssembler[Sps]):
    """Groups H.264 NAL units into access units; see ``PictureAssembler``.
    A unit is a keyframe when it holds an IDR slice; the slice layout is the
    first_mb_in_slice of each slice."""

    AUD = NAL_AUD
    VCL = VCL_TYPES
    PARAMETER_SETS = (NAL_SPS, NAL_PPS)

    ERROR = H264Error

    def __init__(self, extradata: bytes = b"") -> None:
        self._sps: dict[int, Sps] = {}
        self._pps: dict[int, Pps] = {}
        self._sps_nal: dict[int, bytes] = {}
        self._pps_nal: dict[int, bytes] = {}
        super().__init__(extradata)

    def _parse_extradata(self, extradata: bytes) -> list[tuple[bytes, Sps | Pps]]:
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
        return parsed

    # --- NAL units --------------------------------------------------------------------------------

    @staticmethod
    def _nal_type(nal: bytes) -> int:
        return nal[0] & 0x1F

    def _dispatch(self, nal: bytes, pts: int, ingest: int, out: list[AccessUnit]) -> None:
        header = nal[0]
        kind = header & 0x1F
        if header & 0x80:
            self._junk(pts, out)
        elif kind in (NAL_SLICE, NAL_IDR, NAL_DPA):
            self._read_slice(nal, kind, pts, ingest, out)
        elif kind in (NAL_DPB, NAL_DPC):
            self._add_vcl(nal, pts, ingest, out, corrupt=False)
        elif kind == NAL_AUD:
            self._delimiter(nal, out)
        elif kind in _AU_STARTERS:
            self._starter(nal, pts, out)
            if kind in (NAL_SPS, NAL_PPS):
                self._parameter_set(nal, kind)
        else:
            self._trailing(nal, pts, ingest, out)

    def _parameter_set(self, nal: bytes, kind: int) -> None:
        try:
            item: Sps | Pps = parse_sps(nal) if kind == NAL_SPS else parse_pps(nal, self._sps)
        except H264Error:
            self._parameter_set_seen(kind, None)
            return
        self._adopt(nal, item)
        self._parameter_set_seen(kind, item.sps_id if isinstance(item, Sps) else item.pps_id)

    def _adopt(self, nal: bytes, item: Sps | Pps) -> None:
        if isinstance(item, Sps):
            if self._sps_nal.get(item.sps_id) != nal:
                if item.sps_id in self._sps:
                    self._forget_layout()  # a new sequence
                self._sps[item.sps_id] = item
                self._sps_nal[item.sps_id] = nal
        else:
            self._pps[item.pps_id] = item
            self._pps_nal[item.pps_id] = nal

    def _read_slice(self, nal: bytes, kind: int, pts: int, ingest: int,
                    out: list[AccessUnit]) -> None:
        sps: Sps | None = None
        needs: dict[tuple[int, int], bytes] = {}
        try:
            h = parse_slice_header(nal, self._sps, self._pps)
        except MissingParameterSet:
            try:
                _, first_mb, _, pps_id = slice_prefix(nal)
            except H264Error:
                self._add_vcl(nal, pts, ingest, out, corrupt=True)
                return
            info = SliceInfo(first_mb, (None, pps_id, kind, nal[0] & 0x60 == 0))
        except H264Error:
            self._add_vcl(nal, pts, ingest, out, corrupt=True)
            return
        else:
            pps_id = h.pps_id
            sps_id = self._pps[pps_id].sps_id
            sps = self._sps[sps_id]
            info = SliceInfo(
                h.first_mb_in_slice,
                (pps_id, h.frame_num, h.field_pic_flag, h.bottom_field_flag, h.nal_ref_idc == 0,
                 h.pic_order_cnt_lsb, h.delta_pic_order_cnt_bottom, h.delta_pic_order_cnt,
                 kind, h.idr_pic_id),
                h.colour_plane_id, h.redundant_pic_cnt > 0)
            if kind == NAL_IDR:
                needs = {(NAL_PPS, pps_id): self._pps_nal[pps_id],
                         (NAL_SPS, sps_id): self._sps_nal[sps_id]}
        self._slice(nal, info, pts, ingest, out, keyframe=kind == NAL_IDR, sps=sps, needs=needs)
