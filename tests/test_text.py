"""rnnexport.text: the bounded lists every long message is made of."""

from __future__ import annotations

from rnnexport.text import capped, first_of


def test_first_of_bounds_the_count_and_each_item() -> None:
    items = [f"p{i}" for i in range(25)]
    assert first_of(items, 3) == ["p0", "p1", "p2", "and 22 more"]
    assert first_of(items[:3], 3) == ["p0", "p1", "p2"]
    assert first_of([], 3) == []
    assert capped(iter(items), limit=2) == "p0; p1; and 23 more"
    assert capped(["x" * 5000]) == "x" * 1000 + " [...]"
    assert (
        capped((str(i) for i in range(1_000_000)), sep=", ")
        == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, and 999,990 more"
    )
