"""Property tests for cxrelay.h265: whatever bytes come in, the parsers raise
nothing but H265Error, and what they accept makes sense."""

from __future__ import annotations

import functools
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrelay.h264 import split_annexb, to_annexb
from cxrelay.h265 import (
    NAL_PPS,
    NAL_SPS,
    NAL_VPS,
    SLICES,
    H265Error,
    build_hvcc,
    nal_type,
    parse_extradata,
    parse_hvcc,
    parse_pps,
    parse_slice_segment_header,
    parse_sps,
    parse_vps,
)
from cxrelay.h265.syntax import MAX_SIDE
from tests.recordings import recording

STREAMS = ["h265_main", "h265_slices4", "h265_bframes", "h265_sei_aud",
           "h265_variant_444", "h265_variant_scaling"]
FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def real_nals() -> list[bytes]:
    """Parameter sets and slice segment headers (cut short) of the recordings."""
    out: list[bytes] = []
    for name in STREAMS:
        seen: set[int] = set()
        for unit in recording(name, suffix=".h265").units[:4]:
            for nal in split_annexb(unit):
                kind = nal_type(nal)
                if kind in (NAL_VPS, NAL_SPS, NAL_PPS) and kind not in seen:
                    seen.add(kind)
                    out.append(nal)
                elif kind in SLICES:
                    out.append(nal[:64])
    return out


@functools.cache
def real_context() -> tuple[dict, dict]:
    sps = parse_sps(next(n for n in real_nals() if nal_type(n) == NAL_SPS))
    pps = parse_pps(next(n for n in real_nals() if nal_type(n) == NAL_PPS))
    return {sps.sps_id: sps}, {pps.pps_id: pps}


def only_h265_errors(parse: Callable[[bytes], object], data: bytes) -> object:
    try:
        return parse(data)
    except H265Error:
        return None


@functools.cache
def real_extradata() -> list[bytes]:
    params = [n for n in real_nals() if nal_type(n) in (NAL_VPS, NAL_SPS, NAL_PPS)][:3]
    return [to_annexb(params), build_hvcc(params)]


def samples(kind: int | None) -> list[bytes]:
    """Real NAL units of this type (any slice for None)."""
    return [n for n in real_nals() if (nal_type(n) in SLICES if kind is None else
                                       nal_type(n) == kind)]


@st.composite
def mutated(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A real sample with a few bytes changed, cut, or grown."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


def parse_slice(data: bytes) -> object:
    sps, pps = real_context()
    return parse_slice_segment_header(data, sps, pps)


def check(parse: Callable[[bytes], object], data: bytes) -> None:
    result = only_h265_errors(parse, data)
    if parse is parse_sps and result is not None:
        sps = parse_sps(data)
        assert 0 < sps.width <= sps.coded_width <= MAX_SIDE
        assert 0 < sps.height <= sps.coded_height <= MAX_SIDE
        assert sps.codec.startswith("hvc1.")


@FAST
@given(st.data())
def test_parameter_set_parsers_raise_only_h265_error(data: st.DataObject) -> None:
    for parse, kind in ((parse_vps, NAL_VPS), (parse_sps, NAL_SPS), (parse_pps, NAL_PPS),
                        (parse_slice, None)):
        check(parse, data.draw(mutated(samples(kind))))


@FAST
@given(st.data())
def test_extradata_parsers_raise_only_h265_error(data: st.DataObject) -> None:
    for parse in (parse_extradata, parse_hvcc):
        check(parse, data.draw(mutated(real_extradata())))


@FAST
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_h265_error(data: bytes) -> None:
    for parse in (parse_vps, parse_sps, parse_pps, parse_slice, parse_extradata, parse_hvcc):
        check(parse, data)


@FAST
@given(mutated(samples(NAL_SPS)))
def test_extradata_of_mutated_parameter_sets(nal: bytes) -> None:
    """Annex B or hvcC extradata around a damaged SPS: H265Error, or parameter
    sets that were in it."""
    params = [n for n in real_nals() if nal_type(n) in (NAL_VPS, NAL_SPS, NAL_PPS)][:3]
    nals = [params[0], nal, params[2]]
    annexb = to_annexb(nals)
    # (Annex B splits a damaged NAL unit at any start code inside it.)
    for extradata, held in ((annexb, split_annexb(annexb)), (build_hvcc_or_none(nals), nals)):
        got = only_h265_errors(parse_extradata, extradata) if extradata else None
        if got is not None:
            assert isinstance(got, list) and all(n in held for n in got)


def build_hvcc_or_none(nals: list[bytes]) -> bytes | None:
    try:
        return build_hvcc(nals)
    except H265Error:
        return None
