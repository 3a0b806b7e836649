"""Build-time accuracy stages: the float64 references, and making, gating and writing the variants.

The pipeline calls these three functions in order; everything they decide is data the manifest
records. A variant that fails its gate is dropped here and never written; the others are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch

from rnnexport.builder.eager import Float64Runner
from rnnexport.feeds import Case, Feeds
from rnnexport.runtime import Device
from rnnexport.runtime.compare import ProviderResult
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import Contract
from rnnexport.variants import (
    Format,
    Precision,
    VariantResult,
    make_variants,
    provider_support,
    required_operators_config,
    variant_tolerances,
    verify_variant,
)

__all__ = ["build_variants", "float64_references", "one_torch_thread", "write_variant_files"]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run PyTorch on one intra-op thread inside the block, and restore the setting after it.

    Reference recurrences step through time with small products per step, so extra threads only add
    synchronisation; on a loaded 2-core machine the float32 and float64 references of a (3, 1000)
    case ran 25-60 times slower on two threads than on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def float64_references(
    contract: Contract, model: torch.nn.Module, cases: Sequence[Case], *, method: str = "forward"
) -> dict[str, Feeds]:
    """``{case name: float64 outputs}``: every case run through ``model.method`` in float64."""
    runner = Float64Runner(contract, model, method=method)
    return {case.name: runner.infer(case.inputs) for case in cases}


def build_variants(
    model: onnx.ModelProto,
    data: bytes,
    results: Mapping[Device, ProviderResult],
    plan: VerificationPlan,
    *,
    contract: Contract,
    precisions: Sequence[Precision],
    formats: Sequence[Format],
    devices: Sequence[Device],
    stage: Callable[[str], AbstractContextManager[Any]],
    on_case: Callable[[int], None] | None = None,
) -> list[tuple[VariantResult, bytes]]:
    """Make every requested variant of the verified float32 ``model`` and verify each one.

    ``model.onnx`` (``data``) comes first with the ``results`` it already verified with. Each other
    variant is verified on ``devices`` by the build's ``plan``, at its own tolerance
    (:func:`variant_tolerances`). Returns ``(result, bytes)`` in order; ``result.passed`` is the gate.
    """
    made = make_variants(model, data, precisions=precisions, formats=formats)
    first = made[0]
    outcome = [
        (
            VariantResult(
                first.file,
                first.precision,
                first.format,
                len(first.data),
                {d: plan.tolerance(d) for d in devices},
                dict(results),
                plan.criterion,
                support=provider_support(first.source, first.data) if len(made) > 1 else {},
            ),
            first.data,
        )
    ]
    for variant in made[1:]:
        with stage(f"variant {variant.file}") as progress:
            result = verify_variant(
                variant.file,
                variant.precision,
                variant.format,
                variant.data,
                plan.with_tolerances(variant_tolerances(variant.precision, plan.tolerances)),
                contract=contract,
                devices=devices,
                details=variant.details,
                support=provider_support(variant.source, variant.data, fmt=variant.format),
                on_case=on_case,
            )
            progress.ok = result.passed
            worst = max((r.max_ratio for r in result.results.values()), default=float("nan"))
            progress.details.append(
                f"{result.status}: {result.reason}"
                if result.reason
                else f"{result.status} ({len(variant.data)} bytes, worst err/allowed {worst:.3f}"
                + ("" if result.passed else "; not shipped")
                + ")"
            )
        outcome.append((result, variant.data))
    return outcome


def write_variant_files(folder: Path, variants: Sequence[tuple[VariantResult, bytes]]) -> None:
    """Write the variants that passed (``model.onnx`` is written by the pipeline itself) and, when
    any ORT-format file ships, ``required_operators.config`` for exactly those files."""
    ort_files = []
    for result, data in variants:
        if not result.passed or (folder / result.file).exists():
            continue
        (folder / result.file).write_bytes(data)
        if result.format == "ort":
            ort_files.append(result.file)
    required_operators_config(folder, ort_files)
