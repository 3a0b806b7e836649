"""OpenVINO: deploy a verified artifact as OpenVINO IR (``rnnexport deploy openvino``).

The artifact is first verified on OpenVINO's CPU plugin (:mod:`rnnexport.runtime.openvino`, which
also holds the precision rule and the measured ``sequence_lens`` state error), then converted, and
the written IR proven on the same test data.

**Stateful IR.** ``deploy openvino`` replaces each ``state_in.*`` input by a ``ReadValue`` of an
OpenVINO variable and each ``state_out.*`` output by an ``Assign`` to it (what ``MakeStateful``
does), with one difference: ``MakeStateful`` gives each variable no initial value, so after
``reset_state()`` a dynamic batch starts from an empty ``[0, H]`` state and the next call returns
an empty output. Here each ``ReadValue`` starts from the state's initial value (zeros or the
shipped tensor) broadcast to the batch of the call's data input, so a stream starts right at any
batch size.

Torch-free.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rnnexport.artifact.testdata import read_initial_states
from rnnexport.artifact.verify import plan_from_manifest, verify_artifact
from rnnexport.deploy import copy_verified_model, new_output_folder
from rnnexport.errors import VerificationError
from rnnexport.runtime.compare import (
    CaseResult,
    ProviderResult,
    Status,
    compare_outputs,
)

# The verifier lives in rnnexport.runtime.openvino; its names stay importable from here.
from rnnexport.runtime.openvino import (
    COMPILE_CONFIG,
    PROVIDER,
    OpenVinoRunner,
    compile_cpu,
    openvino_module,
    output_names,
    runtime_description,
    sequence_lens_state_problem,
    verify_openvino,
)
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import BATCH, Contract
from rnnexport.streaming import Streaming

__all__ = [
    "COMPILE_CONFIG",
    "PROVIDER",
    "OpenVinoRunner",
    "compile_cpu",
    "deploy_openvino",
    "make_stateful",
    "openvino_module",
    "prove_ir",
    "sequence_lens_state_problem",
    "step_cost",
    "verify_openvino",
]


def _batch_source(contract: Contract, state_inputs: set[str]) -> tuple[str, int]:
    """A data input with a batch axis, and that axis: the ``ReadValue`` initial values take it."""
    for spec in contract.inputs:
        if spec.name not in state_inputs and BATCH in spec.shape:
            return spec.name, spec.shape.index(BATCH)
    raise VerificationError(
        "The streaming model has no input with a batch axis besides its states, so a stateful IR cannot "
        "size a new stream's state. Serve it with explicit state inputs (ONNX Runtime)."
    )


def make_stateful(
    model: Any, contract: Contract, streaming: Streaming, initial: Mapping[str, np.ndarray]
) -> None:
    """Turn the state inputs/outputs of an OpenVINO model read from a streaming artifact into variables.

    ``initial``: state input -> ``[1, sizes...]`` for the states that do not start from zeros.
    Each ``ReadValue`` starts from that value broadcast to the batch of the call's data input.
    """
    ov = openvino_module()
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = {p.output(0).get_any_name(): p for p in model.get_parameters()}
    name, axis = _batch_source(contract, {s.input for s in streaming.states})
    batch = ops.gather(
        ops.shape_of(params[name]), ops.constant(np.array([axis], np.int64)), ops.constant(np.int64(0))
    )
    sinks = []
    for s in streaming.states:
        sizes = [int(d) for d in s.shape[1:]]
        start = initial.get(s.input, np.zeros([1, *sizes], np.float32)).astype(np.float32)
        target = ops.concat([batch, ops.constant(np.array(sizes, np.int64))], 0)
        info = VariableInfo()
        info.data_shape = ov.PartialShape([-1, *sizes])
        info.data_type = ov.Type.f32
        info.variable_id = s.input
        variable = Variable(info)
        read = ops.read_value(ops.broadcast(ops.constant(start), target), variable)
        parameter = params[s.input]
        for reader in parameter.output(0).get_target_inputs():
            reader.replace_source_output(read.output(0))
        result = next(r for r in model.get_results() if s.output in r.output(0).get_names())
        sinks.append(ops.assign(result.input_value(0).get_node(), variable))
        model.remove_result(result)
        model.remove_parameter(parameter)
    model.add_sinks(sinks)
    model.validate_nodes_and_infer_types()


def _run_cases(compiled: Any, plan: VerificationPlan, streaming: Streaming | None) -> list[CaseResult]:
    """Every case of the plan on the compiled IR. Streaming: a new stream (``reset_state``) unless the
    case continues a chain, and the states read back from the request's variables."""
    request = compiled.create_infer_request()
    later = {c for chain in streaming.chains for c in chain[1:]} if streaming else set()
    states = streaming.states if streaming else ()
    cases = plan.cases
    names = output_names(compiled, [o for o in cases[0].outputs] if cases else [])
    results = []
    for case in cases:
        try:
            if case.name not in later:
                request.reset_state()
            request.infer({k: v for k, v in case.inputs.items() if k not in {s.input for s in states}})
            actual = {n: np.array(request.get_output_tensor(i).data, copy=True) for i, n in enumerate(names)}
            carried = {v.name: np.array(v.state.data, copy=True) for v in request.query_state()}
            actual |= {s.output: carried[s.input] for s in states}
            outputs = compare_outputs(
                actual,
                case.outputs,
                plan.tolerance("cpu"),
                criterion=plan.criterion,
                float64=plan.float64.get(case.name),
                seq_axes=plan.seq_axes,
            )
            results.append(CaseResult(case.name, case.shapes, outputs))
        except Exception as exc:  # one case's failure must not hide the others
            results.append(CaseResult(case.name, case.shapes, [], error=f"{type(exc).__name__}: {exc}"))
    return results


def prove_ir(xml: Path, plan: VerificationPlan, streaming: Streaming | None) -> ProviderResult:
    """The written IR, read back and compiled at f32, on every test case and chain of the plan."""
    ov = openvino_module()
    core = ov.Core()
    compiled = compile_cpu(core, core.read_model(str(xml)))
    results = _run_cases(compiled, plan, streaming)
    status: Status = "passed" if results and all(r.passed for r in results) else "failed"
    return ProviderResult(
        "cpu", f"{PROVIDER} (IR)", status, plan.tolerance("cpu"), cases=results, criterion=plan.criterion
    )


def step_cost(
    xml: Path, contract: Contract, streaming: Streaming | None, *, fixed: bool, steps: int = 2000
) -> float:
    """Microseconds per call at batch 1, seq 1 (one streaming step), one thread, best of 3 rounds.

    ``fixed``: the model reshaped to those static shapes first (what a device with one stream can
    do); otherwise the IR as shipped, with dynamic shapes.
    """
    ov = openvino_module()
    core = ov.Core()
    model = core.read_model(str(xml))
    states = {s.input for s in streaming.states} if streaming else set()
    feeds: dict[str, np.ndarray] = {}
    for spec in contract.inputs:
        if spec.name in states:
            continue
        shape = [1 if isinstance(d, str) else d for d in spec.shape]
        feeds[spec.name] = (
            np.ones(shape, spec.dtype) if spec.role else np.zeros(shape, spec.dtype)
        )  # lengths 1 for a one-step chunk
    if fixed:
        model.reshape({name: list(value.shape) for name, value in feeds.items()})
    compiled = core.compile_model(model, "CPU", {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    request.infer(feeds)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            request.infer(feeds)
        best = min(best, (time.perf_counter() - started) / steps)
    return best * 1e6


def _readme(name: str, contract: Contract, streaming: Streaming | None, record: Mapping[str, Any]) -> str:
    """The deployed folder's README: what it is, how it was proven, and the loop."""
    data = [
        s for s in contract.inputs if streaming is None or s.name not in {t.input for t in streaming.states}
    ]
    feeds = ", ".join(f'"{s.name}": {s.name}' for s in data)
    lines = [
        f"# {name}: OpenVINO IR",
        "",
        f"`model.xml`/`model.bin`, converted from the rnnexport artifact `{name}` at float32 (weights not "
        "compressed) and proven on its test data"
        + (" and streaming chains" if streaming else "")
        + f" with {record['runtime']}: {record['proof']['status']}, largest error "
        f"{record['proof']['max_abs_error']:.3g}.",
        "",
        "Compile it with the f32 precision hint: OpenVINO's CPU plugin otherwise runs float32 models in "
        "bfloat16 on CPUs that have it (errors around 1e-3, no warning).",
        "",
        "```python",
        "import openvino as ov",
        "",
        "core = ov.Core()",
        'compiled = core.compile_model("model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})',
        "request = compiled.create_infer_request()",
    ]
    if streaming is None:
        lines += [f"outputs = request.infer({{{feeds}}})", "```"]
    else:
        lines += [
            "",
            "# One request per stream. reset_state() starts a new stream: every state starts from its",
            "# initial value (zeros, or the artifact's shipped initial state) at the batch of the call.",
            "request.reset_state()",
            "for chunk in chunks:  # each chunk is [batch, steps, input]; the states stay inside the request",
            f"    outputs = request.infer({{{feeds.replace(': x', ': chunk')}}})",
            "```",
            "",
            "States (OpenVINO variables, named after the artifact's state inputs): "
            + ", ".join(f"`{s.input}` {list(s.shape)}" for s in streaming.states)
            + ". `request.query_state()` reads them; the batch must not change within a stream.",
        ]
    cost = record.get("step_us")
    if cost:
        lines += [
            "",
            f"Measured here ({record['cpu']}, batch 1, one step per call, one thread): "
            f"{cost['dynamic']:.1f} us per call as shipped (dynamic shapes), {cost['fixed']:.1f} us with "
            'the model reshaped to a fixed shape first (`model = core.read_model("model.xml"); '
            "model.reshape({...})`).",
        ]
    return "\n".join(lines) + "\n"


def deploy_openvino(folder: Path, out: Path, *, time_limit: float | None = None) -> dict[str, Any]:
    """``rnnexport deploy openvino``: verify on OpenVINO, convert to IR, prove the IR, write ``out``.

    Raises :class:`VerificationError` (nothing written) when the artifact fails on OpenVINO, with
    the cause where it is known, or when the written IR does not reproduce the test data.
    Returns the record written as ``out/deploy.json``.
    """
    ov = openvino_module()
    report = verify_artifact(folder, device="cpu", time_limit=time_limit, runtime="openvino")
    result = report.results["cpu"]
    if not report.passed:
        why = result.reason or "; ".join(result.failures[:3]) or result.status
        raise VerificationError(
            f"{folder} does not verify on OpenVINO ({result.status}: {why}). Nothing was written to {out}."
        )
    manifest = report.manifest
    streaming = (
        None
        if manifest.streaming is None
        else Streaming.from_json(manifest.streaming, lambda condition, what: None)
    )
    # The test data the verification read (hash-checked) and ran, judged as it was judged.
    plan = plan_from_manifest(manifest, report.cases, report.float64)
    with tempfile.TemporaryDirectory(prefix="rnnexport-deploy-") as private:
        source = copy_verified_model(Path(folder), manifest, Path(private))
        core = ov.Core()
        model = core.read_model(str(source))
        if streaming is not None:
            make_stateful(model, manifest.contract, streaming, read_initial_states(Path(folder), manifest))
        with new_output_folder(out, what="rnnexport deploy openvino") as staging:
            xml = staging / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
            proof = prove_ir(xml, plan, streaming)
            if proof.status != "passed":
                raise VerificationError(
                    f"The OpenVINO IR converted from {folder} does not reproduce its test data: "
                    + "; ".join(proof.failures[:3])
                    + f". Nothing was written to {out}."
                )
            record = {
                "artifact": manifest.arch,
                "manifest_sha256": report.manifest_sha256,
                "runtime": runtime_description(),
                "cpu": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
                "precision": "f32",
                "stateful": streaming is not None,
                "proof": proof.to_json() | {"status": proof.status},
                "step_us": {
                    "dynamic": step_cost(xml, manifest.contract, streaming, fixed=False),
                    "fixed": step_cost(xml, manifest.contract, streaming, fixed=True),
                },
            }
            (staging / "deploy.json").write_text(json.dumps(record, indent=2) + "\n")
            (staging / "README.md").write_text(_readme(manifest.arch, manifest.contract, streaming, record))
    return record
