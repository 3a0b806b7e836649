"""The :class:`~rnnexport.artifact.manifest.Manifest` of a build, assembled next to the type it fills.

The build's package stage hands over what each stage decided (the exporter's record, the
simplification, the weights' origin, the verification plan and its results, the test data and the
file hashes); :func:`manifest_for_build` lays them out as ``manifest.json`` records them.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rnnexport.artifact.manifest import Manifest
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import Contract

__all__ = ["manifest_for_build"]

# What the two references are, as the manifest's verification.references says.
_FLOAT32_REFERENCE = "eager PyTorch, float32 (test_data_set_N/output_K.pb)"
_FLOAT64_REFERENCE = (
    "the same module and weights in float64, copy.deepcopy(model).double(), float inputs widened, torch's "
    "default dtype float64 during the run (test_data_set_N/float64_output_K.pb)"
)


def _verification(
    plan: VerificationPlan,
    oracle: Mapping[str, Any],
    providers: Mapping[str, Any],
    runtimes: Mapping[str, Any],
) -> dict[str, Any]:
    """``verification``: the plan's rule, tolerances and TF32 choice, and what each provider said."""
    return {
        "rule": plan.criterion.to_json(),
        "references": {
            "float32": _FLOAT32_REFERENCE,
            "float64": _FLOAT64_REFERENCE if oracle["ran"] else f"not run: {oracle['reason']}",
        },
        "float64_oracle": dict(oracle),
        "tolerance": {d: t.to_json() for d, t in plan.tolerances.items()},
        "tf32": plan.tf32,
        "tf32_policy": "CUDA provider use_tf32=" + ("1 (looser tolerance)" if plan.tf32 else "0"),
        "providers": dict(providers),
        **({"runtimes": dict(runtimes)} if runtimes else {}),
    }


def manifest_for_build(
    name: str,
    config: dict[str, Any],
    contract: Contract,
    *,
    versions: dict[str, str],
    export: Mapping[str, Any],
    opset: int,
    trace_shape: tuple[int, int],
    external_data: Mapping[str, Any] | None,
    simplification: dict[str, int],
    weights: dict[str, Any],
    plan: VerificationPlan,
    oracle: Mapping[str, Any],
    providers: Mapping[str, Any],
    runtimes: Mapping[str, Any],
    test_data: list[dict[str, Any]],
    files: dict[str, str],
    variants: Sequence[dict[str, Any]],
    source: dict[str, Any] | None,
    streaming: dict[str, Any] | None,
) -> Manifest:
    """The manifest of the build of ``name`` (an architecture or a user model's artifact).

    ``export`` is the exporter's record (which one, and why), to which the opset, the trace shape
    (batch, seq) and, for a model over the inline limit, its ``external_data`` layout are added.
    ``oracle`` is the float64 oracle's record (``ran``, else ``reason``); ``providers`` and
    ``runtimes`` are each check's record.
    """
    batch, seq = trace_shape
    return Manifest(
        arch=name,
        config=config,
        contract=contract,
        versions=versions,
        export={
            **export,
            "opset": opset,
            "trace_shape": {"batch": batch, "seq": seq},
            **({"external_data": dict(external_data)} if external_data is not None else {}),
        },
        simplification=simplification,
        weights=weights,
        verification=_verification(plan, oracle, providers, runtimes),
        test_data=test_data,
        files=files,
        variants=list(variants),
        source=source,
        streaming=streaming,
    )
