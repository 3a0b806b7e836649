"""The benchmark's inputs: the grid of shapes, the bound on one call's tensors, and seeded feeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rnnexport.errors import UsageError
from rnnexport.feeds import Feeds, call_bytes, make_feeds
from rnnexport.limits import DEFAULT_LIMITS, Limits, format_bytes
from rnnexport.spec import Contract

DEFAULT_BATCHES = (1, 32)
DEFAULT_SEQS = (1, 10, 100, 1000)


def parse_sizes(text: str, *, option: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; sorted, without repeats; anything else is a usage error."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or any(v < 1 or v > 1_000_000 for v in values):
        raise UsageError(
            f"{option} takes a comma-separated list of whole numbers from 1 to 1000000, got {text!r}; "
            f"for example {option} 1,32."
        )
    return tuple(values)


def grid_shapes(batches: Sequence[int], seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Every ``(batch, seq)`` of the grid, batch-major."""
    return [(b, s) for b in batches for s in seqs]


def check_grid(
    contract: Contract, shapes: Sequence[tuple[int, int]], *, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Refuse, before anything is allocated, a shape whose inputs and outputs exceed the bound.

    Raises :class:`UsageError` naming the largest shape, its bytes, and the bound.
    """
    if not shapes:
        return
    batch, seq = max(shapes, key=lambda shape: call_bytes(contract, *shape))
    needed = call_bytes(contract, batch, seq)
    if needed > limits.bench_tensor_bytes:
        raise UsageError(
            f"--batch {batch} with --seq {seq} needs {format_bytes(needed)} for one call's inputs and "
            f"outputs ({batch} x {seq} x the model's sizes), over the bound of "
            f"{format_bytes(limits.bench_tensor_bytes)} a benchmark call may use. Choose smaller "
            "batches or sequence lengths."
        )


def _feeds(contract: Contract, start: Callable[[int], Feeds], *, batch: int, seq: int) -> Feeds:
    """Seeded inputs of one call; a streaming model's state inputs are a new stream's (``start``)."""
    return {**make_feeds(contract, batch=batch, seq=seq, rng=np.random.default_rng(0)), **start(batch)}


def _no_states(batch: int) -> Feeds:
    return {}


def _lengths_name(contract: Contract) -> str | None:
    """The input holding each row's valid steps, if the model has one."""
    for t in contract.inputs:
        if getattr(t, "role", None) == "lengths" or t.name == "lengths":
            return t.name
    return None
