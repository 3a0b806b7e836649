"""The float64 oracle rule and the error statistics along the sequence, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from rnnexport.runtime.compare import Criterion, Tolerance, compare_outputs
from rnnexport.runtime.oracle import ErrorAccumulator, step_buckets

TOL = Tolerance(atol=1e-5, rtol=1e-4)
ORACLE = Criterion("oracle", factor=4.0)
SEQ_AXIS = {"y": 1}


def _exact(shape: tuple[int, ...] = (2, 50, 3)) -> np.ndarray:
    # Values in [0.1, 0.5]: the rtol term stays below 5e-5, so atol + rtol*|y| is about 6e-5 at most.
    return np.random.default_rng(0).uniform(0.1, 0.5, size=shape)


def _compare(actual: np.ndarray, float32: np.ndarray, exact: np.ndarray, criterion: Criterion) -> str | None:
    [result] = compare_outputs(
        {"y": actual.astype(np.float32)},
        {"y": float32.astype(np.float32)},
        TOL,
        criterion=criterion,
        float64={"y": exact},
        seq_axes=SEQ_AXIS,
    )
    return result.problem


def test_within_factor_of_pytorch_error_passes_though_above_atol() -> None:
    exact = _exact()
    float32 = exact + 1e-4  # PyTorch float32's own error: 1e-4, beyond atol 1e-5 + rtol 1e-4*|y|
    artifact = exact - 3e-4  # three times PyTorch's error, 4e-4 from the float32 reference
    assert _compare(artifact, float32, exact, ORACLE) is None
    tolerance = _compare(artifact, float32, exact, Criterion("tolerance"))
    assert tolerance is not None
    assert "outside atol" in tolerance


def test_beyond_factor_of_pytorch_error_fails() -> None:
    exact = _exact()
    problem = _compare(exact + 6e-4, exact + 1e-4, exact, ORACLE)
    assert problem is not None
    assert "4 x PyTorch float32's own error" in problem
    assert "steps 1-10" in problem or "steps 11-100" in problem


def test_the_atol_floor_applies_where_pytorch_is_exact() -> None:
    exact = _exact()
    # PyTorch float32 equal to float64 (to float32 rounding): only the atol/rtol floor allows anything.
    assert _compare(exact + 5e-6, exact, exact, ORACLE) is None
    assert _compare(exact + 2e-4, exact, exact, ORACLE) is not None


def test_late_steps_error_budget_does_not_excuse_an_early_error() -> None:
    exact = _exact((1, 200, 2))
    float32 = exact.copy()
    float32[:, 100:] += 1e-3  # PyTorch drifts far at steps 101-200 ...
    artifact = float32.copy()
    artifact[:, :100] = exact[:, :100]
    artifact[0, 49, 0] += 1e-4  # ... but the artifact is wrong at step 50, where PyTorch is exact
    problem = _compare(artifact, float32, exact, ORACLE)
    assert problem is not None
    assert "in steps 11-100" in problem
    # Judged per output instead of per bucket, the late budget (4e-3) would have hidden it.
    [whole] = compare_outputs(
        {"y": artifact.astype(np.float32)},
        {"y": float32.astype(np.float32)},
        TOL,
        criterion=ORACLE,
        float64={"y": exact},
    )
    assert whole.passed


def test_non_finite_and_missing_reference_fail() -> None:
    exact = _exact()
    broken = exact.copy()
    broken[0, 3, 1] = np.nan
    assert _compare(broken, exact, exact, ORACLE) is not None
    [result] = compare_outputs(
        {"y": exact.astype(np.float32)}, {"y": exact.astype(np.float32)}, TOL, criterion=ORACLE
    )
    assert result.problem is not None
    assert "no float64 reference" in result.problem


def test_errors_per_bucket_are_reported() -> None:
    exact = _exact((1, 120, 1))
    artifact = exact.copy()
    artifact[0, 5, 0] += 1e-6
    artifact[0, 110, 0] += 3e-6
    [result] = compare_outputs(
        {"y": artifact.astype(np.float32)},
        {"y": exact.astype(np.float32)},
        TOL,
        criterion=ORACLE,
        float64={"y": exact},
        seq_axes=SEQ_AXIS,
    )
    assert result.oracle is not None
    assert list(result.oracle.by_steps) == ["1-10", "11-100", "101-1000"]
    assert result.oracle.by_steps["1-10"][0] == pytest.approx(1e-6, rel=0.1)
    assert result.oracle.by_steps["11-100"][0] < 1e-7  # float32 rounding only
    assert result.oracle.by_steps["101-1000"][0] == pytest.approx(3e-6, rel=0.05)


def test_step_buckets() -> None:
    assert step_buckets(1) == [("1-10", slice(0, 10))]
    assert [label for label, _ in step_buckets(10)] == ["1-10"]
    assert [label for label, _ in step_buckets(11)] == ["1-10", "11-100"]
    assert [label for label, _ in step_buckets(1001)] == ["1-10", "11-100", "101-1000", "1001+"]
    assert step_buckets(1001)[-1][1] == slice(1000, None)


def test_accumulator_pools_cases_per_bucket() -> None:
    exact_short = np.zeros((1, 5, 1))
    exact_long = np.zeros((1, 1001, 1))
    short = exact_short + 1e-3
    long = exact_long.copy()
    long[0, 1000, 0] = 5e-2  # only the 1001st step is off
    accumulator = ErrorAccumulator(SEQ_AXIS)
    accumulator.add(
        {"y": short.astype(np.float32)}, {"y": exact_short.astype(np.float32)}, {"y": exact_short}
    )
    accumulator.add({"y": long.astype(np.float32)}, {"y": exact_long.astype(np.float32)}, {"y": exact_long})
    summary = accumulator.summary()
    steps = {b["steps"]: b["artifact_vs_float64"] for b in summary["by_steps"]}
    assert list(steps) == ["1-10", "11-100", "101-1000", "1001+"]
    assert steps["1-10"]["max"] == pytest.approx(1e-3, rel=1e-3)
    assert steps["1-10"]["mean"] == pytest.approx(1e-3 * 5 / 15, rel=1e-3)  # 5 of 15 elements are off
    assert steps["11-100"]["max"] == 0.0
    assert steps["1001+"]["max"] == pytest.approx(5e-2, rel=1e-6)
    overall = summary["artifact_vs_float64"]
    assert overall["max"] == pytest.approx(5e-2, rel=1e-6)
    assert overall["p99"] == pytest.approx(0.0, abs=1e-9)  # 6 of 1006 elements are off: under 1%
    assert summary["pytorch_float32_vs_float64"]["max"] == 0.0


def test_criterion_round_trips_and_reads_old_manifests() -> None:
    assert Criterion.from_json(ORACLE.to_json()) == ORACLE
    assert Criterion.from_json("|ort - ref| <= atol + rtol*|ref|, all values finite").rule == "tolerance"
    with pytest.raises(ValueError, match="rule must be one of oracle, tolerance"):
        Criterion.from_json({"name": "vibes"})
    with pytest.raises(TypeError, match="factor must be a number"):
        Criterion.from_json({"name": "oracle", "factor": "lots"})
