"""Ragged batches: what ``sequence_lens`` costs when rows differ in length, and what bucketing saves."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from rnnexport.bench.inputs import _feeds, _no_states
from rnnexport.bench.sessions import _ort_call
from rnnexport.bench.timing import _interleaved
from rnnexport.feeds import Feeds
from rnnexport.runtime import bucketed_run
from rnnexport.spec import Contract

# Ragged-batch scenario: batch and padded length (the measurements).
RAGGED_BATCH, RAGGED_SEQ = 32, 200


def _ragged(
    session: Any,
    contract: Contract,
    lengths_name: str,
    *,
    start: Callable[[int], Feeds] = _no_states,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    bound: Callable[[int, int], Callable[[], None]] = lambda batch, seq: lambda: None,
) -> dict[str, Any]:
    """What ``sequence_lens`` costs when rows differ in length, and what bucketing saves."""
    batch, seq = RAGGED_BATCH, RAGGED_SEQ
    base = _feeds(contract, start, batch=batch, seq=seq)
    rng = np.random.default_rng(1)
    scenarios: dict[str, np.ndarray] = {
        f"all rows {seq}": np.full(batch, seq),
        f"one row {seq}, {batch - 1} rows of 1": np.r_[seq, np.ones(batch - 1)],
        f"all rows {seq // 2} (padded to {seq})": np.full(batch, seq // 2),
        f"lengths uniform in 1..{seq}": rng.integers(1, seq + 1, size=batch),
    }
    calls: dict[str, Callable[[], object]] = {}
    for name, lengths in scenarios.items():
        feeds = {**base, lengths_name: lengths.astype(base[lengths_name].dtype)}
        calls[name] = _ort_call(session, feeds)
        if lengths.min() != lengths.max():
            calls[f"{name}, bucketed"] = functools.partial(
                bucketed_run, session, feeds, lengths_input=lengths_name
            )
    # The same short rows with no long one: what the batch would cost if it were not padded.
    unpadded = _feeds(contract, start, batch=batch, seq=seq // 2)
    unpadded[lengths_name] = np.full(batch, seq // 2, dtype=unpadded[lengths_name].dtype)
    calls[f"all rows {seq // 2} (seq {seq // 2}, no padding)"] = _ort_call(session, unpadded)
    stats = _interleaved(
        calls,
        rounds=rounds,
        repeats=repeats,
        burst_seconds=burst_seconds,
        tick=bound(batch, seq),
        where=f"(ragged batches, batch {batch}, seq {seq})",
    )
    return {
        "batch": batch,
        "seq": seq,
        "scenarios": {name: s.to_json() for name, s in stats.items()},
        "note": (
            "ONNX Runtime steps the whole batch through max(lengths) steps: rows stop contributing at "
            "their length, but the time follows the longest row; bucketed_run groups rows by length"
        ),
    }
