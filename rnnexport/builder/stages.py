"""The build's stages after the export: model (and references), verify, other runtimes, variants,
package. Each is one function that reports its progress and returns what the next one needs."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from rnnexport._version import __version__
from rnnexport.artifact import (
    Manifest,
    check_publishable,
    hash_files,
    publish,
    write_initial_states,
    write_test_data,
)
from rnnexport.artifact.record import manifest_for_build
from rnnexport.builder.accuracy import build_variants, one_torch_thread, write_variant_files
from rnnexport.builder.cases import shipped_cases
from rnnexport.builder.export import TRACE_BATCH, TRACE_SEQ
from rnnexport.builder.exporting import Exported, frozen_shape_hint
from rnnexport.builder.options import SWEEP_SEED
from rnnexport.builder.plan import plan_for_build
from rnnexport.builder.references import float64_oracle, user_code
from rnnexport.builder.request import Request, Subject
from rnnexport.builder.stateful import (
    StreamingModel,
    chain_cases,
    check_streamable,
    make_streaming,
    require_streamable,
    single_call_cases,
)
from rnnexport.builder.timing import StageReport, timed_stage
from rnnexport.deploy.runtimes import check_runtimes
from rnnexport.errors import VerificationError
from rnnexport.feeds import Case
from rnnexport.progress import Progress
from rnnexport.runtime import DEVICES, Device, probe_provider
from rnnexport.runtime.compare import Criterion, ProviderResult, verify_on_device
from rnnexport.runtime.oracle import write_float64_outputs
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.safeio import writing
from rnnexport.spec import Contract
from rnnexport.streaming import INITIAL_FOLDER, Streaming
from rnnexport.variants import VariantResult

__all__ = [
    "Prepared",
    "check_other_runtimes",
    "make_variants",
    "package",
    "prepare_model",
    "verify_providers",
]


@dataclass(frozen=True)
class Prepared:
    """The model stage's result: the model to export, its contract, and the plan that verifies it.

    For a streaming build ``model`` and ``contract`` are the stateful wrapper's, ``stateful_model``
    holds the wrapper, and the plan carries the chained calls and the state each output feeds.
    """

    model: torch.nn.Module
    contract: Contract
    plan: VerificationPlan
    weights_origin: dict[str, Any]
    oracle: dict[str, Any]  # the float64 oracle's record: ran, else why not
    stateful_model: StreamingModel | None = None

    @property
    def stream_contract(self) -> Streaming | None:
        """How the shipped model streams (its states and their pairs); None for a stateless build."""
        return self.stateful_model.streaming if self.stateful_model is not None else None


def prepare_model(request: Request, progress: Progress) -> Prepared:
    """The model stage: the PyTorch model, every case with its references, and the plan."""
    subject = request.subject
    with timed_stage(progress, "model") as stage, one_torch_thread():
        model, cases, weights_origin = subject.load(request)
        _record_output_form(subject, stage)
        contract, reference = subject.contract, subject.reference
        stateful_model: StreamingModel | None = None
        chains: list[list[str]] = []
        if request.options.streaming:
            stateful_model, cases, chains = _streaming_cases(subject, model, cases)
            contract, model, reference = stateful_model.contract, stateful_model.module, "forward"
            stage.details += _streaming_details(stateful_model)
        float64, oracle = float64_oracle(subject, contract, model, cases, reference)
        criterion = request.options.criterion
        if not oracle["ran"]:
            stage.details.append(f"float64 oracle not run: {oracle['reason']}")
            if criterion.rule == "oracle":
                criterion = Criterion("tolerance")
        stage.details += [
            *request.notes,
            f"{sum(p.numel() for p in model.parameters())} parameters, {len(cases)} reference cases",
        ]
    plan = plan_for_build(
        cases,
        contract,
        criterion=criterion,
        tolerances=request.tolerances,
        float64=float64,
        tf32=request.options.tf32,
        chains=chains,
        state_pairs=stateful_model.streaming.pairs if stateful_model is not None else None,
    )
    return Prepared(model, contract, plan, weights_origin, oracle, stateful_model)


def _record_output_form(subject: Subject, stage: StageReport) -> None:
    """A user model's outputs as its forward returned them (the first call found out), recorded."""
    if subject.outputs is not None and subject.source is not None:
        form = subject.outputs
        if form.by_name or form.dropped or form.skipped_none:  # a plain tensor or tuple goes unsaid
            stage.details.append(form.describe())
        subject.source["outputs"] = form.to_json()


def _streaming_cases(
    subject: Subject, model: torch.nn.Module, cases: list[Case]
) -> tuple[StreamingModel, list[Case], list[list[str]]]:
    """The stateful wrapper, the cases as its calls, and the chained calls' names.

    Every case becomes one call of a new stream (zero state), plus chained calls; the references
    are the streaming wrapper in eager PyTorch, state carried by PyTorch.
    """
    contract = subject.contract
    with user_code(subject, "in the streaming wrapper (chunk by chunk, state carried)"):
        stateful_model = make_streaming(
            model, contract, method=subject.stream_method, extra=subject.stream_extra
        )
        chained, chains = chain_cases(stateful_model, contract, seed=SWEEP_SEED)
        problems = check_streamable(contract, model, chained, chains)
        require_streamable(problems, f"'{subject.name}'")
        return stateful_model, single_call_cases(stateful_model, cases) + chained, chains


def _streaming_details(stateful_model: StreamingModel) -> list[str]:
    details = [f"streaming: {len(stateful_model.streaming.states)} state tensors"]
    learned = sorted(stateful_model.streaming.shipped)
    if learned:  # a new stream starts from what the model passes as hx, not from zeros
        details.append(
            f"{len(learned)} start from the model's own learned initial state "
            f"(shipped in {INITIAL_FOLDER}/: {', '.join(learned)})"
        )
    return details


def verify_providers(
    request: Request, plan: VerificationPlan, exported: Exported, progress: Progress
) -> dict[Device, ProviderResult]:
    """Verify the bytes that will ship, on every requested provider; all must pass."""
    results: dict[Device, ProviderResult] = {}
    for d in request.devices:
        with timed_stage(progress, f"verify {d}", total=len(plan.cases)) as stage:
            result = results[d] = verify_on_device(exported.source, plan, device=d, on_case=progress.advanced)
            stage.ok = result.status == "passed"
            stage.details.append(
                f"{result.status}: {result.reason}"
                if result.reason
                else f"{result.status}, max abs error {result.max_abs:.2e} over {len(plan.cases)} cases "
                f"({plan.criterion.rule} rule, worst err/allowed {result.max_ratio:.3f})"
            )
    if not results or any(r.status != "passed" for r in results.values()):
        exporter = exported.exporter
        unavailable = any(r.status == "unavailable" for r in results.values())
        raise VerificationError(
            f"Verification of '{request.subject.name}' did not pass, so nothing was shipped: "
            f"{_summary(results)}. "
            + (
                "Use --device cpu, or install onnxruntime-gpu with CUDA and cuDNN 9 on a GPU machine."
                if unavailable
                else f"The graph the {exporter} exporter wrote computes something else than the PyTorch "
                "model at these shapes. A wrong graph is reported, not replaced by the other exporter's: "
                f"'--exporter {'dynamo' if exporter == 'torchscript' else 'torchscript'}' builds with "
                "that one, if you choose to." + frozen_shape_hint(results)
            )
        )
    return results


def check_other_runtimes(
    request: Request, plan: VerificationPlan, exported: Exported, progress: Progress
) -> dict[str, Any]:
    """The other runtimes' checks of the shipped model (``--runtimes``): their manifest records."""
    return check_runtimes(
        request.runtimes,
        exported.source,
        plan,
        stage=lambda name: timed_stage(progress, name, total=len(plan.cases)),
        seconds=request.options.limits.run_seconds(len(exported.data)),
    )


def make_variants(
    request: Request,
    prepared: Prepared,
    exported: Exported,
    results: Mapping[Device, ProviderResult],
    *,
    staging: Path,
    progress: Progress,
) -> list[tuple[VariantResult, bytes]]:
    """Make and verify the requested variants; stage those that passed."""
    plan = prepared.plan
    variants = build_variants(
        exported.model,
        exported.data,
        results,
        plan,
        contract=prepared.contract,
        precisions=request.options.precision_list,
        formats=request.options.format_list,
        devices=request.devices,
        stage=lambda name: timed_stage(progress, name, total=len(plan.cases)),
        on_case=progress.advanced,
    )
    write_variant_files(staging, variants)
    return variants


def package(
    request: Request,
    prepared: Prepared,
    exported: Exported,
    checks: tuple[Mapping[Device, ProviderResult], Mapping[str, Any], Sequence[tuple[VariantResult, bytes]]],
    *,
    staging: Path,
    progress: Progress,
) -> Manifest:
    """Write the test data and the manifest, check the staged artifact, and publish it.

    ``checks`` are what the providers, the other runtimes and the variants said.
    """
    results, runtimes, variants = checks
    subject, plan, contract = request.subject, prepared.plan, prepared.contract
    with timed_stage(progress, "package") as stage, writing(request.destination.parent):
        shipped = shipped_cases(plan.cases, plan.chains)
        test_data = write_test_data(staging, shipped, contract)
        stream_contract = prepared.stream_contract
        if stream_contract is not None:  # the chains, by the test data folders that hold them
            folder_of = {e["case"]: e["dir"] for e in test_data}
            stream_contract = dataclasses.replace(
                stream_contract, chains=tuple(tuple(folder_of[n] for n in chain) for chain in plan.chains)
            )
        if prepared.oracle["ran"]:
            write_float64_outputs(staging, [plan.float64[c.name] for c in shipped], contract)
        if prepared.stateful_model is not None:  # learned initial states, hashed with the rest below
            write_initial_states(staging, prepared.stateful_model.files)
        manifest = manifest_for_build(
            subject.name,
            subject.config,
            contract,
            versions=_versions(),
            export=exported.record,
            opset=request.options.opset,
            trace_shape=(TRACE_BATCH, TRACE_SEQ),
            external_data=exported.layout,
            simplification=exported.stats.to_json(),
            weights=prepared.weights_origin,
            plan=plan,
            oracle=prepared.oracle,
            providers=_provider_entries(request, results),
            runtimes=runtimes,
            test_data=test_data,
            files=hash_files(staging),
            variants=[result.to_json() for result, _ in variants],
            source=subject.source,
            streaming=None if stream_contract is None else stream_contract.to_json(),
        )
        manifest.write(staging)
        # What verify would refuse is never published (a bug if it happens: the checks above
        # should have refused the build first).
        check_publishable(staging, limits=request.options.limits)
        publish(staging, request.destination, force=request.options.force)
        stage.details.append(str(request.destination))
    return manifest


def _versions() -> dict[str, str]:
    import onnxruntime
    import onnxscript
    import onnxsim

    return {
        "rnnexport": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,  # the dynamo exporter's translator
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _summary(results: Mapping[Device, ProviderResult]) -> str:
    lines = []
    for r in results.values():
        line = f"{r.provider}: {r.status}"
        if r.reason:
            line += f" ({r.reason})"
        if r.status == "failed":
            line += "; " + "; ".join(r.failures[:3])
        lines.append(line)
    return " | ".join(lines)


def _provider_entries(request: Request, results: Mapping[Device, ProviderResult]) -> dict[str, Any]:
    """The manifest's ``verification.providers``: results for what was requested, the rest probed."""
    providers = {r.provider: r.to_json() for r in results.values()}
    for d in DEVICES:
        if d not in results:
            probe = probe_provider(d)
            if probe.available:
                providers[probe.provider] = {
                    "status": "skipped",
                    "device": d,
                    "reason": f"not requested (--device {request.options.device})",
                }
            else:
                providers[probe.provider] = {"status": "unavailable", "device": d, "reason": probe.reason}
    return providers
