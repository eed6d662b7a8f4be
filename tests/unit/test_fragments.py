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


def test_orphan_continuation_is_passed_on_as_junk() -> None:
    """Continuation bytes whose first fragment was lost: nothing to join them
    to. They go on without a start code, so the assembler drops their picture."""
    j = FragmentJoiner()
    _lost_first, *orphans = packets_for(nal(0x65, 5000))
    for index, orphan in enumerate(orphans):
        assert [(c.data, c.ingest_us) for c in j.push(orphan, 0, index)] == [(orphan, index)]
    assert not j.pending
    # A continuation is never longer than a full fragment: what is learned
    # from orphans is never too big.
    assert j.fragment_size == 1386
    small = SC + nal(0x41, 50)
    assert [c.data for c in j.push(small, 1, 1)] == [small]


def test_small_mtu_before_the_fragment_size_is_known() -> None:
    """First fragments shorter than the guess: the NAL unit goes out as if
    whole, and its continuations as junk (the picture is dropped, never sent
    cut short); from then on the size is known and NAL units are rejoined."""
    j = FragmentJoiner(header_size=2)
    first = nal(0x26, 3 * 300)  # an H.265 IDR slice: two header bytes
    body = first[2:]
    pieces = [SC + first[:2] + body[:300], body[300:600], body[600:]]
    out = [c.data for p in pieces for c in j.push(p, 0, 0)]
    assert out == [pieces[0], pieces[1], pieces[2]] and j.fragment_size == 300
    second = nal(0x02, 2 * 300 + 10)
    body = second[2:]
    pieces = [SC + second[:2] + body[:300], body[300:600], body[600:]]
    out = [c.data for p in pieces for c in j.push(p, 40, 0)]
    assert out == [SC + second]


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


def test_whole_nal_units_seen_raise_the_bar_for_holding() -> None:
    """A camera whose NAL units all fit one packet: each big one is held once
    (it could be a first fragment), until bigger ones have shown that packets
    are at least that big; then NAL units below that go out at once."""
    j = FragmentJoiner()
    held = nal(0x41, 900)
    assert j.push(SC + held, 0, 0) == [] and j.pending
    assert [c.data for c in j.push(SC + nal(0x09, 2), 40, 40)] == [SC + held, SC + nal(0x09, 2)]
    assert j.fragment_size == 0  # nothing learned about fragments
    smaller = nal(0x41, 880)
    assert [c.data for c in j.push(SC + smaller, 80, 80)] == [SC + smaller]
    assert j.push(SC + nal(0x41, 899), 120, 120) == []  # a first fragment of a 900-byte MTU
