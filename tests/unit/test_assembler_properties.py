"""Property tests for the access-unit assemblers (cxrelay.h264, cxrelay.h265):
whatever comes in, push/flush never raise, never invent bytes, and every unit
that comes out is one Annex B picture."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cxrelay.h264 as h264
import cxrelay.h265 as h265
from cxrelay.assembly import AccessUnit, PictureAssembler
from cxrelay.h264 import START_CODE, split_annexb, to_annexb, unescape_rbsp
from tests.camera.stamp import escape_rbsp as escape
from tests.recordings import recording


@dataclass(frozen=True)
class Codec:
    name: str
    assembler: Callable[..., PictureAssembler[Any]]
    nal_type: Callable[[bytes], int]
    is_slice: Callable[[bytes], bool]  # what the assembler counts as a slice
    keyframes: frozenset[int]  # slice types that make a keyframe
    parameter_sets: tuple[int, ...]
    header_size: int  # bytes of the NAL unit header
    error: type[Exception]
    parse_extradata: Callable[[bytes], object]
    streams: tuple[str, ...]
    suffix: str

    def __repr__(self) -> str:
        return self.name


H264 = Codec("h264", h264.AccessUnitAssembler, h264.nal_type,
             lambda nal: h264.nal_type(nal) in h264.VCL_TYPES, frozenset({h264.NAL_IDR}),
             (h264.NAL_SPS, h264.NAL_PPS), 1, h264.H264Error, h264.parse_extradata,
             ("baseline", "slices4", "bframes", "sei_aud", "slice_change", "variant_interlaced"),
             ".h264")
H265 = Codec("h265", h265.AccessUnitAssembler, h265.nal_type,
             # Reserved VCL types (10-15, 22-31) ride along unread: not slices.
             lambda nal: h265.nal_type(nal) in h265.SLICES and not h265.layer_id(nal), h265.IRAP,
             (h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS), 2, h265.H265Error,
             h265.parse_extradata,
             ("h265_main", "h265_slices4", "h265_bframes", "h265_sei_aud", "h265_slice_change",
              "h265_variant_444"), ".h265")
CODECS = pytest.mark.parametrize("codec", [H264, H265], ids=["h264", "h265"])
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def window_of(codec: Codec, index: int, start: int, count: int
              ) -> list[tuple[int, list[bytes]]]:
    aus = access_units(codec, codec.streams[index % len(codec.streams)])
    start %= len(aus)
    return aus[start:start + count]


@functools.cache
def access_units(codec: Codec, name: str) -> list[tuple[int, list[bytes]]]:
    """(pts_us, NAL units) of each true access unit."""
    return [(pts, split_annexb(data)) for pts, data, _ in
            recording(name, suffix=codec.suffix).packets]


def check_unit(codec: Codec, unit: AccessUnit[Any]) -> list[bytes]:
    assert unit.data.startswith(START_CODE)
    nals = split_annexb(unit.data)
    assert nals and to_annexb(nals) == unit.data
    assert not any(n[0] & 0x80 for n in nals)  # forbidden_zero_bit: dropped as corrupt
    slices = [codec.nal_type(n) for n in nals if codec.is_slice(n)]
    assert unit.slices == len(slices) > 0
    assert unit.keyframe == bool(codec.keyframes & set(slices))
    if unit.keyframe:
        kinds = {codec.nal_type(n) for n in nals}
        assert set(codec.parameter_sets) <= kinds and unit.sps is not None
    return nals


def run(asm: PictureAssembler[Any], pushes: list[tuple[bytes, int]],
        flush_after: list[bool]) -> list[AccessUnit[Any]]:
    units: list[AccessUnit[Any]] = []
    for (data, pts), flush in zip(pushes, flush_after, strict=True):
        units += asm.push(data, pts, 0)
        if flush:
            units += asm.flush()
    units += asm.flush()
    assert asm.internal_errors == 0
    return units


def check_run(codec: Codec, pushes: list[tuple[bytes, int]],
              flush_after: list[bool]) -> list[AccessUnit[Any]]:
    units = run(codec.assembler(), pushes, flush_after)
    seen = {nal for data, _ in pushes for nal in split_annexb(data)}
    for unit in units:
        # Nothing invented: every NAL unit out was a NAL unit in (injected
        # parameter sets included: they come from the input too).
        assert set(check_unit(codec, unit)) <= seen
    return units


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# --- garbage --------------------------------------------------------------------------------------


@CODECS
@FAST
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 3)), max_size=30),
       st.data())
def test_random_bytes_never_raise(codec: Codec, pushes: list[tuple[bytes, int]],
                                  data: st.DataObject) -> None:
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(codec, pushes, flushes)


@CODECS
@FAST
@given(st.data())
def test_random_nal_units_never_raise(codec: Codec, data: st.DataObject) -> None:
    """Start codes in the right places, anything at all inside."""
    nal_like = st.builds(lambda header, body: header + body,
                         st.binary(min_size=codec.header_size, max_size=codec.header_size),
                         st.binary(max_size=40))
    nals = data.draw(st.lists(nal_like, min_size=1, max_size=40))
    pts = data.draw(st.lists(st.integers(0, 3), max_size=40))
    pushes = [(to_annexb([nal]), pts[i % len(pts)] if pts else 0) for i, nal in enumerate(nals)]
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(codec, pushes, flushes)


@CODECS
@FAST
@given(st.binary(max_size=200))
def test_garbage_extradata_raises_the_codec_error_only(codec: Codec, extradata: bytes) -> None:
    try:
        codec.parse_extradata(extradata)
        codec.assembler(extradata)
    except codec.error:
        pass


# --- damaged real streams -------------------------------------------------------------------------

window = st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(1, 12))


def nal_pushes(codec: Codec, where: tuple[int, int, int]) -> list[tuple[bytes, int]]:
    aus = window_of(codec, *where)
    return [(to_annexb([nal]), pts) for pts, nals in aus for nal in nals]


@CODECS
@FAST
@given(window, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=20),
       st.data())
def test_mutated_streams_never_raise(codec: Codec, where: tuple[int, int, int],
                                     mutations: list[tuple[int, int]],
                                     data: st.DataObject) -> None:
    pushes = nal_pushes(codec, where)
    for position, value in mutations:
        index = position % len(pushes)
        nal, pts = pushes[index]
        at = position % len(nal)
        pushes[index] = (nal[:at] + bytes([value]) + nal[at + 1:], pts)
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(codec, pushes, flushes)


@CODECS
@FAST
@given(window, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2)), max_size=12),
       st.data())
def test_truncated_dropped_and_repeated_nal_units(codec: Codec, where: tuple[int, int, int],
                                                  edits: list[tuple[int, int]],
                                                  data: st.DataObject) -> None:
    pushes = nal_pushes(codec, where)
    for position, edit in edits:
        if not pushes:
            break
        index = position % len(pushes)
        nal, pts = pushes[index]
        if edit == 0:  # truncated
            pushes[index] = (nal[:4 + position % max(1, len(nal) - 4)], pts)
        elif edit == 1:  # lost
            del pushes[index]
        else:  # repeated
            pushes.insert(index, (nal, pts))
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(codec, pushes, flushes)


@CODECS
@FAST
@given(window, st.lists(st.integers(0, 10**7), max_size=30), st.data())
def test_streams_cut_anywhere_never_raise(codec: Codec, where: tuple[int, int, int],
                                          cuts: list[int], data: st.DataObject) -> None:
    """Chunks cut at any byte (not at NAL units): pieces without a start code
    are junk, NAL units cut short are damage."""
    aus = window_of(codec, *where)
    stream = b"".join(to_annexb(nals) for _, nals in aus)
    if not stream:
        return
    pieces = chunked(stream, cuts)
    pts = data.draw(st.lists(st.integers(0, 2), min_size=len(pieces), max_size=len(pieces)))
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    check_run(codec, list(zip(pieces, pts, strict=True)), flushes)


# --- clean streams: any grouping, any timer -------------------------------------------------------


@CODECS
@FAST
@given(window, st.data())
def test_any_grouping_and_timer_give_the_true_units(codec: Codec, where: tuple[int, int, int],
                                                    data: st.DataObject) -> None:
    """NAL units grouped at random within each access unit (aggregation
    packets, or whole units), the idle timer firing between pictures or not,
    parameter sets in-band or only in the extradata: the same units.

    One unit more than the window is sent: a unit with fewer slices than the
    learned layout is held until the next one shows whether slices were lost."""
    index, start, count = where
    aus = window_of(codec, index, start, count + 1)
    sps = codec.parameter_sets[-2]
    if not any(codec.nal_type(n) == sps for n in aus[0][1]):
        # Start at a keyframe with its parameter sets in the window, or the
        # units before it can't be keyframes and the truth would differ.
        first = next((i for i, (_, nals) in enumerate(aus)
                      if any(codec.nal_type(n) == sps for n in nals)), None)
        if first is None:
            return
        aus = aus[first:]
    asm = codec.assembler()
    sent = aus
    if data.draw(st.booleans()):
        # Encoders put them first (after the AUD): injection puts them back there.
        params = codec.parameter_sets
        asm.set_extradata(to_annexb(n for n in aus[0][1] if codec.nal_type(n) in params))
        sent = [(pts, [n for n in nals if codec.nal_type(n) not in params]) for pts, nals in aus]
    pushes: list[tuple[bytes, int]] = []
    flushes: list[bool] = []
    for pts, nals in sent:
        sizes = data.draw(st.lists(st.integers(1, 4), min_size=len(nals), max_size=len(nals)))
        i = 0
        for size in sizes:
            if i >= len(nals):
                break
            pushes.append((to_annexb(nals[i:i + size]), pts))
            flushes.append(False)
            i += size
        flushes[-1] = data.draw(st.booleans())  # the timer fires between pictures, or not
    units = run(asm, pushes, flushes)
    for unit in units:
        check_unit(codec, unit)
    truth = [(pts, to_annexb(nals)) for pts, nals in aus]
    got = [(u.pts_us, u.data) for u in units]
    assert got[:len(truth) - 1] == truth[:-1] and len(got) >= len(truth) - 1


# --- Annex B and RBSP round trips -----------------------------------------------------------------


# A NAL unit: header byte, escaped payload, ending in a non-zero byte (the stop bit).
nal_unit = st.builds(lambda header, rbsp: bytes([header]) + escape(rbsp + b"\x80"),
                     st.integers(1, 0x7F), st.binary(max_size=60))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_unescape_undoes_escape(rbsp: bytes) -> None:
    escaped = escape(rbsp)
    assert b"\x00\x00\x00" not in escaped and b"\x00\x00\x01" not in escaped
    assert unescape_rbsp(escaped) == rbsp


@settings(max_examples=200, deadline=None)
@given(st.lists(nal_unit, max_size=20), st.lists(st.booleans(), max_size=20),
       st.integers(0, 3), st.integers(0, 3))
def test_split_undoes_join(nals: list[bytes], short: list[bool], lead: int, trail: int) -> None:
    assert split_annexb(to_annexb(nals)) == nals
    # Mixed 3- and 4-byte start codes, zero bytes before and after.
    mixed = b"\x00" * lead + b"".join(
        (b"\x00\x00\x01" if i < len(short) and short[i] else START_CODE) + nal
        for i, nal in enumerate(nals)) + b"\x00" * trail
    assert split_annexb(mixed) == nals
