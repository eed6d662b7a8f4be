"""Property tests for cxrelay.h264: whatever comes in, push/flush never raise,
never invent bytes, and every unit that comes out is one Annex B picture."""

from __future__ import annotations

import functools
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrelay.h264 import (
    START_CODE,
    AccessUnit,
    AccessUnitAssembler,
    nal_type,
    split_annexb,
    to_annexb,
    unescape_rbsp,
)
from tests.camera.stamp import escape_rbsp as escape
from tests.recordings import recording

STREAMS = ["baseline", "slices4", "bframes", "sei_aud", "slice_change", "variant_interlaced"]
VCL = {1, 2, 3, 4, 5}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def window_of(name: str, start: int, count: int) -> list[tuple[int, list[bytes]]]:
    aus = access_units(name)
    start %= len(aus)
    return aus[start:start + count]


@functools.cache
def access_units(name: str) -> list[tuple[int, list[bytes]]]:
    """(pts_us, NAL units) of each true access unit."""
    return [(pts, split_annexb(data)) for pts, data, _ in recording(name).packets]


def check_unit(unit: AccessUnit) -> list[bytes]:
    assert unit.data.startswith(START_CODE)
    nals = split_annexb(unit.data)
    assert nals and to_annexb(nals) == unit.data
    assert not any(n[0] & 0x80 for n in nals)  # forbidden_zero_bit: dropped as corrupt
    kinds = [nal_type(n) for n in nals]
    assert unit.slices == sum(k in VCL for k in kinds) > 0
    assert unit.keyframe == (5 in kinds)
    if unit.keyframe:
        assert 7 in kinds and 8 in kinds and unit.sps is not None
    return nals


def run(asm: AccessUnitAssembler, pushes: list[tuple[bytes, int]],
        flush_after: list[bool]) -> list[AccessUnit]:
    units: list[AccessUnit] = []
    for (data, pts), flush in zip(pushes, flush_after, strict=True):
        units += asm.push(data, pts, 0)
        if flush:
            units += asm.flush()
    units += asm.flush()
    assert asm.internal_errors == 0
    return units


def check_run(asm: AccessUnitAssembler, pushes: list[tuple[bytes, int]],
              flush_after: list[bool]) -> list[AccessUnit]:
    units = run(asm, pushes, flush_after)
    seen = {nal for data, _ in pushes for nal in split_annexb(data)}
    for unit in units:
        # Nothing invented: every NAL unit out was a NAL unit in (injected
        # parameter sets included: they come from the input too).
        assert set(check_unit(unit)) <= seen
    return units


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# --- garbage --------------------------------------------------------------------------------------


@FAST
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 3)), max_size=30),
       st.data())
def test_random_bytes_never_raise(pushes: list[tuple[bytes, int]], data: st.DataObject) -> None:
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(AccessUnitAssembler(), pushes, flushes)


nal_like = st.builds(
    lambda header, body: bytes([header]) + body,
    st.integers(0, 255), st.binary(max_size=40))


@FAST
@given(st.lists(nal_like, min_size=1, max_size=40), st.lists(st.integers(0, 3), max_size=40),
       st.data())
def test_random_nal_units_never_raise(nals: list[bytes], pts: list[int],
                                      data: st.DataObject) -> None:
    """Start codes in the right places, anything at all inside."""
    pushes = [(to_annexb([nal]), pts[i % len(pts)] if pts else 0) for i, nal in enumerate(nals)]
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(AccessUnitAssembler(), pushes, flushes)


@FAST
@given(st.binary(max_size=200))
def test_garbage_extradata_raises_h264error_only(extradata: bytes) -> None:
    from cxrelay.h264 import H264Error, parse_extradata

    try:
        parse_extradata(extradata)
        AccessUnitAssembler(extradata)
    except H264Error:
        pass


# --- damaged real streams -------------------------------------------------------------------------

window = st.tuples(st.sampled_from(STREAMS), st.integers(0, 40), st.integers(1, 12))


def nal_pushes(name: str, start: int, count: int) -> list[tuple[bytes, int]]:
    aus = window_of(name, start, count)
    return [(to_annexb([nal]), pts) for pts, nals in aus for nal in nals]


@FAST
@given(window, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=20),
       st.data())
def test_mutated_streams_never_raise(where: tuple[str, int, int],
                                     mutations: list[tuple[int, int]],
                                     data: st.DataObject) -> None:
    pushes = nal_pushes(*where)
    for position, value in mutations:
        index = position % len(pushes)
        nal, pts = pushes[index]
        at = position % len(nal)
        pushes[index] = (nal[:at] + bytes([value]) + nal[at + 1:], pts)
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pushes), max_size=len(pushes)))
    check_run(AccessUnitAssembler(), pushes, flushes)


@FAST
@given(window, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2)), max_size=12),
       st.data())
def test_truncated_dropped_and_repeated_nal_units(where: tuple[str, int, int],
                                                  edits: list[tuple[int, int]],
                                                  data: st.DataObject) -> None:
    pushes = nal_pushes(*where)
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
    check_run(AccessUnitAssembler(), pushes, flushes)


@FAST
@given(window, st.lists(st.integers(0, 10**7), max_size=30), st.data())
def test_streams_cut_anywhere_never_raise(where: tuple[str, int, int], cuts: list[int],
                                          data: st.DataObject) -> None:
    """Chunks cut at any byte (not at NAL units): pieces without a start code
    are junk, NAL units cut short are damage."""
    name, start, count = where
    aus = window_of(name, start, count)
    stream = b"".join(to_annexb(nals) for _, nals in aus)
    if not stream:
        return
    pieces = chunked(stream, cuts)
    pts = data.draw(st.lists(st.integers(0, 2), min_size=len(pieces), max_size=len(pieces)))
    flushes = data.draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    check_run(AccessUnitAssembler(), list(zip(pieces, pts, strict=True)), flushes)


# --- clean streams: any grouping, any timer -------------------------------------------------------


@FAST
@given(window, st.data())
def test_any_grouping_and_timer_give_the_true_units(where: tuple[str, int, int],
                                                    data: st.DataObject) -> None:
    """NAL units grouped at random within each access unit (STAP-A, or whole
    units), the idle timer firing between pictures or not, SPS/PPS in-band or
    only in the extradata: the same units."""
    name, start, count = where
    aus = window_of(name, start, count)
    if not any(nal_type(n) == 7 for n in aus[0][1]):
        # Start at an IDR with its parameter sets in the window, or the
        # units before it can't be keyframes and the truth would differ.
        first = next((i for i, (_, nals) in enumerate(aus)
                      if any(nal_type(n) == 7 for n in nals)), None)
        if first is None:
            return
        aus = aus[first:]
    asm = AccessUnitAssembler()
    sent = aus
    if data.draw(st.booleans()):
        # x264 puts them first (after the AUD): injection puts them back there.
        asm.set_extradata(to_annexb(n for n in aus[0][1] if nal_type(n) in (7, 8)))
        sent = [(pts, [n for n in nals if nal_type(n) not in (7, 8)]) for pts, nals in aus]
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
        check_unit(unit)
    assert [(u.pts_us, u.data) for u in units] == [(pts, to_annexb(nals)) for pts, nals in aus]


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
