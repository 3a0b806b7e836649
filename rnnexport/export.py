"""Exporting a PyTorch model to ONNX with dynamic batch and sequence axes.

Two exporters, chosen explicitly:

- ``torchscript`` (default): ``torch.onnx.export(..., dynamo=False, dynamic_axes=...)``. It emits
  ONNX ``LSTM``/``GRU`` nodes whose sequence axis follows the input.
- ``dynamo``: ``torch.onnx.export(..., dynamo=True)``. On torch 2.13 it specialises the sequence
  axis of ``nn.LSTM``/``nn.GRU`` to the example length: the declared output shape keeps that literal
  length, and a second RNN export in the same process fixes the input's sequence axis as well. It
  stays available, behind the same contract check, which catches exactly that.

The example used for tracing has batch 2 and sequence 3: never size 1, which exporters are free to
specialise as a broadcastable constant. While traced, the architecture modules hand the exporter
ONNX-Runtime-friendly formulations of themselves (see ``rnnexport.archs._common.tracing``); the
dynamo exporter does not trace and sees the eager formulations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
import onnx
import torch

from rnnexport.errors import ExportError
from rnnexport.feeds import make_feeds
from rnnexport.spec import Contract

__all__ = [
    "DEFAULT_OPSET",
    "DYNAMO_RNN_NOTE",
    "EXPORTERS",
    "TRACE_BATCH",
    "TRACE_SEQ",
    "Exporter",
    "export_onnx",
]

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
DEFAULT_OPSET = 17
TRACE_BATCH = 2
TRACE_SEQ = 3
# What every failure of the dynamo path says: the known cause, and the one option that helps.
DYNAMO_RNN_NOTE = (
    "The dynamo exporter is known not to keep RNN sequence axes dynamic on torch "
    f"{torch.__version__.split('+')[0]} "
    "(it specialises nn.LSTM / nn.GRU to the example length, so the graph fails or misbehaves at other "
    "lengths); use the default '--exporter torchscript'."
)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep torch.onnx's noise off the user's terminal.

    The TorchScript exporter warns that it is deprecated and that LSTMs exported with batch > 1 may
    misbehave at other batch sizes; the dynamo exporter logs (through handlers of its own) and prints
    its progress. rnnexport proves the batch behaviour itself (verification runs batch 1, 3 and 16),
    and failures surface as exceptions, so all of this is noise here.
    """
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(
    model: torch.nn.Module,
    contract: Contract,
    *,
    exporter: Exporter = "torchscript",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export ``model`` (in eval mode) to an in-memory ONNX model with the contract's dynamic axes.

    The result is *not* trusted yet: the caller runs :func:`rnnexport.contract.check_contract` on it.
    """
    example = make_feeds(contract, batch=TRACE_BATCH, seq=TRACE_SEQ, rng=np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[name]) for name in contract.input_names)
    dynamic_axes = {t.name: t.dynamic_axes for t in contract.inputs + contract.outputs if t.dynamic_axes}
    inputs, outputs = contract.input_names, contract.output_names
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            if exporter == "torchscript":
                buffer = io.BytesIO()
                torch.onnx.export(
                    model,
                    args,
                    buffer,  # type: ignore[arg-type]  # file objects work; the stub admits paths only
                    dynamo=False,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    do_constant_folding=True,
                    input_names=inputs,
                    output_names=outputs,
                )
                proto = onnx.load_from_string(buffer.getvalue())
            else:
                program = torch.onnx.export(
                    model,
                    args,
                    None,
                    dynamo=True,
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    input_names=inputs,
                    output_names=outputs,
                )
                if program is None:  # pragma: no cover - dynamo=True always returns a program
                    raise RuntimeError("torch.onnx.export returned no program")
                proto = program.model_proto
    except Exception as exc:  # any exporter failure is reported the same way
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        advice = (
            DYNAMO_RNN_NOTE
            if exporter == "dynamo"
            else "Try another '--opset' (17 is the tested default), and check that the model runs in "
            "eager PyTorch on inputs of the declared shapes."
        )
        raise ExportError(
            f"torch.onnx could not export the model with the {exporter} exporter at opset {opset}: "
            f"{type(exc).__name__}: {summary}. {advice}"
        ) from exc
    return proto
