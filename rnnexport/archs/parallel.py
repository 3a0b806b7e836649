"""Parallel recurrent branches reading the same input, then fused (reference article 000).

Every branch is an independent single-layer RNN over the same ``x``; their per-step outputs are
fused into one ``hidden_size`` vector per step. Fixes against the article's snippets: the RNNs are
``batch_first=True`` (the article fed ``(batch, seq, input)`` to time-major RNNs, so the batch axis
was read as time), and attribute names are kept (``lstms``/``fc``, ``lstms``/``attention``,
``grus``/``linear``) so a ``state_dict`` trained with the article's classes loads unchanged: the
weights do not depend on ``batch_first``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.onnx import symbolic_helper

from rnnexport.archs._common import count_indexed, tracing
from rnnexport.registry import register
from rnnexport.spec import BATCH, SEQ, ArchConfig, ArchSpec, TensorSpec

__all__ = ["ParallelGRU", "ParallelLSTM", "ParallelLSTMAttention"]


def _branches(cell: type[nn.LSTM] | type[nn.GRU], config: ArchConfig) -> nn.ModuleList:
    """``config.branches`` independent single-layer, batch-first RNNs of one kind."""
    return nn.ModuleList(
        cell(config.input_size, config.hidden_size, batch_first=True) for _ in range(config.branches)
    )


def _branch_outputs(branches: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Run every branch on ``x``; each output is ``[batch, seq, hidden]``."""
    return [branch(x)[0] for branch in branches]


# torch._C's stubs omit the setter that pairs with _get_tracing_state.
_set_tracing_state = getattr(torch._C, "_set_tracing_state")  # noqa: B009

# Gate blocks in PyTorch's layout, listed in ONNX's order: PyTorch stacks LSTM gates as (input,
# forget, cell, output) and GRU gates as (reset, update, new); ONNX as (input, output, forget, cell)
# and (update, reset, hidden).
_ONNX_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}


def _fused_onnx_weights(branches: nn.ModuleList) -> tuple[str, int, list[torch.Tensor]]:
    """W, R and B of one ONNX RNN node equivalent to all branches side by side.

    The fused hidden state is the branches' states concatenated. Input weights are stacked, and the
    recurrent weights are block-diagonal, so no branch ever sees another's state: every gate acts
    elementwise, hence the fused cell computes exactly the independent branches.
    """
    rnns = [m for m in branches.children() if isinstance(m, nn.RNNBase)]
    op = "LSTM" if isinstance(rnns[0], nn.LSTM) else "GRU"
    h = rnns[0].hidden_size

    def gates(name: str) -> list[list[torch.Tensor]]:
        """``[gate][branch]`` blocks of one weight, gates in ONNX order."""
        return [
            [getattr(rnn, name).detach()[g * h : (g + 1) * h] for rnn in rnns] for g in _ONNX_GATE_ORDER[op]
        ]

    weights = torch.cat([torch.cat(blocks) for blocks in gates("weight_ih_l0")])
    block_diag: Any = torch.block_diag  # untyped in torch's stubs
    recurrence = torch.cat([block_diag(*blocks) for blocks in gates("weight_hh_l0")])
    bias = torch.cat([torch.cat(blocks) for name in ("bias_ih_l0", "bias_hh_l0") for blocks in gates(name)])
    return op, h * len(rnns), [weights.unsqueeze(0), recurrence.unsqueeze(0), bias.unsqueeze(0)]


def _to_pytorch_gates(t: torch.Tensor, op: str, hidden: int) -> torch.Tensor:
    """Inverse of the ONNX gate reordering along axis 0 (blocks of ``hidden`` rows)."""
    order = _ONNX_GATE_ORDER[op]
    return torch.cat([t[order.index(g) * hidden : (order.index(g) + 1) * hidden] for g in range(len(order))])


class _FusedBranches(torch.autograd.Function):
    """Export-time stand-in for the branches: one ONNX LSTM/GRU node instead of one per branch.

    ONNX Runtime then steps through time once instead of once per branch (about 15% faster for three
    branches on a CPU), and the node's output is already the branches' outputs concatenated.
    ``forward`` runs only while tracing; it computes the fused cell in PyTorch from the very weights
    the node will hold, and verification compares the exported node with the eager branches.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor, op: str, hidden: int
    ) -> torch.Tensor:
        w_ih, w_hh = (_to_pytorch_gates(t[0], op, hidden) for t in (w, r))
        b_ih, b_hh = (_to_pytorch_gates(t, op, hidden) for t in b[0].chunk(2))
        zeros = x.new_zeros(1, x.shape[0], hidden)
        params = [w_ih, w_hh, b_ih, b_hh]
        if op == "LSTM":
            return torch.lstm(x, (zeros, zeros), params, True, 1, 0.0, False, False, True)[0]
        return torch.gru(x, zeros, params, True, 1, 0.0, False, False, True)[0]

    @staticmethod
    def symbolic(g: Any, x: Any, w: Any, r: Any, b: Any, op: str, hidden: int) -> Any:
        # linear_before_reset: PyTorch's GRU applies the reset gate after the recurrent product.
        extra = {"linear_before_reset_i": 1} if op == "GRU" else {}
        seq_major = g.op("Transpose", x, perm_i=[1, 0, 2])
        outputs = g.op(
            op, seq_major, w, r, b, hidden_size_i=hidden, outputs=3 if op == "LSTM" else 2, **extra
        )
        y = symbolic_helper._squeeze_helper(g, outputs[0], [1])  # drop num_directions
        return g.op("Transpose", y, perm_i=[1, 0, 2])


def _concatenated_branches(branches: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Every branch's output, concatenated on the feature axis: ``[batch, seq, branches * hidden]``."""
    state = torch._C._get_tracing_state()
    if state is None:
        return torch.cat(_branch_outputs(branches, x), dim=2)
    # Build the fused weights with the tracer paused: they enter the graph as plain constants
    # instead of as a recorded chain of slices and concatenations.
    _set_tracing_state(None)
    try:
        op, hidden, (w, r, b) = _fused_onnx_weights(branches)
    finally:
        _set_tracing_state(state)
    fused: torch.Tensor = _FusedBranches.apply(x, w, r, b, op, hidden)  # type: ignore[no-untyped-call]
    return fused


class ParallelLSTM(nn.Module):
    """LSTM branches, outputs concatenated on the feature axis, then a linear layer back to hidden."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.lstms = _branches(nn.LSTM, config)
        self.fc = nn.Linear(config.hidden_size * config.branches, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[batch, seq, input] -> y[batch, seq, hidden]``."""
        y: torch.Tensor = self.fc(_concatenated_branches(self.lstms, x))
        return y


class ParallelLSTMAttention(nn.Module):
    """LSTM branches mixed by a learned softmax over the branch axis.

    The softmax is taken over branches *at every time step*: step t's output is a convex combination
    of the branches' step-t outputs, with weights scored from those outputs. It is not attention over
    time. This is the article's meaning, kept on purpose.
    """

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.lstms = _branches(nn.LSTM, config)
        self.attention = nn.Linear(config.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[batch, seq, input] -> y[batch, seq, hidden]``."""
        if tracing():
            return self._mix_for_export(_concatenated_branches(self.lstms, x))
        outputs = torch.stack(_branch_outputs(self.lstms, x), dim=1)  # [batch, branch, seq, hidden]
        weights = torch.softmax(self.attention(outputs), dim=1)  # [batch, branch, seq, 1]
        return (outputs * weights).sum(dim=1)

    def _mix_for_export(self, outputs: torch.Tensor) -> torch.Tensor:
        """The same mixture on the concatenated layout ``[batch, seq, branch * hidden]``, as plain
        matrix products, which ONNX Runtime runs far faster than a softmax and a sum over a middle axis:

            scores = outputs @ blockdiag(a, ..., a) + bias    one score per branch     [b, t, k]
            spread = softmax(scores) @ kron(I_k, 1_h)         its weight per feature   [b, t, k*h]
            y      = (spread * outputs) @ kron(1_k, I_h)      sum over the branches    [b, t, h]

        The constant matrices fold into initializers at export; verification compares the exported
        graph with ``forward``'s eager formulation.
        """
        k, h = len(self.lstms), self.attention.in_features
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        score_matrix = (eye.unsqueeze(1) * self.attention.weight.reshape(1, h, 1)).reshape(k * h, k)
        spread_matrix = eye.repeat_interleave(h, dim=1)
        spread = torch.softmax(outputs @ score_matrix + self.attention.bias, dim=2) @ spread_matrix
        branch_sum = torch.eye(h, dtype=outputs.dtype, device=outputs.device).repeat(k, 1)
        return (spread * outputs) @ branch_sum


class ParallelGRU(nn.Module):
    """GRU branches, concatenated, then a linear layer back to hidden."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.grus = _branches(nn.GRU, config)
        self.linear = nn.Linear(config.hidden_size * config.branches, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[batch, seq, input] -> y[batch, seq, hidden]``."""
        y: torch.Tensor = self.linear(_concatenated_branches(self.grus, x))
        return y


class _SizesReader:
    """Reads input, hidden and branch count off ``<branch_attr>.{i}.weight_ih_l0`` / ``weight_hh_l0``."""

    def __init__(self, branch_attr: str) -> None:
        self.branch_attr = branch_attr

    def __call__(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        branches = count_indexed(shapes, f"{self.branch_attr}.{{i}}.weight_ih_l0")
        if branches:
            sizes["branches"] = branches
        w_ih = shapes.get(f"{self.branch_attr}.0.weight_ih_l0")
        w_hh = shapes.get(f"{self.branch_attr}.0.weight_hh_l0")
        if w_ih is not None and len(w_ih) == 2:
            sizes["input_size"] = w_ih[1]
        if w_hh is not None and len(w_hh) == 2:
            sizes["hidden_size"] = w_hh[1]
        return sizes


_X = TensorSpec("x", "float32", (BATCH, SEQ, "input_size"), "input sequence, batch-first")
_Y = TensorSpec("y", "float32", (BATCH, SEQ, "hidden_size"), "fused per-step features")
_SIZES = ("input_size", "hidden_size", "branches")
# The reference article (shared/seeds/000_2dc1f8ec3c0ad6e4.txt), by its title.
_SOURCE = "How can I implement multiple LSTM cells per block in PyTorch?"

register(
    ArchSpec(
        name="parallel-lstm",
        summary="parallel LSTM branches, concatenated, then linear",
        source=f"{_SOURCE} (example 1)",
        build_model=ParallelLSTM,
        inputs=(_X,),
        outputs=(_Y,),
        sizes=_SIZES,
        infer_sizes=_SizesReader("lstms"),
    )
)
register(
    ArchSpec(
        name="parallel-lstm-attention",
        summary="parallel LSTM branches mixed by a per-step softmax over the branches",
        source=f"{_SOURCE} (example 2)",
        build_model=ParallelLSTMAttention,
        inputs=(_X,),
        outputs=(_Y,),
        sizes=_SIZES,
        infer_sizes=_SizesReader("lstms"),
        notes=("the softmax runs over the branch axis at each step, not over time",),
    )
)
register(
    ArchSpec(
        name="parallel-gru",
        summary="parallel GRU branches, concatenated, then linear",
        source=f"{_SOURCE} (example 3)",
        build_model=ParallelGRU,
        inputs=(_X,),
        outputs=(_Y,),
        sizes=_SIZES,
        infer_sizes=_SizesReader("grus"),
    )
)
