"""Comparing ONNX Runtime outputs with PyTorch references. Comparisons return data; callers decide.

An element passes when ``|actual - expected| <= atol + rtol * |expected|`` and both are finite.
Checks run in the order count, shape, dtype, values, and every case of every output is compared
(no early exit), so a report shows the whole picture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rnnexport.feeds import Case
from rnnexport.runtime import PROVIDERS, Device, OrtRunner, ProviderUnavailableError, create_session

__all__ = [
    "CaseResult",
    "OutputComparison",
    "ProviderResult",
    "Status",
    "Tolerance",
    "compare_outputs",
    "verify_on_device",
]

Status = Literal["passed", "failed", "unavailable", "skipped"]


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|``, elementwise."""

    atol: float = 1e-5
    rtol: float = 1e-4

    def to_json(self) -> dict[str, float]:
        """For the manifest."""
        return {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class OutputComparison:
    """How one output of one case compares. ``problem`` is None when it passed."""

    name: str
    shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    # max(|actual - expected| / (atol + rtol*|expected|)): the figure the rule decides on; <= 1 passes.
    max_ratio: float = 0.0
    worst_index: list[int] | None = None
    mismatched: int = 0
    nonfinite: int = 0
    problem: str | None = None

    @property
    def passed(self) -> bool:
        """True when count, shape, dtype and every value are within tolerance."""
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        """For reports."""
        return {
            "name": self.name,
            "shape": self.shape,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "max_ratio": self.max_ratio,
            "worst_index": self.worst_index,
            "mismatched": self.mismatched,
            "nonfinite": self.nonfinite,
            "problem": self.problem,
        }


def _compare_one(name: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> OutputComparison:
    if actual.shape != expected.shape:
        return OutputComparison(
            name, list(actual.shape), problem=f"shape {list(actual.shape)}, expected {list(expected.shape)}"
        )
    if actual.dtype != expected.dtype:
        return OutputComparison(
            name, list(actual.shape), problem=f"dtype {actual.dtype}, expected {expected.dtype}"
        )
    if actual.size == 0:
        return OutputComparison(name, list(actual.shape))
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nonfinite = int((~np.isfinite(a)).sum())
    diff = np.abs(a - e)
    allowed = tol.atol + tol.rtol * np.abs(e)
    bad = ~(diff <= allowed)  # NaN anywhere compares False, so it counts as bad
    # Relative error where it means something: where |expected| exceeds atol. Below that the absolute
    # term governs, and dividing by a near-zero reference would report noise as a huge ratio.
    rel = np.divide(diff, np.abs(e), out=np.zeros_like(diff), where=np.abs(e) > tol.atol)
    finite_diff = np.where(np.isfinite(diff), diff, 0.0)
    # Point at the worst offender: the first non-finite element, else the largest excess over tolerance.
    excess = np.where(np.isfinite(diff), diff - allowed, np.inf)
    # A zero tolerance allows only exact equality: 0/0 counts as 0, anything else over 0 as infinite.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, np.where(np.isfinite(diff), diff / allowed, np.inf))
    worst = [int(i) for i in np.unravel_index(int(np.argmax(excess)), a.shape)]
    mismatched = int(bad.sum())
    problem = None
    if nonfinite:
        problem = f"{nonfinite} non-finite value(s) in the ONNX Runtime output"
    elif mismatched:
        problem = (
            f"{mismatched} of {a.size} values outside atol {tol.atol:g} + rtol {tol.rtol:g}*|expected|, "
            "worst at "
            f"{worst}: got {a[tuple(worst)]:.8g}, expected {e[tuple(worst)]:.8g}"
        )
    return OutputComparison(
        name,
        list(actual.shape),
        max_abs=float(finite_diff.max()),
        max_rel=float(np.nanmax(rel)),
        max_ratio=float(ratio.max()),
        worst_index=worst,
        mismatched=mismatched,
        nonfinite=nonfinite,
        problem=problem,
    )


def compare_outputs(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tol: Tolerance
) -> list[OutputComparison]:
    """Compare every expected output with its actual counterpart; missing or extra names are problems."""
    results = [
        _compare_one(name, actual[name], want, tol)
        if name in actual
        else OutputComparison(name, list(want.shape), problem="output missing")
        for name, want in expected.items()
    ]
    results += [
        OutputComparison(name, list(got.shape), problem="unexpected output")
        for name, got in actual.items()
        if name not in expected
    ]
    return results


@dataclass(frozen=True)
class CaseResult:
    """One case on one provider."""

    case: str
    shapes: dict[str, list[int]]
    outputs: list[OutputComparison]
    error: str | None = None

    @property
    def passed(self) -> bool:
        """True when the case ran and every output passed."""
        return self.error is None and all(o.passed for o in self.outputs)


@dataclass(frozen=True)
class ProviderResult:
    """Verification of one model on one device's provider."""

    device: Device
    provider: str
    status: Status
    tolerance: Tolerance
    tf32: bool = False
    reason: str = ""
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        """Largest absolute error over all cases and outputs."""
        return max((o.max_abs for c in self.cases for o in c.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        """Largest relative error over all cases and outputs."""
        return max((o.max_rel for c in self.cases for o in c.outputs), default=0.0)

    @property
    def max_ratio(self) -> float:
        """Largest error as a fraction of what the tolerance allows there; at most 1 means passed."""
        return max((o.max_ratio for c in self.cases for o in c.outputs), default=0.0)

    @property
    def worst(self) -> dict[str, Any] | None:
        """Where the largest absolute error happened: case, input shapes, output and element index."""
        located = [(o.max_abs, c, o) for c in self.cases for o in c.outputs if o.worst_index is not None]
        if not located:
            return None
        _, case, output = max(located, key=lambda item: item[0])
        return {"case": case.case, "shapes": case.shapes, "output": output.name, "index": output.worst_index}

    @property
    def failures(self) -> list[str]:
        """One line per failing case/output."""
        lines = []
        for c in self.cases:
            if c.error:
                lines.append(f"{c.case} {c.shapes}: {c.error}")
            lines += [f"{c.case} {c.shapes}, output '{o.name}': {o.problem}" for o in c.outputs if o.problem]
        return lines

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``verification.providers[provider]`` entry."""
        data: dict[str, Any] = {"status": self.status, "device": self.device}
        if self.reason:
            data["reason"] = self.reason
        if self.status in ("passed", "failed"):
            data |= {
                "max_abs_error": self.max_abs,
                "max_rel_error": self.max_rel,
                "max_error_ratio": self.max_ratio,
                "tolerance": self.tolerance.to_json(),
                "worst": self.worst,
                "cases": len(self.cases),
                "shapes": [c.shapes for c in self.cases],
            }
            if self.device == "cuda":
                data["tf32"] = self.tf32
            if self.status == "failed":
                data["failures"] = self.failures[:20]
        return data


def verify_on_device(
    model: bytes | Path,
    cases: Sequence[Case],
    *,
    device: Device,
    tol: Tolerance,
    tf32: bool = False,
    on_case: Callable[[int], None] | None = None,
) -> ProviderResult:
    """Run every case through ONNX Runtime on ``device`` and compare with the cases' expected outputs.

    ``on_case(done)`` is called after each case, for progress displays.
    Never raises for a verification outcome: an unusable provider gives status ``unavailable`` with
    the reason, a mismatch or a run-time error gives ``failed`` with the details.
    """
    provider = PROVIDERS[device]
    try:
        runner = OrtRunner(create_session(model, device, tf32=tf32))
    except ProviderUnavailableError as exc:
        return ProviderResult(device, provider, "unavailable", tol, tf32, reason=str(exc))
    except Exception as exc:  # ORT rejecting the model itself is a failure, not unavailability
        return ProviderResult(device, provider, "failed", tol, tf32, reason=f"session creation failed: {exc}")
    results = []
    for case in cases:
        try:
            outputs = compare_outputs(runner.infer(case.inputs), case.outputs, tol)
            results.append(CaseResult(case.name, case.shapes, outputs))
        except Exception as exc:  # a run-time failure at one shape must not hide the others
            results.append(CaseResult(case.name, case.shapes, [], error=f"{type(exc).__name__}: {exc}"))
        if on_case is not None:
            on_case(len(results))
    status: Status = "passed" if results and all(r.passed for r in results) else "failed"
    return ProviderResult(device, provider, status, tol, tf32, cases=results)
