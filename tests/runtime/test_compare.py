"""compare_outputs returns data: the checks, in order count, shape, dtype, values."""

from __future__ import annotations

import numpy as np

from rnnexport.runtime.compare import Tolerance, compare_outputs

TOL = Tolerance(atol=1e-5, rtol=1e-4)


def test_within_tolerance_passes_and_reports_errors() -> None:
    ref = np.array([[1.0, -2.0], [0.0, 100.0]], np.float32)
    got = ref + np.array([[5e-6, 0], [0, 9e-3]], np.float32)  # 9e-3 <= 1e-5 + 1e-4*100
    [result] = compare_outputs({"y": got}, {"y": ref}, TOL)
    assert result.passed
    assert np.isclose(result.max_abs, 9e-3, rtol=1e-3)
    assert np.isclose(result.max_rel, 9e-5, rtol=1e-2)


def test_value_mismatch_names_worst_element() -> None:
    ref = np.zeros((2, 3, 4), np.float32)
    got = ref.copy()
    got[1, 2, 3] = 1e-3
    got[0, 0, 0] = 2e-5
    [result] = compare_outputs({"y": got}, {"y": ref}, TOL)
    assert not result.passed
    assert result.worst_index == [1, 2, 3]
    assert result.mismatched == 2
    assert "worst at [1, 2, 3]" in (result.problem or "")


def test_nan_and_inf_fail_even_where_reference_agrees() -> None:
    ref = np.array([np.nan, 1.0], np.float32)
    for bad in (np.nan, np.inf):
        got = np.array([bad, 1.0], np.float32)
        [result] = compare_outputs({"y": got}, {"y": ref}, TOL)
        assert not result.passed
        assert result.nonfinite == 1


def test_shape_then_dtype_then_count() -> None:
    ref = np.zeros((2, 3), np.float32)
    [shape] = compare_outputs({"y": np.zeros((3, 2), np.float32)}, {"y": ref}, TOL)
    assert shape.problem == "shape [3, 2], expected [2, 3]"
    [dtype] = compare_outputs({"y": np.zeros((2, 3), np.float64)}, {"y": ref}, TOL)
    assert dtype.problem == "dtype float64, expected float32"
    results = compare_outputs({"z": ref}, {"y": ref}, TOL)
    assert [(r.name, r.problem) for r in results] == [("y", "output missing"), ("z", "unexpected output")]
