"""OpenVINO: verify an artifact on OpenVINO's CPU plugin, and deploy it as OpenVINO IR.

**Precision.** OpenVINO's CPU plugin runs float32 models in bfloat16 by default on CPUs with
``avx512_bf16`` or AMX (errors of 5e-4 to 2.5e-3 on these models, no warning). Every compile here
sets ``INFERENCE_PRECISION_HINT`` to ``f32`` and reads it back from the compiled model; a plugin
that does not report f32 is ``unavailable``, never run at another precision.

**A known OpenVINO error the artifact cannot avoid.** OpenVINO (2026.4) ignores the run-time
``sequence_lens`` of an ONNX ``LSTM`` for its final states ``Y_h``/``Y_c``: a row whose length is
shorter than the batch's longest gets the state after the longest. A masked streaming model
carries exactly that state, so its check on OpenVINO fails. When a check fails on a graph that
reads such a state, a one-node model measures whether this OpenVINO has the error, and the result
names it as the cause.

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

import dataclasses
import functools
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.artifact.testdata import read_initial_states
from rnnexport.artifact.verify import plan_from_manifest, verify_artifact
from rnnexport.deploy import copy_verified_model, new_output_folder
from rnnexport.errors import UsageError, VerificationError
from rnnexport.feeds import Feeds
from rnnexport.runtime import ProviderUnavailableError
from rnnexport.runtime.compare import (
    CaseResult,
    ProviderResult,
    Status,
    compare_outputs,
)
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.runtime.worker import verify_with_deadline
from rnnexport.spec import BATCH, Contract
from rnnexport.streaming import Streaming

__all__ = [
    "COMPILE_CONFIG",
    "PROVIDER",
    "OpenVinoRunner",
    "compile_cpu",
    "make_stateful",
    "openvino_module",
    "sequence_lens_state_problem",
    "verify_openvino",
]

PROVIDER = "OpenVINO-CPU"
COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
_RECURRENT = ("LSTM", "GRU", "RNN")
_INSTALL = "pip install 'rnnexport[openvino]'"


def openvino_module() -> Any:
    """``import openvino``, or :class:`ProviderUnavailableError` saying how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise ProviderUnavailableError(
            f"OpenVINO is not installed here ({exc}); install it with {_INSTALL} (OpenVINO publishes "
            "wheels for x86-64 and ARM64 Linux, Windows and macOS)"
        ) from None
    return openvino


def compile_cpu(core: Any, model: Any) -> Any:
    """``model`` compiled for the CPU plugin at float32, checked on the compiled model."""
    compiled = core.compile_model(model, "CPU", COMPILE_CONFIG)
    got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if "f32" not in got and "float32" not in got:
        raise ProviderUnavailableError(
            f"OpenVINO's CPU plugin compiled the model at {got}, not f32, although f32 was asked for"
        )
    return compiled


def runtime_description() -> str:
    """``OpenVINO <version>, CPU <device name>, precision f32``, for reports and records."""
    ov = openvino_module()
    name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    return (
        f"OpenVINO {ov.get_version().split('-')[0]} on {name}, INFERENCE_PRECISION_HINT f32 "
        "(read back from the compiled model)"
    )


def runtime_note() -> str:
    """What ran the test data, for ``verify --runtime openvino`` reports."""
    try:
        return f"test data run on {runtime_description()}"
    except ProviderUnavailableError as exc:
        return f"OpenVINO is unavailable: {exc}"


def _graph_outputs(model: bytes | Path) -> list[str]:
    proto = (
        onnx.load(str(model), load_external_data=False)
        if isinstance(model, Path)
        else onnx.load_from_string(model)
    )
    return [o.name for o in proto.graph.output]


def output_names(compiled: Any, graph_outputs: Sequence[str]) -> list[str]:
    """Each compiled output's ONNX name. A tensor can carry several names in OpenVINO (a graph
    output computed by a ``Cast``, as in a float16 variant, also keeps the Cast's own name), so the
    one that is a graph output is taken, not whichever ``get_any_name`` returns."""
    names = []
    for output in compiled.outputs:
        known = [n for n in graph_outputs if n in output.get_names()]
        names.append(known[0] if known else output.get_any_name())
    return names


class OpenVinoRunner:
    """One compiled model on OpenVINO's CPU plugin: ``infer(feeds) -> outputs`` like ``OrtRunner``."""

    def __init__(self, model: bytes | Path) -> None:
        ov = openvino_module()
        core = ov.Core()
        # A model with external data is a path: OpenVINO finds model.onnx.data beside it.
        read = core.read_model(str(model)) if isinstance(model, Path) else core.read_model(model, b"")
        self.compiled = compile_cpu(core, read)
        self.request = self.compiled.create_infer_request()
        self.names = output_names(self.compiled, _graph_outputs(model))

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Outputs keyed by ONNX output name (copies: the request reuses its buffers)."""
        self.request.infer(dict(feeds))
        return {
            name: np.array(self.request.get_output_tensor(i).data, copy=True)
            for i, name in enumerate(self.names)
        }


# -- the sequence_lens state check ------------------------------------------------------------------


def _one_node(op: str, *, lengths: bool) -> onnx.ModelProto:
    """A seeded one-node ``op`` over ``[seq, batch, 2]`` returning Y and its final state(s).

    The axes are symbols, as in an artifact: OpenVINO computes the states right when they are fixed.
    """
    from onnx import TensorProto, helper, numpy_helper

    gates, hidden = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 3
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((1, gates * hidden, 2)).astype(np.float32), "w")
    r = numpy_helper.from_array(rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32), "r")
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    inputs = ["x", "w", "r", "", "lengths" if lengths else ""]
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden)
    declared = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 2])]
    if lengths:
        declared.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))
    graph = helper.make_graph(
        [node],
        "probe",
        declared,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [w, r],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@functools.cache
def sequence_lens_state_problem(op: str) -> str | None:
    """Whether this OpenVINO honours ``sequence_lens`` for an ONNX ``op``'s final states (measured).

    A row of length 1 in a batch padded to 3 steps must end in the same state as that row run alone
    for 1 step. Returns the cause, stated with the measured error, or None when it does.
    """
    x = np.random.default_rng(8).standard_normal((3, 2, 2)).astype(np.float32)
    padded = OpenVinoRunner(_one_node(op, lengths=True).SerializeToString())
    alone = OpenVinoRunner(_one_node(op, lengths=False).SerializeToString())
    got = padded.infer({"x": x, "lengths": np.array([1, 3], np.int32)})
    want = alone.infer({"x": x[:1, :1]})
    states = [n for n in ("y_h", "y_c") if n in want]
    error = max(float(np.abs(got[n][:, 0] - want[n][:, 0]).max()) for n in states)
    if error <= 1e-5:
        return None
    ov = openvino_module()
    return (
        f"OpenVINO {ov.get_version().split('-')[0]} ignores the run-time sequence_lens of an ONNX {op} "
        f"for its final state ({'/'.join(s.replace('y_', 'Y_') for s in states)}): on a one-node "
        f"check, a row of length 1 in a batch padded to 3 steps ends {error:.2g} away from the same "
        "row run alone. This model "
        "carries that state, so a row whose chunk is shorter than its batch's longest carries a wrong "
        "state on OpenVINO; ONNX Runtime computes it right. Serve this artifact with ONNX Runtime (or "
        "Triton's onnxruntime backend), or on OpenVINO only with chunks of one length per call"
    )


def _reads_masked_state(model: bytes | Path) -> list[str]:
    """The recurrent op types whose final state this graph reads while they take sequence_lens."""
    proto = (
        onnx.load(str(model), load_external_data=False)
        if isinstance(model, Path)
        else onnx.load_from_string(model)
    )
    read = {name for n in proto.graph.node for name in n.input} | {o.name for o in proto.graph.output}
    ops = {
        n.op_type
        for n in proto.graph.node
        if n.op_type in _RECURRENT
        and len(n.input) > 4
        and n.input[4]
        and any(name and name in read for name in n.output[1:])
    }
    return sorted(ops)


def _explained(result: ProviderResult, model: bytes | Path) -> ProviderResult:
    """A failed result with the measured cause as its reason, when one is found."""
    causes = [c for op in _reads_masked_state(model) if (c := sequence_lens_state_problem(op))]
    if not causes:
        return result
    return dataclasses.replace(result, reason="; ".join(causes))


def verify_openvino(
    model: bytes | Path,
    plan: VerificationPlan,
    *,
    device: str = "cpu",
    seconds: float,
    **options: Any,
) -> ProviderResult:
    """:func:`~rnnexport.runtime.worker.verify_with_deadline` on OpenVINO's CPU plugin at float32.

    The same plan (cases, chains, rule, tolerance) as ONNX Runtime's check. ``device`` must be cpu
    (it is in the signature of every verifier) and the plan's TF32 choice does not apply. A failure
    whose cause is the known ``sequence_lens`` state error carries that cause as its reason.
    """
    if device != "cpu":
        raise UsageError(f"OpenVINO is verified on its CPU plugin; got device '{device}'.")
    tol, criterion = plan.tolerance("cpu"), plan.criterion
    try:
        openvino_module()
    except ProviderUnavailableError as exc:
        return ProviderResult("cpu", PROVIDER, "unavailable", tol, reason=str(exc), criterion=criterion)
    if isinstance(model, bytes) and model[4:8] == b"ORTM":
        return ProviderResult(
            "cpu",
            PROVIDER,
            "unavailable",
            tol,
            reason="OpenVINO reads ONNX models, not ONNX Runtime's .ort format",
            criterion=criterion,
        )
    result = verify_with_deadline(
        model,
        plan,
        device="cpu",
        seconds=seconds,
        open_runner=OpenVinoRunner,
        provider=PROVIDER,
        **options,
    )
    return _explained(result, model) if result.status == "failed" and result.cases else result


# -- deploy: stateful IR ---------------------------------------------------------------------------


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
