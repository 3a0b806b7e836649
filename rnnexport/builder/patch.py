"""Export rewrites for recurrent models, applied to any module while an exporter traces it.

The model stays plain eager PyTorch. Inside ``with export_patches(model) as watch:`` these are
swapped, and restored on exit:

- ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` ``forward``: every call on a batched (3-D) tensor or on a
  packed batch becomes one custom autograd Function whose ``symbolic`` emits ONNX ``LSTM`` / ``GRU``
  / ``RNN`` nodes, one per layer, chained (gates reordered to ONNX's layout, GRU with
  ``linear_before_reset=1``, bidirectional layers as ``direction="bidirectional"``, initial states
  as node inputs, ``sequence_lens`` for packed runs). Stacked and bidirectional unpacked RNNs export
  with torch.onnx's own symbolics too, but it refuses LSTM projections and it cannot express packed
  runs without baking the trace's sort order, so one path serves every case.
- ``torch.nn.utils.rnn.pack_padded_sequence``: returns :class:`PaddedBatch` (the padded tensor,
  time-major, and each row's length) instead of a ``PackedSequence``. Nothing is sorted:
  ``enforce_sorted`` does not matter, because ONNX recurrent ops take the rows in any order, and the
  backward direction of a bidirectional layer starts at each row's own last valid step.
- ``torch.nn.utils.rnn.pad_packed_sequence``: turns a :class:`PaddedBatch` back into
  ``(padded, lengths)``, padded to ``total_length`` or, without it, cut to ``max(lengths)`` steps
  (a data-dependent axis, which the I/O contract declares under a name of its own).

- ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` ``forward``: unchanged, but counted in ``watch``,
  so that a cell stepped by a Python loop (which a trace unrolls at the example's length) is refused.

A streaming export (``--streaming``) carries every recurrent module's state through graph inputs and
outputs with module hooks, around whichever ``forward`` is in force: see
:mod:`rnnexport.builder.patch_streaming`.

The packing functions are swapped wherever a loaded module's globals, or the globals of the model's
own methods, hold them, so ``from torch.nn.utils.rnn import pack_padded_sequence`` in the user's
file (or notebook) is covered too.

For the dynamo exporter (``torch.export``), :func:`export_patches` takes a :class:`TracedOps`: the
same stand-ins then compute the graph itself with torch operations and the custom recurrent ops of
:mod:`rnnexport.builder.dynamo_rnn`, through :func:`recurrent_nodes`, the one builder both exporters share.

Every private torch API rnnexport uses lives in this file.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils
from torch.onnx import symbolic_helper

from rnnexport.builder.recurrent import RECURRENT_LAYERS, PaddedBatch, recurrent_base_class
from rnnexport.errors import ExportError

__all__ = [
    "ExportWatch",
    "LayerWeights",
    "PackedLengths",
    "PaddedBatch",
    "RecurrentNodes",
    "TracedOps",
    "TracerWarning",
    "export_patches",
    "frozen_trace_values",
    "layer_weights",
    "recurrent_nodes",
]

# torch.jit's stubs do not re-export it; the tracer warns with it whenever a trace freezes a value.
TracerWarning: type[Warning] = getattr(torch.jit, "TracerWarning")  # noqa: B009


def frozen_trace_values(caught: list[warnings.WarningMessage]) -> list[str]:
    """The tracer's reports that a tensor value was frozen into the trace: first line and place of
    each, deduplicated. (Python control flow on tensor values is recorded at the example's values.)"""
    found: list[str] = []
    for w in caught:
        if issubclass(w.category, TracerWarning) and "trace" in str(w.message):
            line = str(w.message).strip().splitlines()[0].split(". ")[0]
            entry = f"{line} ({Path(w.filename).name}, line {w.lineno})"
            if entry not in found:
                found.append(entry)
    return found


# PyTorch stacks LSTM gates as (input, forget, cell, output) and GRU gates as (reset, update, new);
# ONNX as (input, output, forget, cell) and (update, reset, hidden). Listed: PyTorch blocks in ONNX order.
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_ONNX_INT32 = 6  # TensorProto.INT32: ONNX recurrent ops want int32 sequence_lens

_ORIGINAL_FORWARD: dict[type[nn.Module], Callable[..., Any]] = {cls: cls.forward for cls in RECURRENT_LAYERS}
# torch._C's stubs omit the setter that pairs with _get_tracing_state.
_set_tracing_state = getattr(torch._C, "_set_tracing_state")  # noqa: B009

_ORIGINAL_PACK = rnn_utils.pack_padded_sequence
_ORIGINAL_PAD = rnn_utils.pad_packed_sequence


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Pause the tracer: inside a Function's ``forward``, the computation only supplies the values the
    trace carries on with; the graph is what ``symbolic`` emits."""
    state = torch._C._get_tracing_state()
    _set_tracing_state(None)
    try:
        yield
    finally:
        _set_tracing_state(state)


def _onnx_kind(module: nn.RNNBase) -> str:
    return {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}[module.mode]


def _reorder_gates(t: torch.Tensor, kind: str, hidden: int) -> torch.Tensor:
    return torch.cat([t[g * hidden : (g + 1) * hidden] for g in _GATE_ORDER[kind]])


@dataclass(frozen=True)
class LayerWeights:
    """One layer's ONNX node weights (all directions stacked), plus the LSTM projection if any."""

    w: torch.Tensor  # [dirs, gates*hidden, input]
    r: torch.Tensor  # [dirs, gates*hidden, hidden]
    b: torch.Tensor  # [dirs, 2*gates*hidden]
    projection: torch.Tensor | None  # [dirs, hidden, proj]: y = g @ projection
    unprojection: torch.Tensor | None  # [dirs, proj, hidden]: a cell output g with g @ projection = h0


def layer_weights(module: nn.RNNBase, layer: int) -> LayerWeights:
    """ONNX W, R, B of one layer, computed from the module's parameters (detached: they become constants).

    An LSTM with ``proj_size`` P computes ``h_t = W_hr (o_t * tanh(c_t))``. ONNX's LSTM has no
    projection, but with ``g_t = o_t * tanh(c_t)`` the gates read ``W_hh h_{t-1} = (W_hh W_hr) g_{t-1}``:
    a plain LSTM with recurrent weights ``W_hh W_hr`` computes ``g_t`` exactly, and ``h_t`` is one
    matrix product away. An initial ``h0`` maps to ``g0 = pinv(W_hr) h0`` (``W_hr`` has full row rank
    P < hidden for any trained or random weights), which reproduces ``h0`` exactly up to rounding.
    """
    kind, hidden = _onnx_kind(module), module.hidden_size
    dirs = 2 if module.bidirectional else 1
    ws, rs, bs, projections, unprojections = [], [], [], [], []
    with torch.no_grad():
        for direction in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih = getattr(module, f"weight_ih{suffix}").detach().float()
            w_hh = getattr(module, f"weight_hh{suffix}").detach().float()
            if module.proj_size > 0:
                w_hr = getattr(module, f"weight_hr{suffix}").detach().float()  # [proj, hidden]
                w_hh = w_hh @ w_hr  # [gates*hidden, hidden]
                projections.append(w_hr.t())
                unprojections.append(torch.linalg.pinv(w_hr).t())
            ws.append(_reorder_gates(w_ih, kind, hidden))
            rs.append(_reorder_gates(w_hh, kind, hidden))
            if module.bias:
                b_ih = getattr(module, f"bias_ih{suffix}").detach().float()
                b_hh = getattr(module, f"bias_hh{suffix}").detach().float()
                bs.append(torch.cat([_reorder_gates(b_ih, kind, hidden), _reorder_gates(b_hh, kind, hidden)]))
            else:
                bs.append(w_ih.new_zeros(2 * len(_GATE_ORDER[kind]) * hidden))
    return LayerWeights(
        w=torch.stack(ws).contiguous(),
        r=torch.stack(rs).contiguous(),
        b=torch.stack(bs).contiguous(),
        projection=torch.stack(projections).contiguous() if projections else None,
        unprojection=torch.stack(unprojections).contiguous() if unprojections else None,
    )


def _none(g: Any) -> Any:
    """An omitted optional input of an ONNX node (torch.onnx writes it as an empty input name)."""
    value = g.op("prim::Constant")
    value.setType(torch._C.OptionalType.ofTensor())
    return value


def _constant(g: Any, t: torch.Tensor) -> Any:
    return g.op("Constant", value_t=t)


def _rows(g: Any, state: Any, layer: int, dirs: int, layers: int = 0) -> Any:
    """``state[layer*dirs : (layer+1)*dirs]`` of an initial state ``[layers*dirs, batch, size]``
    (the state itself for a single layer: a Slice of every row costs a node per call)."""
    if layers == 1:
        return state
    return symbolic_helper._slice_helper(g, state, axes=[0], starts=[layer * dirs], ends=[(layer + 1) * dirs])


class RecurrentNodes(Protocol):
    """What :func:`recurrent_nodes` writes with: ONNX nodes of a TorchScript graph, or torch operations
    and the ONNX recurrent ops of :mod:`rnnexport.builder.dynamo_rnn` while torch.export traces."""

    def weights(self, module: nn.RNNBase, layer: int) -> LayerWeights:
        """One layer's weights (:func:`layer_weights`), as values the graph can use."""

    def absent(self) -> Any:
        """An omitted optional input of a recurrent node."""

    def cast_lengths(self, lengths: Any) -> Any:
        """Row lengths as int32 ``sequence_lens``."""

    def transpose(self, x: Any, perm: list[int]) -> Any:
        """``x`` with its axes permuted."""

    def rows(self, state: Any, layer: int, dirs: int, layers: int) -> Any:
        """``state[layer*dirs : (layer+1)*dirs]`` of an initial state ``[layers*dirs, batch, size]``."""

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b``."""

    def node(self, kind: str, inputs: list[Any], *, hidden: int, dirs: int, activation: str) -> list[Any]:
        """An ONNX ``LSTM``/``GRU``/``RNN`` node (GRU with ``linear_before_reset=1``): its outputs."""

    def squeeze_direction(self, y: Any) -> Any:
        """``[seq, 1, batch, size] -> [seq, batch, size]``."""

    def join_directions(self, y: Any) -> Any:
        """``[seq, 2, batch, size] -> [seq, batch, 2*size]``: forward then reverse features."""

    def concat(self, parts: list[Any]) -> Any:
        """``parts`` concatenated on axis 0."""


def recurrent_nodes(
    emit: RecurrentNodes,
    module: nn.RNNBase,
    batch_first: bool,
    x: Any,
    lengths: Any,
    h0: Any,
    c0: Any,
) -> tuple[Any, ...]:
    """An ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` call as ONNX recurrent nodes, one per layer, chained.

    ``x`` is time-major unless ``batch_first``; ``lengths`` (a packed call's row lengths), ``h0`` and
    ``c0`` may be None. Returns ``(y, h_n)`` or ``(y, h_n, c_n)`` as the module does (``y`` in the
    layout of ``x``). One function for both exporters, so both build the same graph.
    """
    kind = _onnx_kind(module)
    dirs = 2 if module.bidirectional else 1
    activation = "Relu" if module.mode == "RNN_RELU" else "Tanh"
    seq_lens = emit.absent() if lengths is None else emit.cast_lengths(lengths)
    layer_input = emit.transpose(x, [1, 0, 2]) if batch_first else x
    finals: list[list[Any]] = [[], []]
    for layer in range(module.num_layers):
        weights = emit.weights(module, layer)
        inputs = [layer_input, weights.w, weights.r, weights.b, seq_lens]
        initial_h = emit.absent() if h0 is None else emit.rows(h0, layer, dirs, module.num_layers)
        if h0 is not None and weights.unprojection is not None:
            initial_h = emit.matmul(initial_h, weights.unprojection)
        inputs.append(initial_h)
        if kind == "LSTM":
            inputs.append(emit.absent() if c0 is None else emit.rows(c0, layer, dirs, module.num_layers))
        outputs = emit.node(kind, inputs, hidden=module.hidden_size, dirs=dirs, activation=activation)
        y, states = outputs[0], list(outputs[1:])  # y: [seq, dirs, batch, hidden]
        if weights.projection is not None:
            y = emit.matmul(y, weights.projection)
            states[0] = emit.matmul(states[0], weights.projection)
        for k, s in enumerate(states):
            finals[k].append(s)
        layer_input = emit.squeeze_direction(y) if dirs == 1 else emit.join_directions(y)
    y = emit.transpose(layer_input, [1, 0, 2]) if batch_first else layer_input
    results = [y]
    for parts in finals[: 2 if kind == "LSTM" else 1]:
        results.append(parts[0] if len(parts) == 1 else emit.concat(parts))
    return tuple(results)


class _GraphNodes:
    """:class:`RecurrentNodes` for the TorchScript exporter: nodes of its graph ``g``."""

    def __init__(self, g: Any) -> None:
        self.g = g

    def weights(self, module: nn.RNNBase, layer: int) -> LayerWeights:
        weights = layer_weights(module, layer)
        return LayerWeights(
            w=_constant(self.g, weights.w),
            r=_constant(self.g, weights.r),
            b=_constant(self.g, weights.b),
            projection=None if weights.projection is None else _constant(self.g, weights.projection),
            unprojection=None if weights.unprojection is None else _constant(self.g, weights.unprojection),
        )

    def absent(self) -> Any:
        return _none(self.g)

    def cast_lengths(self, lengths: Any) -> Any:
        return self.g.op("Cast", lengths, to_i=_ONNX_INT32)

    def transpose(self, x: Any, perm: list[int]) -> Any:
        return self.g.op("Transpose", x, perm_i=perm)

    def rows(self, state: Any, layer: int, dirs: int, layers: int) -> Any:
        return _rows(self.g, state, layer, dirs, layers)

    def matmul(self, a: Any, b: Any) -> Any:
        return self.g.op("MatMul", a, b)

    def node(self, kind: str, inputs: list[Any], *, hidden: int, dirs: int, activation: str) -> list[Any]:
        attributes: dict[str, Any] = {
            "hidden_size_i": hidden,
            "direction_s": "bidirectional" if dirs == 2 else "forward",
        }
        if kind == "GRU":
            # PyTorch's GRU applies the reset gate after the recurrent product, as ONNX's option 1.
            attributes["linear_before_reset_i"] = 1
        if kind == "RNN":
            attributes["activations_s"] = [activation] * dirs
        return list(self.g.op(kind, *inputs, outputs=3 if kind == "LSTM" else 2, **attributes))

    def squeeze_direction(self, y: Any) -> Any:
        return symbolic_helper._squeeze_helper(self.g, y, [1])

    def join_directions(self, y: Any) -> Any:
        y = self.g.op("Transpose", y, perm_i=[0, 2, 1, 3])
        return self.g.op("Reshape", y, _constant(self.g, torch.tensor([0, 0, -1], dtype=torch.int64)))

    def concat(self, parts: list[Any]) -> Any:
        return self.g.op("Concat", *parts, axis_i=0)


@dataclass(frozen=True)
class TracedOps:
    """How the export stand-ins compute while torch.export traces them (the dynamo exporter).

    torch.export records the torch operations that run, not a ``symbolic``: so the export Functions
    compute, there, the graph itself, with ``nodes`` (ops that become ONNX recurrent nodes) and
    ``trim`` (``data[:max(lengths)]`` as an op with a data-dependent size). See
    :mod:`rnnexport.builder.dynamo_rnn`.
    """

    nodes: RecurrentNodes
    trim: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_TRACED: list[TracedOps] = []  # the one in force (export_patches(traced=...)), else empty


def _apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)``, typed the same on every supported torch.

    torch 2.13 declares ``Function.apply`` as an untyped classmethod (a call to it is an untyped call
    for strict mypy); from 2.14 on it is an attribute of type ``Any``. Through a variable of a declared
    callable type, the call type-checks alike on both, without an ignore that one of them reports as
    unused.
    """
    apply: Callable[..., Any] = function.apply
    return apply(*args)


class _RecurrentOp(torch.autograd.Function):
    """An ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` call as ONNX recurrent nodes, one per layer.

    ``forward`` runs only while tracing, to give the exporter values and shapes: it is the module's
    own eager computation (packed, for a packed call). ``x`` is time-major unless ``batch_first``;
    ``lengths`` is None for an unpacked call. Returns ``(y, h_n)`` or ``(y, h_n, c_n)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        module: nn.RNNBase,
        batch_first: bool,
        x: torch.Tensor,
        lengths: torch.Tensor | None,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        if _TRACED:  # torch.export records what runs here: the graph itself
            return recurrent_nodes(_TRACED[-1].nodes, module, batch_first, x, lengths, h0, c0)
        original = _ORIGINAL_FORWARD[recurrent_base_class(module)]
        hx: Any = h0 if c0 is None else (h0, c0)
        saved_batch_first = module.batch_first
        with _untraced():
            try:
                if lengths is None:
                    out, final = original(module, x, hx)
                else:
                    module.batch_first = False
                    packed = _ORIGINAL_PACK(x, lengths.cpu(), batch_first=False, enforce_sorted=False)
                    packed_out, final = original(module, packed, hx)
                    out = _ORIGINAL_PAD(packed_out, batch_first=False, total_length=x.shape[0])[0]
            finally:
                module.batch_first = saved_batch_first
        states = final if isinstance(final, tuple) else (final,)
        return (out, *states)

    @staticmethod
    def symbolic(
        g: Any,
        module: nn.RNNBase,
        batch_first: bool,
        x: Any,
        lengths: Any,
        h0: Any,
        c0: Any,
    ) -> Any:
        return recurrent_nodes(_GraphNodes(g), module, batch_first, x, lengths, h0, c0)


class _TrimSteps(torch.autograd.Function):
    """``data[:max(lengths)]`` on the time axis (axis 0): a slice whose end is computed in the graph."""

    @staticmethod
    def forward(ctx: Any, data: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if _TRACED:
            return _TRACED[-1].trim(data, lengths)
        with _untraced():
            return data[: int(lengths.max())].clone()

    @staticmethod
    def symbolic(g: Any, data: Any, lengths: Any) -> Any:
        # Shape [1]: without axes, ReduceMax reduces every axis at every opset.
        steps = g.op("ReduceMax", lengths, keepdims_i=1)
        zero = _constant(g, torch.tensor([0], dtype=torch.int64))
        if g.opset < 10:
            raise RuntimeError(
                "pad_packed_sequence without total_length needs opset 10 or newer (a computed slice end)"
            )
        return g.op("Slice", data, zero, steps, zero)


def _recurrent_forward(self: nn.RNNBase, input: Any, hx: Any = None) -> Any:
    """Stand-in for ``nn.LSTM/GRU/RNN.forward`` during an export (see the module docstring)."""
    if isinstance(input, PaddedBatch):
        x, lengths, batch_first = input.data, input.lengths, False
    elif isinstance(input, torch.Tensor) and input.dim() == 3:
        x, lengths, batch_first = input, None, self.batch_first
    elif isinstance(input, rnn_utils.PackedSequence):
        # torch.onnx would export it with the trace's sort order and batch sizes baked in.
        raise ExportError(
            f"An nn.{recurrent_base_class(self).__name__} received a PackedSequence that was not made by "
            "pack_padded_sequence (one built by hand, for example): exporting it would bake the "
            "example's sort order and batch sizes into the graph, which gives wrong answers at other "
            "batch sizes. Pad the batch and call "
            "torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, ...) in forward instead."
        )
    else:  # an unbatched (2-D) input: left to torch.onnx's own symbolics
        return _ORIGINAL_FORWARD[recurrent_base_class(self)](self, input, hx)
    h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
    results = _apply(_RecurrentOp, self, batch_first, x, lengths, h0, c0)
    y = results[0] if lengths is None else PaddedBatch(results[0], lengths)
    state = (results[1], results[2]) if isinstance(self, nn.LSTM) else results[1]
    return y, state


def _pack_padded_sequence(
    input: torch.Tensor, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
) -> PaddedBatch:
    """Stand-in for ``pack_padded_sequence`` during an export: nothing is sorted or gathered."""
    if not isinstance(lengths, torch.Tensor):  # a Python list is a constant of the trace anyway
        lengths = torch.tensor(lengths)
    lengths = lengths.to(device=input.device, dtype=torch.int64)
    return PaddedBatch(input.transpose(0, 1) if batch_first else input, lengths)


def _pad_packed_sequence(
    sequence: Any,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for ``pad_packed_sequence`` during an export; a real ``PackedSequence`` goes to torch's."""
    if not isinstance(sequence, PaddedBatch):
        result: tuple[torch.Tensor, torch.Tensor] = _ORIGINAL_PAD(
            sequence, batch_first=batch_first, padding_value=padding_value, total_length=total_length
        )
        return result
    data, lengths = sequence.data, sequence.lengths
    if total_length is None:
        data = _apply(_TrimSteps, data, lengths)
    else:
        # Zeros up to total_length. While tracing, shapes are traced values, so the amount follows
        # the input's length (it is 0 in the usual total_length=x.size(1)).
        extra = total_length - data.shape[0]
        data = torch.cat([data, data.new_zeros((extra, *data.shape[1:]))], dim=0)
    if padding_value != 0.0:
        steps = torch.arange(data.shape[0], device=data.device).unsqueeze(1)
        padded = (steps >= lengths.unsqueeze(0)).unsqueeze(2)
        data = data.masked_fill(padded, padding_value)
    return (data.transpose(0, 1) if batch_first else data), lengths


class PackedLengths(torch.overrides.TorchFunctionMode):
    """Inside ``with PackedLengths() as spy:``, ``spy.seen`` collects the lengths of every
    ``pack_padded_sequence`` call (eager runs, nothing changed): to tell which input was a length."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") == "_pack_padded_sequence" and len(args) > 1:  # torch's private op
            self.seen.append(args[1])
        return func(*args, **(kwargs or {}))


def _namespaces(model: nn.Module | None) -> list[dict[str, Any]]:
    """Global namespaces that may hold the packing functions under some name.

    ``from torch.nn.utils.rnn import pack_padded_sequence`` binds the function in the importing
    module's globals, where swapping ``torch.nn.utils.rnn``'s attribute cannot reach it, and the
    model's helpers may live in any file. So: every loaded module, plus the globals of every
    function defined on the model's classes (code run by ``exec`` or in a notebook has no module).
    The scan looks for the two function objects (identity, not name), so every alias is found.
    """
    this = sys.modules[__name__]  # which keeps the originals, to call them
    found: dict[int, dict[str, Any]] = {}
    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType) and module is not this:
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict):
                found.setdefault(id(namespace), namespace)
    classes = {cls for m in model.modules() for cls in type(m).__mro__} if model is not None else set()
    for cls in classes:
        for attribute in vars(cls).values():
            namespace = getattr(attribute, "__globals__", None)
            if isinstance(namespace, dict) and namespace is not vars(this):
                found.setdefault(id(namespace), namespace)
    return list(found.values())


_CELLS: tuple[type[nn.Module], ...] = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)


@dataclass
class ExportWatch:
    """What :func:`export_patches` saw during one trace.

    ``cell_calls`` counts calls of each recurrent cell module (``nn.LSTMCell`` ...). The example has
    several time steps, so a cell called more than once is almost surely stepped by a Python loop
    over time, which the trace unrolls at the example's length.
    """

    cell_calls: dict[str, int]

    def stepped_cells(self) -> list[str]:
        """Cells called more than once: ``"cell (nn.LSTMCell) x3"``."""
        return [f"{name} x{count}" for name, count in self.cell_calls.items() if count > 1]


def _counting(cls: type[nn.Module], watch: ExportWatch, names: dict[int, str]) -> Callable[..., Any]:
    original = cls.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        key = f"{names.get(id(self), '?')} (nn.{cls.__name__})"
        watch.cell_calls[key] = watch.cell_calls.get(key, 0) + 1
        return original(self, *args, **kwargs)

    return forward


@contextlib.contextmanager
def export_patches(
    model: nn.Module | None = None, *, traced: TracedOps | None = None
) -> Iterator[ExportWatch]:
    """Swap the recurrent layers' ``forward`` and the packing functions for their export forms.

    Applies to every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (and subclasses that do not override
    ``forward``) for the duration of the block, process-wide, and restores everything on exit.
    ``model`` is the module about to be exported; it names the cells in :class:`ExportWatch`.
    ``traced`` is given for torch.export (the dynamo exporter): the same stand-ins then compute with it.
    """
    watch = ExportWatch(cell_calls={})
    names = {id(m): name or "model" for name, m in model.named_modules()} if model is not None else {}
    swaps: list[tuple[Any, str, Any]] = [(cls, "forward", _recurrent_forward) for cls in _ORIGINAL_FORWARD]
    swaps += [(cls, "forward", _counting(cls, watch, names)) for cls in _CELLS]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    # (namespace, name, original, stand-in) for every global name bound to a packing function.
    stand_ins = {id(_ORIGINAL_PACK): _pack_padded_sequence, id(_ORIGINAL_PAD): _pad_packed_sequence}
    rebinds = [
        (namespace, name, value, stand_ins[id(value)])
        for namespace in _namespaces(model)
        for name, value in list(namespace.items())
        if value is _ORIGINAL_PACK or value is _ORIGINAL_PAD
    ]
    try:
        for owner, name, replacement in swaps:
            setattr(owner, name, replacement)
        for namespace, name, _, stand_in in rebinds:
            namespace[name] = stand_in
        if traced is not None:
            _TRACED.append(traced)
        yield watch
    finally:
        if traced is not None:
            _TRACED.remove(traced)
        for namespace, name, original, stand_in in rebinds:
            if namespace.get(name) is stand_in:  # unless the code rebound it meanwhile
                namespace[name] = original
        for owner, name, value in reversed(originals):
            setattr(owner, name, value)
