"""The float64 oracle: error statistics along the sequence, and the float64 references in test data.

Recurrences amplify rounding: the longer the sequence, the further *any* float32 computation of the
same model drifts from the exact result, PyTorch's own included. A fixed tolerance against the
float32 PyTorch output therefore refuses correct exports at long sequences, or (loosened) hides real
errors at short ones. rnnexport computes a float64 reference of the same module and weights and
measures both the artifact and PyTorch float32 against it; :mod:`rnnexport.runtime.compare` holds the rule
that decides on those figures. This module holds what that needs and what reports show:

- :func:`step_buckets`: the time buckets (steps 1-10, 11-100, 101-1000, 1001+) errors are reported in;
- :class:`ErrorAccumulator`: max / mean / p99 over every case, overall and per bucket;
- :func:`write_float64_outputs`: the float64 references shipped beside the ONNX test data
  (``test_data_set_N/float64_output_K.pb``), so ``rnnexport verify`` applies the same rule on the
  target without torch (:mod:`rnnexport.artifact` reads them back, with its checks). The name does
  not match ``output_*.pb``, so ONNX's test runners never mistake it for an expected output of
  the float32 model.

numpy and onnx only: the verify path imports this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

from rnnexport.feeds import Feeds
from rnnexport.spec import SEQ, Contract

__all__ = [
    "FLOAT64_OUTPUT",
    "STEP_BUCKETS",
    "ErrorAccumulator",
    "ErrorStats",
    "seq_axes",
    "step_buckets",
    "write_float64_outputs",
]

# (first step, last step or None), 1-based and inclusive: decades, so growth with T reads at a glance.
STEP_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 10), (11, 100), (101, 1000), (1001, None))
FLOAT64_OUTPUT = "float64_output_{k}.pb"


def _label(first: int, last: int | None) -> str:
    return f"{first}+" if last is None else f"{first}-{last}"


def step_buckets(length: int) -> list[tuple[str, slice]]:
    """The buckets a sequence of ``length`` steps reaches, as ``(label, slice of step indices)``."""
    return [(_label(first, last), slice(first - 1, last)) for first, last in STEP_BUCKETS if first <= length]


def seq_axes(contract: Contract) -> dict[str, int]:
    """Output name -> index of its sequence axis, for every output that has one."""
    return {t.name: t.shape.index(SEQ) for t in contract.outputs if SEQ in t.shape}


def float64_inputs(feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Float inputs cast to float64; integer inputs (lengths) unchanged."""
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}


@dataclass(frozen=True)
class ErrorStats:
    """Absolute errors of many elements in three figures."""

    max: float
    mean: float
    p99: float

    @classmethod
    def of(cls, errors: np.ndarray) -> ErrorStats:
        """Statistics of a flat array of absolute errors (non-finite values count as infinite)."""
        if errors.size == 0:
            return cls(0.0, 0.0, 0.0)
        errors = np.where(np.isfinite(errors), errors, np.inf)
        return cls(float(errors.max()), float(errors.mean()), float(np.quantile(errors, 0.99)))

    def to_json(self) -> dict[str, float]:
        """For the manifest."""
        return {"max": self.max, "mean": self.mean, "p99": self.p99}


class ErrorAccumulator:
    """Collects absolute errors over many cases and summarises them, overall and per time bucket.

    ``add`` takes one case's outputs from the artifact and both references. Errors against float64
    are kept for the artifact and for PyTorch float32 (the yardstick); errors against the float32
    reference are kept for the artifact alone.
    """

    def __init__(self, axes: Mapping[str, int]) -> None:
        self.axes = dict(axes)
        self._artifact: list[np.ndarray] = []
        self._pytorch: list[np.ndarray] = []
        self._vs_float32: list[np.ndarray] = []
        self._buckets: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def add(self, actual: Feeds, float32: Feeds, float64: Feeds | None) -> None:
        """Record one case; outputs missing from ``actual`` or of another shape are skipped (the
        comparison reports those)."""
        for name, want in float32.items():
            got = actual.get(name)
            if got is None or got.shape != want.shape:
                continue
            a = got.astype(np.float64)
            self._vs_float32.append(np.abs(a - want).ravel())
            if float64 is None or name not in float64:
                continue
            exact = float64[name].astype(np.float64)
            artifact, pytorch = np.abs(a - exact), np.abs(want.astype(np.float64) - exact)
            self._artifact.append(artifact.ravel())
            self._pytorch.append(pytorch.ravel())
            axis = self.axes.get(name)
            if axis is None:
                continue
            for label, steps in step_buckets(a.shape[axis]):
                where = [slice(None)] * a.ndim
                where[axis] = steps
                lists = self._buckets.setdefault(label, ([], []))
                lists[0].append(artifact[tuple(where)].ravel())
                lists[1].append(pytorch[tuple(where)].ravel())

    @staticmethod
    def _stats(parts: Sequence[np.ndarray]) -> ErrorStats:
        return ErrorStats.of(np.concatenate(parts) if parts else np.zeros(0))

    def summary(self) -> dict[str, Any]:
        """``{artifact_vs_float64, pytorch_float32_vs_float64, artifact_vs_float32, by_steps}``; the
        float64 parts only when some case had a float64 reference."""
        data: dict[str, Any] = {"artifact_vs_float32": self._stats(self._vs_float32).to_json()}
        if self._artifact:
            data["artifact_vs_float64"] = self._stats(self._artifact).to_json()
            data["pytorch_float32_vs_float64"] = self._stats(self._pytorch).to_json()
        order = [_label(first, last) for first, last in STEP_BUCKETS]
        data["by_steps"] = [
            {
                "steps": label,
                "artifact_vs_float64": self._stats(self._buckets[label][0]).to_json(),
                "pytorch_float32_vs_float64": self._stats(self._buckets[label][1]).to_json(),
            }
            for label in order
            if label in self._buckets
        ]
        return data


def write_float64_outputs(folder: Path, references: Sequence[Feeds], contract: Contract) -> None:
    """Write ``test_data_set_N/float64_output_K.pb`` for the N-th shipped case's float64 outputs."""
    for n, outputs in enumerate(references):
        directory = folder / f"test_data_set_{n}"
        for k, name in enumerate(contract.output_names):
            array = np.ascontiguousarray(outputs[name], dtype=np.float64)
            tensor = numpy_helper.from_array(array, name=name)
            (directory / FLOAT64_OUTPUT.format(k=k)).write_bytes(tensor.SerializeToString())
