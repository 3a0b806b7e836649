"""OpenVINO as a verifying runtime: the test data run on OpenVINO's CPU plugin at float32.

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

``verify --runtime openvino`` and ``build --runtimes`` run it; ``deploy openvino``
(:mod:`rnnexport.deploy.openvino`) builds on it. Torch-free; OpenVINO is imported when it runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.errors import UsageError
from rnnexport.feeds import Feeds
from rnnexport.runtime import ProviderUnavailableError
from rnnexport.runtime.compare import ProviderResult
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.runtime.worker import verify_with_deadline

__all__ = [
    "COMPILE_CONFIG",
    "PROVIDER",
    "OpenVinoRunner",
    "compile_cpu",
    "openvino_module",
    "output_names",
    "runtime_description",
    "runtime_note",
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
