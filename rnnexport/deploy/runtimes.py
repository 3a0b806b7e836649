"""``build --runtimes``: the shipped model checked on runtimes besides ONNX Runtime, recorded.

ONNX Runtime always verifies a build, and decides whether it ships. Each other runtime named runs
the same cases and chains; its result goes to the manifest's ``verification.runtimes`` whatever it
is (a runtime that computes a model wrongly is a fact about that runtime, recorded with its cause,
not a reason to withhold an artifact ONNX Runtime proved). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rnnexport.errors import UsageError
from rnnexport.runtime.openvino import runtime_note, verify_openvino
from rnnexport.runtime.plan import VerificationPlan

__all__ = ["RUNTIMES", "check_runtimes", "other_runtimes"]

RUNTIMES = ("onnxruntime", "openvino")


def other_runtimes(runtimes: str | Sequence[str] | None) -> tuple[str, ...]:
    """The runtimes of ``--runtimes`` (comma-separated) besides onnxruntime, which always runs."""
    names = runtimes.split(",") if isinstance(runtimes, str) else list(runtimes or [])
    names = [n.strip() for n in names if n.strip()]
    unknown = sorted(set(names) - set(RUNTIMES))
    if unknown:
        raise UsageError(
            f"--runtimes takes {', '.join(RUNTIMES)} (comma-separated), got {unknown}. "
            "For example: --runtimes onnxruntime,openvino."
        )
    return tuple(n for n in RUNTIMES if n in names and n != "onnxruntime")


def check_runtimes(
    runtimes: Sequence[str],
    model: bytes | Path,
    plan: VerificationPlan,
    *,
    stage: Callable[[str], AbstractContextManager[Any]],
    seconds: float,
) -> dict[str, Any]:
    """Each runtime's record for the manifest (``verification.runtimes``), keyed by runtime: the
    build's plan run on it (OpenVINO's CPU plugin, at the plan's cpu tolerance)."""
    records: dict[str, Any] = {}
    for name in runtimes:
        with stage(f"check {name}") as step:
            result = verify_openvino(model, plan, seconds=seconds)
            step.ok = result.status == "passed"
            step.details.append(
                f"{result.status}: {result.reason}"
                if result.reason
                else f"{result.status}, max abs error {result.max_abs:.2e} over {len(plan.cases)} cases"
            )
            records[name] = {"ran_on": runtime_note(), "precision": "f32", **result.to_json()}
    return records
