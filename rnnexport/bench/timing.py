"""Timing: bursts of calls after a warm-up and a pause, in alternating rounds, and their statistics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnexport.errors import ArtifactError, RnnExportError
from rnnexport.text import visible as _safe

# Pause before each burst, so that the previous runtime's spinning worker threads go to sleep.
SETTLE_SECONDS = 0.005
WARMUP_CALLS = 2


@dataclass(frozen=True)
class LatencyStats:
    """One runtime's call latency at one shape.

    Percentiles are over every timed call of every round. ``best_round_p50_ms`` is the lowest of the
    rounds' medians: load from other processes only ever adds time, so on a busy machine it is the
    figure closest to the unloaded one, and the one speedups are computed from.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    best_round_p50_ms: float
    samples: int

    @classmethod
    def of(cls, rounds: Sequence[Sequence[float]]) -> LatencyStats:
        """Statistics of call times in seconds, given round by round."""
        ms = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds if len(r)]) * 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        best = min(float(np.median(r)) for r in rounds if len(r)) * 1e3
        return cls(p50, p90, p99, float(ms.mean()), float(ms.min()), best, int(ms.size))

    def to_json(self) -> dict[str, Any]:
        """For reports."""
        return dataclasses.asdict(self)


def _burst(
    call: Callable[[], object], *, repeats: int, burst_seconds: float, sync: Callable[[], None]
) -> list[float]:
    """Untimed warm-up calls after a short pause, then up to ``repeats`` timed calls (seconds each)."""
    time.sleep(SETTLE_SECONDS)
    for _ in range(WARMUP_CALLS):
        start = time.perf_counter()
        call()
        sync()
        if time.perf_counter() - start > burst_seconds / 4:
            break  # a slow call warms up in one go; a second one would only cost time
    burst: list[float] = []
    burst_start = time.perf_counter()
    for k in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        burst.append(time.perf_counter() - start)
        if k >= 1 and time.perf_counter() - burst_start > burst_seconds:
            break
    return burst


def _interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    sync: Callable[[], None] = lambda: None,
    tick: Callable[[], None] = lambda: None,
    where: str = "",
) -> dict[str, LatencyStats]:
    """Time every call in alternating rounds; the order rotates each round so none is always first.

    A burst is ``repeats`` timed calls, cut short after ``burst_seconds`` (but never fewer than 2), so
    a slow shape does not take minutes. ``tick()`` is called before each burst, outside the timed
    calls (the child process's report to its parent: a new time bound). A call that raises is an
    :class:`ArtifactError` naming the runtime and ``where``.
    """
    names = list(calls)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tick()
            try:
                times[name].append(
                    _burst(calls[name], repeats=repeats, burst_seconds=burst_seconds, sync=sync)
                )
            except RnnExportError:
                raise
            except Exception as exc:  # ONNX Runtime and PyTorch raise many types; all mean "cannot run"
                raise ArtifactError(
                    f"{f'{name} {where}'.strip()} failed, so nothing was measured: {_first_line(exc)}. A "
                    "model that cannot run at these shapes (one that asks for more memory than the "
                    "machine has, for example) is not one rnnexport builds; 'rnnexport verify' checks it."
                ) from None
    return {n: LatencyStats.of(t) for n, t in times.items()}


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, capped: what a runtime's failure says, without its dump."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return _safe(f"{type(exc).__name__}: {first[:500]}")
