"""Small pieces the architecture families share, including the length-aware LSTM used by masking."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.onnx import symbolic_helper

__all__ = ["count_indexed", "masked_lstm", "tracing", "valid_steps"]


def tracing() -> bool:
    """True while torch.jit traces a model for the TorchScript exporter.

    Modules use it to hand the exporter a formulation that ONNX Runtime runs well, while eager
    PyTorch keeps the reference articles' formulation; verification proves the two agree.
    (``torch.jit.is_tracing`` reads the same state but has no type annotations.)
    """
    return torch._C._get_tracing_state() is not None


def valid_steps(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean mask ``[batch, seq]``: True where step ``t < lengths[b]``.

    Built from ``arange`` over the runtime sequence length, so it traces to ONNX ``Range`` on a
    ``Shape`` and follows the dynamic sequence axis instead of freezing the trace length.
    """
    steps = torch.arange(seq_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def count_indexed(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct indices ``i`` fill ``pattern`` (like ``lstms.{i}.weight_ih_l0``) among the keys."""
    regex = re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$")
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


class _LengthsLSTM(torch.autograd.Function):
    """A single-layer, batch-first LSTM over padded rows that exports as ONNX ``LSTM`` with ``sequence_lens``.

    ONNX's LSTM takes the valid length of every row natively: it stops each row at its length and
    writes zeros after it. That is masking done by the operator itself: no padded step is computed
    (ONNX Runtime is faster on padded batches), and whatever the padding holds, NaN included, cannot
    reach a valid output. ``forward`` only runs while tracing, to give the exporter values and shapes.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        lengths: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        hidden_size: int,
    ) -> torch.Tensor:
        zeros = x.new_zeros(1, x.shape[0], hidden_size)
        out = torch.lstm(x, (zeros, zeros), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, False, False, True)[0]
        return out.masked_fill(~valid_steps(lengths, x.shape[1]).unsqueeze(2), 0.0)

    @staticmethod
    def symbolic(
        g: Any, x: Any, lengths: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, hidden_size: int
    ) -> Any:
        h = hidden_size

        def onnx_gates(w: Any) -> Any:
            # PyTorch stacks the gates as (input, forget, cell, output), ONNX as (input, output,
            # forget, cell). The slices act on initializers, so they fold into constants.
            parts = [
                symbolic_helper._slice_helper(g, w, axes=[0], starts=[k * h], ends=[(k + 1) * h])
                for k in (0, 3, 1, 2)
            ]
            return g.op("Concat", *parts, axis_i=0)

        weights = symbolic_helper._unsqueeze_helper(g, onnx_gates(w_ih), [0])
        recurrence = symbolic_helper._unsqueeze_helper(g, onnx_gates(w_hh), [0])
        bias = symbolic_helper._unsqueeze_helper(
            g, g.op("Concat", onnx_gates(b_ih), onnx_gates(b_hh), axis_i=0), [0]
        )
        seq_major = g.op("Transpose", x, perm_i=[1, 0, 2])
        seq_lens = g.op("Cast", lengths, to_i=6)  # ONNX wants int32 lengths (TensorProto.INT32 == 6)
        y, _, _ = g.op("LSTM", seq_major, weights, recurrence, bias, seq_lens, hidden_size_i=h, outputs=3)
        y = symbolic_helper._squeeze_helper(g, y, [1])  # drop num_directions: [seq, batch, hidden]
        return g.op("Transpose", y, perm_i=[1, 0, 2])


def masked_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``lstm`` over padded rows: outputs equal to the unpadded run on valid steps, exact zeros after.

    Eager: padded inputs are zeroed (so NaN padding cannot leak into anything), the LSTM runs, and
    padded outputs are zeroed; the LSTM is causal, so valid steps never see the padding after them.
    Under the TorchScript exporter's trace the same function becomes one ONNX ``LSTM`` node with
    ``sequence_lens`` (see :class:`_LengthsLSTM`). Verification compares the two.
    """
    if tracing():
        out: torch.Tensor = _LengthsLSTM.apply(  # type: ignore[no-untyped-call]
            x,
            lengths,
            lstm.weight_ih_l0,
            lstm.weight_hh_l0,
            lstm.bias_ih_l0,
            lstm.bias_hh_l0,
            lstm.hidden_size,
        )
        return out
    padded = ~valid_steps(lengths, x.shape[1]).unsqueeze(2)
    out = lstm(x.masked_fill(padded, 0.0))[0]
    return out.masked_fill(padded, 0.0)
