"""rnnexport.feeds: the order a case's tensors are listed in, and the axis ranges cases cover."""

from __future__ import annotations

import numpy as np

from rnnexport.builder.iospec import parse_io
from rnnexport.feeds import axis_ranges, in_order


def test_axis_ranges_read_each_axis_where_the_contract_puts_it() -> None:
    contract = parse_io(
        {
            "inputs": [
                {"name": "mel", "dtype": "float32", "shape": ["batch", 1, "seq", 40]},
                {"name": "frames", "dtype": "float32", "shape": ["batch", "window", 2]},
            ],
            "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
        },
        origin="test",
    )
    shapes = [
        {"mel": [2, 1, 5, 40], "frames": [2, 4, 2]},
        {"mel": [7, 1, 300, 40], "frames": [7, 6, 2]},
        {"mel": [1, 1, 9, 40], "frames": [1, 4, 2]},
    ]
    assert axis_ranges(contract, shapes) == {"batch": [1, 7], "seq": [5, 300], "window": [4, 6]}
    assert list(axis_ranges(contract, shapes)) == ["batch", "seq", "window"]
    assert axis_ranges(contract, []) == {}


def test_in_order_lists_the_contracts_names_first_then_the_rest_sorted() -> None:
    feeds = {name: np.full(1, i) for i, name in enumerate(["zeta", "lengths", "x", "alpha", "state"])}
    ordered = in_order(["x", "lengths", "absent"], feeds)
    assert list(ordered) == ["x", "lengths", "alpha", "state", "zeta"]
    assert all(ordered[name] is feeds[name] for name in feeds)  # the same arrays, not copies


def test_in_order_of_nothing_is_nothing() -> None:
    assert in_order(["x"], {}) == {}
