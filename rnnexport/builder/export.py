"""Exporting a PyTorch model to ONNX with dynamic batch and sequence axes.

Two exporters:

- ``torchscript``: ``torch.onnx.export(..., dynamo=False, dynamic_axes=...)``. It emits ONNX
  ``LSTM``/``GRU`` nodes whose sequence axis follows the input.
- ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` (``torch.export``, then onnxscript). The same
  rewrites run as custom operators (:mod:`rnnexport.builder.dynamo_rnn`), so it writes the same recurrent
  nodes, packed sequences included, with the same dynamic axes.

``auto`` (the builds' default) tries them in the order :func:`exporter_order` gives, chosen by
measurement (``scripts/compare_exporters.py``), and uses the second only where the first fails to
export or its graph fails the contract and graph checks; never after a verification failure.

The example used for tracing has batch 2 and sequence 3: never size 1, which exporters are free to
specialise as a broadcastable constant. Both exports run inside
:func:`rnnexport.builder.patch.export_patches`, which turns every recurrent layer and
packed-sequence call of any module into ONNX recurrent nodes (for dynamo, through
:func:`rnnexport.builder.dynamo_rnn.dynamo_patches`).

A trace records one run of ``forward`` at the example shape. Python control flow that reads tensor
values (a loop over the time steps of an ``nn.LSTMCell``, an ``if`` on a tensor) is frozen into it at
that shape; torch reports each such place with a ``TracerWarning``, and rnnexport refuses the model
instead of shipping a graph that only works at sequence length 3.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from rnnexport.builder.dynamo_rnn import TRANSLATIONS, dynamo_patches
from rnnexport.builder.patch import ExportWatch, TracerWarning, export_patches, frozen_trace_values
from rnnexport.errors import ExportError, RnnExportError
from rnnexport.feeds import make_feeds
from rnnexport.spec import Contract
from rnnexport.text import first_line

__all__ = [
    "AUTO_ORDER",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "EXPORTER_OPTIONS",
    "TRACE_BATCH",
    "TRACE_SEQ",
    "Exporter",
    "ExporterOption",
    "export_onnx",
    "exporter_order",
    "model_opset",
]

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
# What a build's ``exporter`` takes: one exporter exactly, or ``auto``.
ExporterOption = Literal["auto", "torchscript", "dynamo"]
EXPORTER_OPTIONS: tuple[ExporterOption, ...] = ("auto", *EXPORTERS)
# The order ``auto`` tries them in, and why: scripts/compare_exporters.py on torch 2.13.0 and 2.15.0
# (README, "What the exporter sees"). Where both verify, they verify with the same worst error and
# the same latency; dynamo's graphs have fewer nodes. Its export takes seconds longer, and it
# cannot export every user model (it may also keep opset 18 where another was asked for): then the
# TorchScript exporter, deprecated from torch 2.14 on but still shipped, exports it instead.
AUTO_ORDER: tuple[Exporter, Exporter] = ("dynamo", "torchscript")
AUTO_REASON = (
    "measured on torch 2.13 and 2.15: the same verified accuracy and latency as torchscript, with "
    "fewer ONNX nodes; torchscript where dynamo fails"
)
DEFAULT_OPSET = 17
TRACE_BATCH = 2
TRACE_SEQ = 3


_FROZEN_HINT = (
    "A trace records one run of forward at the example shape (batch {batch}, seq {seq}); Python control "
    "flow on tensor values is frozen into it: a Python loop over the time steps (for example with "
    "nn.LSTMCell) or a data-dependent Python branch (if x.sum() > 0, int(t), t.item(), t.tolist()). "
    "Use nn.LSTM, nn.GRU or nn.RNN over the whole sequence instead of a step loop (they export with a "
    "dynamic sequence axis, packed sequences included), and torch.where instead of a Python branch."
)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[list[warnings.WarningMessage]]:
    """Keep torch.onnx's noise off the user's terminal.

    The TorchScript exporter warns that it is deprecated and that LSTMs exported with batch > 1 may
    misbehave at other batch sizes; the dynamo exporter logs (through handlers of its own) and prints
    its progress. rnnexport proves the batch behaviour itself (verification runs batch 1, 3 and 16),
    and failures surface as exceptions, so all of this is noise here.
    """
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            # Recorded (not shown): they tell when a trace froze a tensor value (see the module docstring).
            warnings.simplefilter("always", TracerWarning)
            yield caught
    finally:
        logging.disable(logging.NOTSET)


def _measured_cause(exc: BaseException) -> BaseException:
    """The innermost direct cause: torch.onnx wraps what happened in a generic 'Failed to export ...
    step 1/3' error, with the exception that was actually raised as its ``__cause__``."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _export_failure(exc: BaseException, exporter: Exporter, opset: int) -> str:
    """The one-paragraph message of a failed export: the torch version and what actually failed."""
    cause = _measured_cause(exc)
    summary = f"{type(cause).__name__}: {first_line(cause)}"
    if cause is not exc:
        summary += f" (reported as {type(exc).__name__}: {first_line(exc)})"
    advice = (
        "Check that the model runs in eager PyTorch on inputs of the declared shapes; the TorchScript "
        "exporter ('--exporter torchscript') traces differently and may succeed where this failed."
        if exporter == "dynamo"
        else "Try another '--opset' (17 is the tested default), and check that the model runs in "
        "eager PyTorch on inputs of the declared shapes."
    )
    return (
        f"torch.onnx could not export the model with the {exporter} exporter (torch "
        f"{torch.__version__.split('+')[0]}) at opset {opset}: {summary}. {advice}"
    )


def _dynamic_shapes(model: torch.nn.Module, contract: Contract) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes``, one entry per parameter of ``forward``: each input's dynamic
    axes under their names (the exporter names the graph's symbols after them); the inputs that a
    ``*args`` parameter takes are one entry, a tuple."""
    specs = [dict(t.dynamic_axes) or None for t in contract.inputs]
    parameters = list(inspect.signature(model.forward).parameters.values())
    for position, parameter in enumerate(parameters[: len(specs)]):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*specs[:position], tuple(specs[position:]))
    return tuple(specs)


def _name_data_dependent_axes(proto: onnx.ModelProto, contract: Contract) -> None:
    """Name the output axes that no input has (``max(lengths)`` steps) as the contract declares them.

    torch.export names a size it can only know at run time itself (``u0``); the TorchScript exporter
    takes the name from ``dynamic_axes``. Only a symbol that is no input's axis is renamed, so an
    axis that should follow an input (and did not) still fails the contract check.
    """
    from_inputs = {d for t in contract.inputs for d in t.shape if isinstance(d, str)}
    for spec, value in zip(contract.outputs, proto.graph.output, strict=False):
        dims = value.type.tensor_type.shape.dim
        for want, dim in zip(spec.shape, dims, strict=False):
            if isinstance(want, str) and want not in from_inputs and dim.dim_param not in ("", *from_inputs):
                dim.dim_param = want


def _export_dynamo(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], contract: Contract, *, opset: int, to: Path | None
) -> tuple[onnx.ModelProto, ExportWatch]:
    """``torch.onnx.export(..., dynamo=True)`` inside the export rewrites
    (:mod:`rnnexport.builder.dynamo_rnn`)."""
    with dynamo_patches(model) as watch:
        program = torch.onnx.export(
            model,
            args,
            None,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(model, contract),
            custom_translation_table=TRANSLATIONS,
            opset_version=opset,
            input_names=contract.input_names,
            output_names=contract.output_names,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    _name_data_dependent_axes(proto, contract)
    if to is not None:  # the same contract as TorchScript's: the weights in files beside `to`
        onnx.save_model(
            proto,
            str(to),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{to.name}.data",
        )
        proto = onnx.load(str(to), load_external_data=False)
    return proto, watch


def exporter_order(option: ExporterOption) -> tuple[tuple[Exporter, ...], str]:
    """The exporters a build tries, in order, and why: ``auto`` gives both (:data:`AUTO_ORDER`),
    an exporter named explicitly only itself (no fallback)."""
    if option == "auto":
        return AUTO_ORDER, f"--exporter auto: {AUTO_ORDER[0]} first, {AUTO_REASON}"
    return (option,), f"--exporter {option}, as asked (no fallback)"


def model_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default ONNX domain the model imports (None if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opset(model: onnx.ModelProto, exporter: Exporter, opset: int) -> None:
    """The exported model is at the opset asked for: the dynamo exporter writes opset 18 and converts
    it to another with onnx's version converter, and keeps 18 (with a warning) where that fails."""
    actual = model_opset(model)
    if actual != opset:
        raise ExportError(
            f"The {exporter} exporter (torch {torch.__version__.split('+')[0]}) wrote the model at opset "
            f"{actual}, not at the requested opset {opset} (its conversion to {opset} did not happen). A "
            f"runtime limited to opset {opset} could not load it. Ask for --opset {actual}, or use the "
            "other --exporter."
        )


def export_onnx(
    model: torch.nn.Module,
    contract: Contract,
    *,
    exporter: Exporter = "torchscript",
    opset: int = DEFAULT_OPSET,
    to: Path | None = None,
) -> onnx.ModelProto:
    """Export ``model`` (in eval mode) to an in-memory ONNX model with the contract's dynamic axes.

    ``to`` (a path in a folder the caller owns) exports to that file instead, for
    models too large for one protobuf message: torch.onnx refuses to write more than 2 GiB to a
    buffer, and to a path it writes the weights as ONNX external data files beside it. The model
    returned is then its structure only (the weights stay in those files): what the contract check
    and the node counts need, without holding the weights in memory once more.

    The result is *not* trusted yet: the caller runs :func:`rnnexport.graph.contract.check_contract` on it.
    Raises :class:`ExportError` when the exporter fails, when the trace froze a tensor value into
    Python control flow (the graph would only be right at the example shape), or when the model's
    opset is not ``opset``.
    """
    example = make_feeds(contract, batch=TRACE_BATCH, seq=TRACE_SEQ, rng=np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[name]) for name in contract.input_names)
    dynamic_axes = {t.name: t.dynamic_axes for t in contract.inputs + contract.outputs if t.dynamic_axes}
    inputs, outputs = contract.input_names, contract.output_names
    try:
        with _quiet_exporter() as caught, torch.inference_mode(False), torch.no_grad():
            if exporter == "torchscript":
                buffer = io.BytesIO()
                with export_patches(model) as watch:
                    torch.onnx.export(
                        model,
                        args,
                        # File objects work; the stub admits paths only. A path (a str: torch tests
                        # for str, not PathLike) is where external data can go.
                        buffer if to is None else str(to),  # type: ignore[arg-type]
                        dynamo=False,
                        dynamic_axes=dynamic_axes,
                        opset_version=opset,
                        do_constant_folding=True,
                        input_names=inputs,
                        output_names=outputs,
                    )
                proto = (
                    onnx.load_from_string(buffer.getvalue())
                    if to is None
                    else onnx.load(str(to), load_external_data=False)
                )
            else:
                proto, watch = _export_dynamo(model, args, contract, opset=opset, to=to)
    except RnnExportError:  # the export patches' own refusals already say what to do
        raise
    except Exception as exc:  # any exporter failure is reported the same way
        raise ExportError(_export_failure(exc, exporter, opset)) from exc
    stepped = watch.stepped_cells()
    if stepped:
        raise ExportError(
            "The model cannot keep a dynamic sequence axis: its forward steps a recurrent cell in a Python "
            f"loop ({', '.join(stepped)} while tracing an example of {TRACE_SEQ} steps), and a trace "
            f"unrolls that loop into exactly {TRACE_SEQ} steps, so the graph would only be right for "
            "sequences of that length. Use nn.LSTM / nn.GRU / nn.RNN over the whole sequence instead of "
            "stepping nn.LSTMCell / nn.GRUCell / nn.RNNCell (the same weights fit: weight_ih, weight_hh, "
            "bias_ih, bias_hh become weight_ih_l0 ...); they export with a dynamic sequence axis."
        )
    frozen = frozen_trace_values(caught)
    if frozen:
        raise ExportError(
            "The model cannot keep a dynamic sequence axis: while it was traced, torch reported "
            f"{len(frozen)} value(s) frozen into the graph: {'; '.join(frozen[:3])}. "
            + _FROZEN_HINT.format(batch=TRACE_BATCH, seq=TRACE_SEQ)
        )
    _check_opset(proto, exporter, opset)
    return proto
