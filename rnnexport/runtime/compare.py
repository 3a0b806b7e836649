"""Comparing ONNX Runtime outputs with PyTorch references. Comparisons return data; callers decide.

Two rules, named by :class:`Criterion`:

- ``tolerance``: an element passes when ``|actual - float32| <= atol + rtol * |float32|`` against the
  float32 PyTorch reference, and both are finite.
- ``oracle`` (the build default): errors are measured against a float64 run of the same module and
  weights, and the artifact is held to what float32 arithmetic itself achieves. Within a group (one
  output of one case, and for outputs with a sequence axis one time bucket of it, see
  :func:`rnnexport.runtime.oracle.step_buckets`), let ``E_pt`` be PyTorch float32's largest error against
  float64. Every element must satisfy

      |actual - float64| <= max(factor * E_pt, atol + rtol * |float64|)

  and be finite. ``factor`` (:data:`ORACLE_FACTOR`, 4) is the margin for a different but equally
  valid float32 evaluation order: measured ONNX Runtime / PyTorch error ratios stay within 2, while a
  real export error (a swapped gate, a wrong weight) is thousands of times PyTorch's own. The
  ``atol``/``rtol`` floor keeps short sequences, where PyTorch float32 may land almost exactly on the
  float64 result, from demanding more than the tolerance rule would. Per bucket, so the error budget
  a long sequence earns at step 1000 never excuses an error at step 5.

Checks run in the order count, shape, dtype, values, and every case of every output is compared
(no early exit), so a report shows the whole picture.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rnnexport.feeds import Feeds
from rnnexport.runtime import PROVIDERS, Device, OrtRunner, ProviderUnavailableError, create_session
from rnnexport.runtime.oracle import ErrorAccumulator, step_buckets

if TYPE_CHECKING:
    # plan.py builds on this module's Criterion and Tolerance: a run-time import would be a cycle.
    from rnnexport.runtime.plan import VerificationPlan

__all__ = [
    "ORACLE_FACTOR",
    "RULES",
    "CaseResult",
    "Criterion",
    "OutputComparison",
    "ProviderResult",
    "Rule",
    "Status",
    "Tolerance",
    "compare_outputs",
    "verify_on_device",
]

Status = Literal["passed", "failed", "unavailable", "skipped"]
Rule = Literal["oracle", "tolerance"]
RULES: tuple[Rule, ...] = ("oracle", "tolerance")
# The artifact may be this many times further from float64 than PyTorch float32 is (see above).
ORACLE_FACTOR = 4.0


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol + rtol * |expected|``, elementwise."""

    atol: float = 1e-5
    rtol: float = 1e-4

    def to_json(self) -> dict[str, float]:
        """For the manifest."""
        return {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class Criterion:
    """Which rule decides, and the oracle rule's factor. The tolerance itself is a :class:`Tolerance`."""

    rule: Rule = "tolerance"
    factor: float = ORACLE_FACTOR

    def statement(self) -> str:
        """The rule in one line, for reports and the manifest."""
        if self.rule == "oracle":
            return (
                f"per output, case and time bucket: |ort - float64| <= max({self.factor:g} * PyTorch "
                "float32's max error against float64 there, atol + rtol*|float64|), all values finite"
            )
        return "|ort - float32| <= atol + rtol*|float32|, all values finite"

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        data: dict[str, Any] = {"name": self.rule, "statement": self.statement()}
        if self.rule == "oracle":
            data["factor"] = self.factor
        return data

    @classmethod
    def from_json(cls, data: object) -> Criterion:
        """Inverse of :meth:`to_json`. A plain string (manifests from before the oracle) means the
        tolerance rule; raises TypeError/ValueError on anything else malformed."""
        if isinstance(data, str):
            return cls("tolerance")
        if not isinstance(data, Mapping) or data.get("name") not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}")
        factor = data.get("factor", ORACLE_FACTOR)
        # Never looser than a build applies: a manifest is not signed, and a huge factor passes anything.
        number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
        if not number or not 1 <= factor <= ORACLE_FACTOR:
            raise TypeError(f"the oracle factor must be a number from 1 to {ORACLE_FACTOR:g}, got {factor!r}")
        return cls(data["name"], float(factor))


@dataclass(frozen=True)
class OracleErrors:
    """One output of one case measured against float64: the artifact's and PyTorch float32's
    largest errors, overall and per time bucket, and the oracle rule's verdict figure."""

    artifact: float
    pytorch: float
    # max(|actual - float64| / allowed) under the oracle rule; <= 1 passes.
    ratio: float
    by_steps: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """For reports."""
        return {
            "artifact_vs_float64": self.artifact,
            "pytorch_float32_vs_float64": self.pytorch,
            "oracle_ratio": self.ratio,
            "by_steps": {k: {"artifact": a, "pytorch": p} for k, (a, p) in self.by_steps.items()},
        }


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
    # Errors against the float64 reference, when the case has one.
    oracle: OracleErrors | None = None

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
            "oracle": None if self.oracle is None else self.oracle.to_json(),
        }


def _oracle_errors(
    actual: np.ndarray,
    float32: np.ndarray,
    float64: np.ndarray,
    tol: Tolerance,
    factor: float,
    axis: int | None,
) -> tuple[OracleErrors, str | None]:
    """Measure one output against float64 and apply the oracle rule per time bucket (see the module
    docstring). Returns the figures and, when the rule fails, the problem in one sentence."""
    a, exact = actual.astype(np.float64), float64.astype(np.float64)
    artifact = np.abs(a - exact)
    pytorch = np.abs(float32.astype(np.float64) - exact)
    groups: list[tuple[str, tuple[slice, ...]]] = [("all", (slice(None),) * a.ndim)]
    if axis is not None:
        groups = [
            (label, tuple(steps if i == axis else slice(None) for i in range(a.ndim)))
            for label, steps in step_buckets(a.shape[axis])
        ]
    by_steps: dict[str, tuple[float, float]] = {}
    worst: tuple[float, str, int, int, float, float] | None = None  # ratio, bucket, bad, count, err, pytorch
    for label, where in groups:
        err, own = artifact[where], pytorch[where]
        finite_own = own[np.isfinite(own)]
        scale = factor * float(finite_own.max()) if finite_own.size else 0.0
        allowed = np.maximum(scale, tol.atol + tol.rtol * np.abs(exact[where]))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(err == 0, 0.0, np.where(np.isfinite(err), err / allowed, np.inf))
        bad = int((~(err <= allowed)).sum())  # NaN compares False: it counts as bad
        finite_err = err[np.isfinite(err)]
        group_max = float(finite_err.max()) if finite_err.size else 0.0
        if axis is not None:
            by_steps[label] = (group_max, float(finite_own.max()) if finite_own.size else 0.0)
        group_ratio = float(ratio.max()) if ratio.size else 0.0
        if worst is None or group_ratio > worst[0]:
            worst = (group_ratio, label, bad, err.size, group_max, scale / factor)
    assert worst is not None
    finite_art = artifact[np.isfinite(artifact)]
    finite_pt = pytorch[np.isfinite(pytorch)]
    errors = OracleErrors(
        artifact=float(finite_art.max()) if finite_art.size else 0.0,
        pytorch=float(finite_pt.max()) if finite_pt.size else 0.0,
        ratio=worst[0],
        by_steps=by_steps,
    )
    ratio_, label, bad, count, err_max, own_max = worst
    if not bad:
        return errors, None
    where_ = "" if label == "all" else f" in steps {label}"
    return errors, (
        f"{bad} of {count} values{where_} beyond max({factor:g} x PyTorch float32's own error "
        f"{own_max:.2e}, atol {tol.atol:g} + rtol {tol.rtol:g}*|float64|): the largest error against "
        f"float64 there is {err_max:.2e}, {ratio_:.3g} times what the oracle rule allows"
    )


def _compare_one(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tol: Tolerance,
    *,
    criterion: Criterion,
    float64: np.ndarray | None,
    axis: int | None,
) -> OutputComparison:
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
    oracle = None
    oracle_problem = None
    if float64 is not None and float64.shape == actual.shape:
        oracle, oracle_problem = _oracle_errors(actual, expected, float64, tol, criterion.factor, axis)
    problem = None
    if nonfinite:
        problem = f"{nonfinite} non-finite value(s) in the ONNX Runtime output"
    elif criterion.rule == "oracle":
        if oracle is None:
            problem = "no float64 reference for this case, which the oracle rule needs (rebuild the artifact)"
        else:
            problem = oracle_problem
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
        max_ratio=oracle.ratio if criterion.rule == "oracle" and oracle else float(ratio.max()),
        worst_index=worst,
        mismatched=mismatched,
        nonfinite=nonfinite,
        problem=problem,
        oracle=oracle,
    )


def compare_outputs(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tol: Tolerance,
    *,
    criterion: Criterion | None = None,
    float64: Mapping[str, np.ndarray] | None = None,
    seq_axes: Mapping[str, int] | None = None,
) -> list[OutputComparison]:
    """Compare every expected output with its actual counterpart; missing or extra names are problems.

    ``expected`` is the float32 reference. With ``float64`` (the same model run in float64) each output
    also carries its errors against it (:class:`OracleErrors`), per time bucket along ``seq_axes``;
    ``criterion`` says which rule sets ``problem`` (default: the tolerance rule).
    """
    criterion = criterion or Criterion()
    axes = seq_axes or {}
    results = [
        _compare_one(
            name,
            actual[name],
            want,
            tol,
            criterion=criterion,
            float64=None if float64 is None else float64.get(name),
            axis=axes.get(name),
        )
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
    criterion: Criterion = field(default_factory=Criterion)
    # Pooled error statistics (see rnnexport.runtime.oracle.ErrorAccumulator.summary); empty when nothing ran.
    errors: dict[str, Any] = field(default_factory=dict)

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

    @staticmethod
    def _case_json(case: CaseResult) -> dict[str, Any]:
        """One case in a line: its largest errors against float32 and float64 and the rule's figure."""
        measured = [o.oracle for o in case.outputs if o.oracle is not None]
        data: dict[str, Any] = {
            "case": case.case,
            "passed": case.passed,
            "artifact_vs_float32": max((o.max_abs for o in case.outputs), default=0.0),
            "err_allowed": max((o.max_ratio for o in case.outputs), default=0.0),
        }
        if measured:
            data["artifact_vs_float64"] = max(m.artifact for m in measured)
            data["pytorch_float32_vs_float64"] = max(m.pytorch for m in measured)
        return data

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
                "rule": self.criterion.rule,
                **({"oracle_factor": self.criterion.factor} if self.criterion.rule == "oracle" else {}),
                "errors": self.errors,
                "per_case": [self._case_json(c) for c in self.cases],
            }
            if self.device == "cuda":
                data["tf32"] = self.tf32
            if self.status == "failed":
                data["failures"] = self.failures[:20]
        return data


def verify_on_device(
    model: bytes | Path,
    plan: VerificationPlan,
    *,
    device: Device,
    on_case: Callable[[int], None] | None = None,
    open_runner: Callable[[bytes | Path], Any] | None = None,
    provider: str | None = None,
) -> ProviderResult:
    """Run every case of ``plan`` through ONNX Runtime on ``device`` and judge it by the plan's rule.

    The tolerance is ``plan.tolerance(device)`` and TF32 ``plan.tf32_for(device)``. The plan's
    ``chains`` are streaming cases that are consecutive calls of one stream: every call after the
    first takes its state inputs from what ONNX Runtime returned for the call before it
    (``state_pairs``: state output -> state input), not from the recorded values, so the chain is
    replayed on this provider the way a device runs it. ``float64`` references, where the plan has
    them, are measured against (see the module docstring), per time bucket along ``seq_axes``.

    ``on_case(done)`` is called after each case, for progress displays. ``open_runner`` runs the model
    on another runtime instead (a module-level callable, so that it reaches a worker process:
    ``model -> runner`` with ``infer(feeds) -> outputs``; it raises
    :class:`~rnnexport.runtime.ProviderUnavailableError` where that runtime cannot run), reported as
    ``provider``.
    Never raises for a verification outcome: an unusable provider gives status ``unavailable`` with
    the reason, a mismatch or a run-time error gives ``failed`` with the details.
    """
    tol, tf32, criterion = plan.tolerance(device), plan.tf32_for(device), plan.criterion
    provider = provider or PROVIDERS[device]
    try:
        runner = open_runner(model) if open_runner else OrtRunner(create_session(model, device, tf32=tf32))
    except ProviderUnavailableError as exc:
        return ProviderResult(
            device, provider, "unavailable", tol, tf32, reason=str(exc), criterion=criterion
        )
    except Exception as exc:  # ORT rejecting the model itself is a failure, not unavailability
        return ProviderResult(
            device,
            provider,
            "failed",
            tol,
            tf32,
            reason=f"session creation failed: {exc}",
            criterion=criterion,
        )
    results = []
    accumulator = ErrorAccumulator(plan.seq_axes)
    previous = {later: earlier for chain in plan.chains for earlier, later in itertools.pairwise(chain)}
    returned: dict[str, Feeds] = {}
    for case in plan.cases:
        try:
            feeds = case.inputs
            if case.name in previous:
                before = returned.get(previous[case.name])
                if before is None:
                    raise RuntimeError(f"the call before it in its chain ({previous[case.name]}) did not run")
                feeds = {**feeds, **{i: before[o] for o, i in plan.state_pairs.items()}}
            actual = runner.infer(feeds)
            returned[case.name] = actual
            exact = plan.float64.get(case.name)
            outputs = compare_outputs(
                actual, case.outputs, tol, criterion=criterion, float64=exact, seq_axes=plan.seq_axes
            )
            accumulator.add(actual, case.outputs, exact)
            results.append(CaseResult(case.name, case.shapes, outputs))
        except Exception as exc:  # a run-time failure at one shape must not hide the others
            results.append(CaseResult(case.name, case.shapes, [], error=f"{type(exc).__name__}: {exc}"))
        if on_case is not None:
            on_case(len(results))
    status: Status = "passed" if results and all(r.passed for r in results) else "failed"
    return ProviderResult(
        device, provider, status, tol, tf32, cases=results, criterion=criterion, errors=accumulator.summary()
    )
