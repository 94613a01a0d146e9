import pytest

from fpnets._warm import WarmStarts


def test_warm_starts_keep_the_most_recently_used_keys() -> None:
    w: WarmStarts[int] = WarmStarts(2)
    w.put(b"a", 1)
    w.put(b"b", 2)
    assert w.get(b"a") == 1  # a is now the most recent
    w.put(b"c", 3)  # drops b, the least recently used
    assert len(w) == 2 and w.get(b"b") is None and w.get(b"a") == 1 and w.get(b"c") == 3
    w.put(b"a", 10)
    assert w.get(b"a") == 10 and len(w) == 2
    assert w.get(b"zz", -1) == -1
    w.clear()
    assert len(w) == 0


def test_warm_starts_with_no_room_keep_nothing_and_bad_capacity_is_refused() -> None:
    w: WarmStarts[int] = WarmStarts(0)
    w.put(b"a", 1)
    assert len(w) == 0 and w.get(b"a") is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="capacity must be an integer >= 0"):
            WarmStarts(bad)  # type: ignore[arg-type]
