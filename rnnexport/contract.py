"""Reading an ONNX graph's I/O and checking it against a declared :class:`~rnnexport.spec.Contract`.

This is the guard against exporters that freeze dynamic axes: every dimension the contract declares
dynamic must be a named symbol (``dim_param``) on the graph, with the declared name, and every fixed
dimension must have the declared size. Torch-free, so ``rnnexport verify`` uses it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from rnnexport.errors import ContractError
from rnnexport.spec import Contract, Dim, TensorSpec
from rnnexport.text import capped

__all__ = ["check_contract", "read_contract"]


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
    if problems:
        note = f" (traced with {trace_sizes})" if trace_sizes else ""
        raise ContractError(
            f"The ONNX graph {stage} breaks its I/O contract{note}: " + capped(problems) + ". "
            "A fixed size where a dynamic axis was declared means the exporter froze that axis and "
            "the model would fail or silently misbehave at other shapes."
        )
