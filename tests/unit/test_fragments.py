from cxrelay.fragments import FragmentJoiner

SC = b"\x00\x00\x00\x01"


def nal(kind: int, size: int) -> bytes:
    return bytes([kind]) + bytes((i % 251) + 1 for i in range(size - 1))


def packets_for(n: bytes, mtu: int = 1386) -> list[bytes]:
    """What FFmpeg's RTP depacketizer hands over for one NAL unit."""
    if len(n) <= mtu:
        return [SC + n]
    body = n[1:]
    parts = [body[i:i + mtu] for i in range(0, len(body), mtu)]
    return [SC + n[:1] + parts[0], *parts[1:]]


def test_small_nal_units_pass_straight_through() -> None:
    j = FragmentJoiner()
    out = j.push(SC + nal(0x09, 2), 0, 1)
    assert [c.data for c in out] == [SC + nal(0x09, 2)]
    assert not j.pending


def test_fragmented_nal_is_released_on_its_short_last_fragment() -> None:
    j = FragmentJoiner()
    big = nal(0x65, 5000)
    pkts = packets_for(big)
    results = [j.push(p, 90_000, i) for i, p in enumerate(pkts)]
    assert all(r == [] for r in results[:-1])
    (chunk,) = results[-1]
    assert chunk.data == SC + big and chunk.pts_us == 90_000
    assert chunk.ingest_us == len(pkts) - 1  # completed by the last packet
    assert j.fragment_size == 1386
    # Once learned, a first fragment is recognised as unfinished by its size.
    second = nal(0x41, 3000)
    pkts = packets_for(second)
    assert j.push(pkts[0], 1, 1) == [] and j.pending
    for p in pkts[1:-1]:
        assert j.push(p, 1, 1) == []
    assert [c.data for c in j.push(pkts[-1], 1, 1)] == [SC + second]


def test_full_size_last_fragment_waits_for_next_packet_or_flush() -> None:
    j = FragmentJoiner()
    j.fragment_size = 1386
    exact = nal(0x41, 1 + 2 * 1386)  # ends exactly on a fragment boundary
    pkts = packets_for(exact)
    for p in pkts:
        assert j.push(p, 5, 5) == []
    assert j.pending
    (chunk,) = j.flush()
    assert chunk.data == SC + exact
    for p in pkts:
        assert j.push(p, 6, 6) == []
    out = j.push(SC + nal(0x09, 2), 7, 7)  # the next unit's AUD releases it
    assert [c.data for c in out] == [SC + exact, SC + nal(0x09, 2)]
    assert [c.pts_us for c in out] == [6, 7]


def test_orphan_continuation_is_dropped() -> None:
    """Continuation bytes whose first fragment was lost: nothing to join them
    to (the assembler then drops the picture that lacks the slice)."""
    j = FragmentJoiner()
    assert j.push(b"\x12\x34", 0, 0) == []
    assert not j.pending
    small = SC + nal(0x41, 50)
    assert [c.data for c in j.push(small, 1, 1)] == [small]


def test_large_unfragmented_nal_before_learning_is_held_not_lost() -> None:
    j = FragmentJoiner()
    n = nal(0x41, 1200)  # could be a first fragment: hold it
    assert j.push(SC + n, 0, 0) == []
    assert next(c.data for c in j.push(SC + nal(0x09, 2), 40, 40)) == SC + n


def test_fragment_size_is_learned_from_the_first_fragment() -> None:
    """A NAL unit cut in two leaves a short last fragment; the full size is
    the first fragment's, so smaller NAL units later are released at once."""
    j = FragmentJoiner()
    pkts = packets_for(nal(0x65, 1386 + 118))
    assert len(pkts) == 2 and len(pkts[1]) == 117
    for p in pkts[:-1]:
        assert j.push(p, 0, 0) == []
    assert len(j.push(pkts[-1], 0, 0)) == 1
    assert j.fragment_size == 1386
    slice_ = nal(0x41, 600)
    assert [c.data for c in j.push(SC + slice_, 40, 40)] == [SC + slice_]
    assert not j.pending
