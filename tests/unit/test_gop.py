from cxrelay.gop import GopCache


def test_snapshot_starts_at_the_last_keyframe() -> None:
    g = GopCache(max_bytes=1000)
    assert g.snapshot() == []
    g.add(b"d0", keyframe=False)  # before any keyframe: useless to a new viewer
    assert g.snapshot() == []
    g.add(b"K1", keyframe=True)
    g.add(b"d1", keyframe=False)
    g.add(b"K2", keyframe=True)
    g.add(b"d2", keyframe=False)
    assert g.snapshot() == [b"K2", b"d2"]
    assert g.nbytes == 4


def test_overflow_gives_up_until_next_keyframe() -> None:
    g = GopCache(max_bytes=10)
    g.add(b"K" * 4, keyframe=True)
    assert g.add(b"d" * 4, keyframe=False) == 0
    assert g.add(b"d" * 4, keyframe=False) == 3
    assert g.snapshot() == [] and g.overflows == 1
    assert g.add(b"d", keyframe=False) == 0
    assert g.snapshot() == []
    g.add(b"K", keyframe=True)
    assert g.snapshot() == [b"K"]


def test_keyframe_bigger_than_the_cache() -> None:
    g = GopCache(max_bytes=3)
    assert g.add(b"KKKK", keyframe=True) == 1
    assert g.snapshot() == []


def test_snapshot_is_a_copy() -> None:
    g = GopCache()
    g.add(b"K", keyframe=True)
    snap = g.snapshot()
    g.add(b"d", keyframe=False)
    assert snap == [b"K"]
