"""The dynamo exporter's side of the export rewrites: ONNX recurrent nodes as ``torch.library`` ops.

``torch.onnx.export(..., dynamo=True)`` runs ``torch.export``, which records the torch operations a
forward runs, and then translates each into ONNX. Its own translation of ``nn.LSTM``/``nn.GRU`` is
the part that varies between versions (onnxscript 0.5.7 to 0.7.0 wrote GRUs with
``linear_before_reset=0``), and ``torch.export`` cannot trace ``pack_padded_sequence`` at all. So,
inside :func:`dynamo_patches`, the stand-ins of :mod:`rnnexport.builder.patch` (the same ones the TorchScript
exporter traces: packing rewritten to "padded tensor and lengths", one node per layer, gates in
ONNX's order, ``sequence_lens`` for packed runs, the trimming of steps) compute with four custom
operators, each one ONNX node:

- ``rnnexport::lstm`` / ``rnnexport::gru`` / ``rnnexport::rnn``: ONNX ``LSTM`` / ``GRU``
  (``linear_before_reset=1``) / ``RNN`` with ONNX's inputs, layouts and semantics;
- ``rnnexport::trim_steps``: ``data[:max(lengths)]`` on the time axis, a data-dependent size.

Each has an eager implementation (ONNX's semantics written in torch: what the exported program
computes if run in PyTorch), a fake one (shapes only, what ``torch.export`` traces with) and an
onnxscript translation, passed to the exporter as ``custom_translation_table``. The weights in ONNX's
layout are computed once before the trace and given to each recurrent module as non-persistent
buffers for the duration of the export (they become the graph's initializers); the module's own
parameters are then unused and dropped from the graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from onnxscript import opset18 as op
from torch import nn

from rnnexport.builder.patch import (
    ExportWatch,
    LayerWeights,
    RecurrentNodes,
    TracedOps,
    export_patches,
    layer_weights,
)
from rnnexport.graph.onnx_slots import GATES, INITIAL_C, INITIAL_H, RECURRENT_OPS

__all__ = ["TRANSLATIONS", "dynamo_patches", "onnx_recurrence"]

_BUFFER = "_rnnexport_onnx_{}_l{}"  # a layer's ONNX weights, as buffers during the export
_PARTS = ("w", "r", "b", "projection", "unprojection")

_RECURRENT_SCHEMA = (
    "(Tensor x, Tensor w, Tensor r, Tensor b, Tensor? sequence_lens, Tensor? initial_h{c}, "
    "int hidden_size, bool bidirectional{activation}) -> ({outputs})"
)


def _activate(activation: str, t: torch.Tensor) -> torch.Tensor:
    return torch.relu(t) if activation == "Relu" else torch.tanh(t)


def onnx_recurrence(
    kind: str,
    x: torch.Tensor,
    w: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    sequence_lens: torch.Tensor | None,
    initial_h: torch.Tensor | None,
    initial_c: torch.Tensor | None,
    *,
    hidden_size: int,
    bidirectional: bool,
    activation: str = "Tanh",
) -> tuple[torch.Tensor, ...]:
    """ONNX's ``LSTM`` / ``GRU`` (``linear_before_reset=1``) / ``RNN``, computed step by step in torch.

    Layouts as in ONNX (``layout=0``): ``x [seq, batch, input]``, ``w [dirs, gates*hidden, input]``,
    ``r [dirs, gates*hidden, hidden]``, ``b [dirs, 2*gates*hidden]``, gates in ONNX's order (LSTM
    i, o, f, c; GRU z, r, h). A row stops at its ``sequence_lens`` (zeros after it, its state kept),
    and the reverse direction starts at each row's own last valid step. Returns ``(y, y_h)`` or
    ``(y, y_h, y_c)`` with ``y [seq, dirs, batch, hidden]``.
    """
    seq, batch, gates = x.shape[0], x.shape[1], GATES[kind]
    dirs = 2 if bidirectional else 1
    lens = torch.full((batch,), seq) if sequence_lens is None else sequence_lens.long()
    y = x.new_zeros(seq, dirs, batch, hidden_size)
    finals: list[list[torch.Tensor]] = [[], []]
    for d in range(dirs):
        x_part = x @ w[d].t() + b[d, : gates * hidden_size]  # every step's input product at once
        h = x.new_zeros(batch, hidden_size) if initial_h is None else initial_h[d]
        c = x.new_zeros(batch, hidden_size) if initial_c is None else initial_c[d]
        for t in range(seq) if d == 0 else reversed(range(seq)):
            valid = (t < lens).unsqueeze(1)
            h_part = h @ r[d].t() + b[d, gates * hidden_size :]
            if kind == "LSTM":
                i, o, f, g = (x_part[t] + h_part).chunk(4, dim=1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                c = torch.where(valid, c_new, c)
            elif kind == "GRU":  # linear_before_reset=1: the reset gate scales R_h h + Rb_h
                xz, xr, xh = x_part[t].chunk(3, dim=1)
                hz, hr, hh = h_part.chunk(3, dim=1)
                z, reset = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
                h_new = (1 - z) * torch.tanh(xh + reset * hh) + z * h
            else:
                h_new = _activate(activation, x_part[t] + h_part)
            h = torch.where(valid, h_new, h)
            y[t, d] = torch.where(valid, h_new, torch.zeros_like(h_new))
        finals[0].append(h)
        finals[1].append(c)
    states = [torch.stack(finals[0])] + ([torch.stack(finals[1])] if kind == "LSTM" else [])
    return (y, *states)


def _fake_recurrence(
    kind: str, x: torch.Tensor, hidden_size: int, bidirectional: bool
) -> tuple[torch.Tensor, ...]:
    dirs = 2 if bidirectional else 1
    y = x.new_empty(x.shape[0], dirs, x.shape[1], hidden_size)
    return (y, *(x.new_empty(dirs, x.shape[1], hidden_size) for _ in range(2 if kind == "LSTM" else 1)))


def _define_recurrent(kind: str) -> Any:
    """``rnnexport::<kind>``: its schema, eager and fake implementations."""
    name = f"rnnexport::{kind.lower()}"
    schema = _RECURRENT_SCHEMA.format(
        c=", Tensor? initial_c" if kind == "LSTM" else "",
        activation=", str activation" if kind == "RNN" else "",
        outputs=", ".join(["Tensor"] * (3 if kind == "LSTM" else 2)),
    )

    def split(args: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
        """The op's positional arguments as onnx_recurrence's tensors and options."""
        # The op takes ONNX's inputs in ONNX's order, up to its last initial state, then its options.
        last = INITIAL_C if kind == "LSTM" else INITIAL_H
        tensors = list(args[: last + 1] if kind == "LSTM" else (*args[: last + 1], None))
        rest = args[last + 1 :]
        options = {"hidden_size": rest[0], "bidirectional": rest[1]}
        if kind == "RNN":
            options["activation"] = rest[2]
        return tensors, options

    def eager(*args: Any) -> tuple[torch.Tensor, ...]:
        tensors, options = split(args)
        return onnx_recurrence(kind, *tensors, **options)

    def fake(*args: Any) -> tuple[torch.Tensor, ...]:
        tensors, options = split(args)
        return _fake_recurrence(kind, tensors[0], options["hidden_size"], options["bidirectional"])

    # The schema is spelled out: inference from annotations does not read postponed (string) ones.
    defined = torch.library.custom_op(name, eager, mutates_args=(), schema=schema)
    defined.register_fake(fake)
    return defined


_OPS = {kind: _define_recurrent(kind) for kind in RECURRENT_OPS}


def _trim_eager(data: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return data[: int(lengths.max())].clone()


def _trim_fake(data: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    steps = torch.library.get_ctx().new_dynamic_size()  # max(lengths): known only at run time
    return data.new_empty((steps, *data.shape[1:]))


_TRIM = torch.library.custom_op(
    "rnnexport::trim_steps", _trim_eager, mutates_args=(), schema="(Tensor data, Tensor lengths) -> Tensor"
)
_TRIM.register_fake(_trim_fake)


# -- the ONNX translations (onnxscript, traced by the exporter with the node's values) --------------


def _direction(bidirectional: bool) -> str:
    return "bidirectional" if bidirectional else "forward"


def _lstm_onnx(
    x: Any,
    w: Any,
    r: Any,
    b: Any,
    sequence_lens: Any = None,
    initial_h: Any = None,
    initial_c: Any = None,
    hidden_size: int = 1,
    bidirectional: bool = False,
) -> Any:
    return op.LSTM(
        x, w, r, b, sequence_lens, initial_h, initial_c,
        hidden_size=hidden_size, direction=_direction(bidirectional),
    )  # fmt: skip


def _gru_onnx(
    x: Any,
    w: Any,
    r: Any,
    b: Any,
    sequence_lens: Any = None,
    initial_h: Any = None,
    hidden_size: int = 1,
    bidirectional: bool = False,
) -> Any:
    # PyTorch's GRU applies the reset gate after the recurrent product: ONNX's linear_before_reset=1.
    return op.GRU(
        x, w, r, b, sequence_lens, initial_h,
        hidden_size=hidden_size, direction=_direction(bidirectional), linear_before_reset=1,
    )  # fmt: skip


def _rnn_onnx(
    x: Any,
    w: Any,
    r: Any,
    b: Any,
    sequence_lens: Any = None,
    initial_h: Any = None,
    hidden_size: int = 1,
    bidirectional: bool = False,
    activation: str = "Tanh",
) -> Any:
    return op.RNN(
        x, w, r, b, sequence_lens, initial_h,
        hidden_size=hidden_size, direction=_direction(bidirectional),
        activations=[activation] * (2 if bidirectional else 1),
    )  # fmt: skip


def _trim_onnx(data: Any, lengths: Any) -> Any:
    zero: Any = op.Constant(value_ints=[0])
    # Shape [1]. Axes spelled out: the exporter converts opset 18 down to an older requested opset,
    # and an empty-axes ReduceMax keeps an attribute (noop_with_empty_axes) older opsets lack.
    return op.Slice(data, zero, op.ReduceMax(lengths, zero, keepdims=1), zero)


TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.rnnexport.lstm.default: _lstm_onnx,
    torch.ops.rnnexport.gru.default: _gru_onnx,
    torch.ops.rnnexport.rnn.default: _rnn_onnx,
    torch.ops.rnnexport.trim_steps.default: _trim_onnx,
}
"""``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""


class _TorchNodes:
    """:class:`~rnnexport.builder.patch.RecurrentNodes` as torch operations, the recurrent ones custom ops."""

    def weights(self, module: nn.RNNBase, layer: int) -> LayerWeights:
        if not hasattr(module, _BUFFER.format("w", layer)):  # a module outside the exported model
            return layer_weights(module, layer)
        parts: list[Any] = [getattr(module, _BUFFER.format(part, layer), None) for part in _PARTS]
        return LayerWeights(*parts)

    def absent(self) -> Any:
        return None

    def cast_lengths(self, lengths: Any) -> Any:
        return lengths.to(torch.int32)

    def transpose(self, x: Any, perm: list[int]) -> Any:
        return x.permute(perm)

    def rows(self, state: Any, layer: int, dirs: int, layers: int) -> Any:
        return state if layers == 1 else state[layer * dirs : (layer + 1) * dirs]

    def matmul(self, a: Any, b: Any) -> Any:
        return torch.matmul(a, b)

    def node(self, kind: str, inputs: list[Any], *, hidden: int, dirs: int, activation: str) -> list[Any]:
        options: list[Any] = [hidden, dirs == 2] + ([activation] if kind == "RNN" else [])
        return list(_OPS[kind](*inputs, *options))

    def squeeze_direction(self, y: Any) -> Any:
        return y.squeeze(1)

    def join_directions(self, y: Any) -> Any:
        return y.permute(0, 2, 1, 3).flatten(2)

    def concat(self, parts: list[Any]) -> Any:
        return torch.cat(parts, dim=0)


_NODES: RecurrentNodes = _TorchNodes()
_TRACED = TracedOps(nodes=_NODES, trim=lambda data, lengths: _TRIM(data, lengths))


@contextlib.contextmanager
def _onnx_weight_buffers(model: nn.Module) -> Iterator[None]:
    """Every recurrent layer's ONNX weights as non-persistent buffers of its module, for the block.

    Computed here, eagerly, because inside the trace the parameters are symbolic: the gate
    reordering and the projection's pseudo-inverse would become graph operations.
    """
    added: list[tuple[nn.Module, str]] = []
    try:
        for module in model.modules():
            if not isinstance(module, nn.RNNBase) or not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
                continue
            for layer in range(module.num_layers):
                weights = layer_weights(module, layer)
                for part in _PARTS:
                    value = getattr(weights, part)
                    if value is not None:
                        name = _BUFFER.format(part, layer)
                        module.register_buffer(name, value, persistent=False)
                        added.append((module, name))
        yield
    finally:
        for module, name in added:
            del module._buffers[name]


@contextlib.contextmanager
def dynamo_patches(model: nn.Module) -> Iterator[ExportWatch]:
    """The export rewrites of :func:`rnnexport.builder.patch.export_patches`, in the form torch.export traces.

    Export inside the block with ``custom_translation_table=TRANSLATIONS``.
    """
    with _onnx_weight_buffers(model), export_patches(model, traced=_TRACED) as watch:
        yield watch
