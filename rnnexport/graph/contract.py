"""Reading an ONNX graph's I/O and checking it against a declared :class:`~rnnexport.spec.Contract`.

This is the guard against exporters that freeze dynamic axes: every dimension the contract declares
dynamic must be a named symbol (``dim_param``) on the graph, with the declared name, and every fixed
dimension must have the declared size. Torch-free, so ``rnnexport verify`` uses it too.

:func:`graph_problems` checks the inside of the graph for known exporter bugs, by what the graph
holds and never by version numbers: a ``GRU`` node without ``linear_before_reset=1`` (PyTorch's GRU
semantics; onnxscript 0.5.7 to 0.7.0 wrote 0, which is silently wrong), a constant shape of a
``Reshape`` / ``Expand`` that fixes an axis its input has as a symbol (the example's size baked in),
and a constant initial state of a recurrent node whose batch axis is a symbol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.errors import ContractError
from rnnexport.graph.onnx_slots import RECURRENT_OPS, STATE_INPUTS, X
from rnnexport.spec import Contract, Dim, TensorSpec
from rnnexport.text import capped

__all__ = ["check_contract", "graph_problems", "read_contract"]


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    shape: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            # An unnamed unknown dim reads as "?": it is dynamic but nobody can tell which axis it is.
            shape.append(dim.dim_param or "?")
    return TensorSpec(value.name, dtype, tuple(shape))


def read_contract(model: onnx.ModelProto) -> Contract:
    """The graph's actual inputs (initializers excluded) and outputs, as a :class:`Contract`."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers)
    return Contract(inputs, tuple(_tensor_spec(v) for v in model.graph.output))


def _problems(kind: str, declared: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]) -> list[str]:
    problems = []
    if [t.name for t in actual] != [t.name for t in declared]:
        problems.append(f"{kind} names are {[t.name for t in actual]}, expected {[t.name for t in declared]}")
        return problems
    for want, got in zip(declared, actual, strict=True):
        if got.dtype != want.dtype:
            problems.append(f"{kind} '{got.name}' has dtype {got.dtype}, expected {want.dtype}")
        if len(got.shape) != len(want.shape):
            problems.append(f"{kind} '{got.name}' has shape {list(got.shape)}, expected {list(want.shape)}")
            continue
        for axis, (w, g) in enumerate(zip(want.shape, got.shape, strict=True)):
            if isinstance(w, str) and g != w:
                found = f"the fixed size {g}" if isinstance(g, int) else f"the symbol {g!r}"
                problems.append(
                    f"{kind} '{got.name}' axis {axis} should be the dynamic axis '{w}' but is {found}"
                )
            elif isinstance(w, int) and g != w:
                problems.append(f"{kind} '{got.name}' axis {axis} should be {w} but is {g!r}")
    return problems


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of the graph's small constants (initializers and ``Constant`` nodes) by name;
    tensors stored as external data are left out (their values are not needed for shapes)."""
    found: dict[str, np.ndarray] = {}
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            tensors += [
                (node.output[0], a.t) for a in node.attribute if a.name == "value" and a.HasField("t")
            ]
    for name, tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            found[name] = numpy_helper.to_array(tensor)
    return found


def _dims(shapes: dict[str, onnx.TypeProto], name: str) -> list[int | str] | None:
    if name not in shapes or not shapes[name].tensor_type.HasField("shape"):
        return None
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
            for d in shapes[name].tensor_type.shape.dim]  # fmt: skip


def _inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every value's type as ONNX shape inference sees it (inputs, outputs and intermediates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    except Exception:  # inference is an aid here, never a verdict: the I/O check still runs
        inferred = model
    graph = inferred.graph
    return {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}


def _baked_shape(label: str, op_type: str, dims: list[int | str], target: list[int]) -> list[str]:
    """How a constant ``Reshape`` / ``Expand`` shape fixes axes that its input has as symbols.

    A ``Reshape`` to positive sizes only has a fixed element count, so it fits one input size; with
    equal ranks, a positive size where the input has a symbol fixes that axis. An ``Expand``
    (right-aligned, as broadcasting) keeps an input's symbolic axis only with size 1 there.
    """
    symbols = [d for d in dims if isinstance(d, str)]
    if not symbols:
        return []
    if op_type == "Reshape" and all(size > 0 for size in target):
        return [
            f"{label} reshapes to the constant shape {target}, with no copied (0) or inferred (-1) "
            f"axis, although its input has the dynamic axes {symbols} (a size of the export example "
            "baked in)"
        ]
    if op_type == "Reshape" and len(target) != len(dims):
        return []
    keep = 0 if op_type == "Reshape" else 1
    aligned = list(zip(dims, target[len(target) - len(dims) :], strict=True))
    return [
        f"{label} fixes axis {axis}, the dynamic axis '{dim}' of its input, to the constant {size} "
        "(a size of the export example baked in)"
        for axis, (dim, size) in enumerate(aligned)
        if isinstance(dim, str) and size not in (keep, -1)
    ]


def graph_problems(model: onnx.ModelProto) -> list[str]:
    """Known exporter bugs found in ``model``'s nodes (see the module docstring); empty if none."""
    problems: list[str] = []
    constants = _constants(model)
    shapes: dict[str, onnx.TypeProto] | None = None
    for node in model.graph.node:
        label = f"{node.op_type} node '{node.name or node.output[0]}'"
        if node.op_type == "GRU":
            reset = next((a.i for a in node.attribute if a.name == "linear_before_reset"), 0)
            if reset != 1:
                problems.append(
                    f"{label} has linear_before_reset={reset}; PyTorch's nn.GRU needs 1 (the reset gate "
                    "scales the recurrent product), so it computes something else"
                )
        if node.op_type in ("Reshape", "Expand") and len(node.input) > 1 and node.input[1] in constants:
            shapes = _inferred_types(model) if shapes is None else shapes
            dims = _dims(shapes, node.input[0])
            if dims is not None:
                problems += _baked_shape(
                    label, node.op_type, dims, constants[node.input[1]].reshape(-1).tolist()
                )
        if node.op_type in RECURRENT_OPS:
            shapes = _inferred_types(model) if shapes is None else shapes
            x = _dims(shapes, node.input[X]) if node.input else None
            batch_is_symbol = x is not None and len(x) == 3 and isinstance(x[1], str)
            for index in STATE_INPUTS:
                if batch_is_symbol and index < len(node.input) and node.input[index] in constants:
                    problems.append(
                        f"{label} starts from a constant initial state '{node.input[index]}' of shape "
                        f"{list(constants[node.input[index]].shape)} although its batch axis is dynamic"
                    )
    return problems


def check_contract(
    model: onnx.ModelProto,
    contract: Contract,
    *,
    stage: str,
    trace_sizes: str = "",
    path: Path | None = None,
) -> None:
    """Raise :class:`ContractError` listing every way ``model`` departs from ``contract``.

    Runs ``onnx.checker`` first. ``stage`` ("after export", "after simplification", ...) and
    ``trace_sizes`` (a note on the example shapes used for tracing) go into the message. ``path``,
    where ``model`` was saved with its weights in ONNX external data, is what the checker reads:
    checking the in-memory model would serialize it, and past 2 GiB protobuf cannot.
    """
    try:
        onnx.checker.check_model(model if path is None else str(path))
    except onnx.checker.ValidationError as exc:
        raise ContractError(
            f"The ONNX model {stage} is invalid: onnx.checker says {str(exc).strip().splitlines()[0]}. "
            "This is an exporter problem; try the other --exporter or another --opset."
        ) from exc
    actual = read_contract(model)
    problems = _problems("input", contract.inputs, actual.inputs) + _problems(
        "output", contract.outputs, actual.outputs
    )
    inside = graph_problems(model)
    if inside:
        raise ContractError(
            f"The ONNX graph {stage} holds a known exporter error: " + "; ".join(inside) + ". It would "
            "give wrong answers (or fail) at other shapes or on every input; try the other --exporter, or "
            "update onnxscript and torch."
        )
    if problems:
        note = f" (traced with {trace_sizes})" if trace_sizes else ""
        raise ContractError(
            f"The ONNX graph {stage} breaks its I/O contract{note}: " + capped(problems) + ". "
            "A fixed size where a dynamic axis was declared means the exporter froze that axis and "
            "the model would fail or silently misbehave at other shapes."
        )
