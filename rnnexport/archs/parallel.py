"""Parallel recurrent branches reading the same input, then fused (reference article 000).

Every branch is an independent single-layer RNN over the same ``x``; their per-step outputs are
fused into one ``hidden_size`` vector per step. Fixes against the article's snippets: the RNNs are
``batch_first=True`` (the article fed ``(batch, seq, input)`` to time-major RNNs, so the batch axis
was read as time), and attribute names are kept (``lstms``/``fc``, ``lstms``/``attention``,
``grus``/``linear``) so a ``state_dict`` trained with the article's classes loads unchanged: the
weights do not depend on ``batch_first``.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnexport.spec import ArchConfig

__all__ = ["ParallelGRU", "ParallelLSTM", "ParallelLSTMAttention"]


def _branches(cell: type[nn.LSTM] | type[nn.GRU], config: ArchConfig) -> nn.ModuleList:
    """``config.branches`` independent single-layer, batch-first RNNs of one kind."""
    return nn.ModuleList(
        cell(config.input_size, config.hidden_size, batch_first=True) for _ in range(config.branches)
    )


def _branch_outputs(branches: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """Run every branch on ``x``; each output is ``[batch, seq, hidden]``."""
    return [branch(x)[0] for branch in branches]


def _concatenated_branches(branches: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Every branch's output, concatenated on the feature axis: ``[batch, seq, branches * hidden]``.

    Each branch exports as its own ONNX recurrent node. Streaming builds merge them into one node
    (:mod:`rnnexport.graph.tidy`): its block-diagonal recurrent weights are built from the branches' own
    when ONNX Runtime loads the model, so the file still holds each weight once.
    """
    return torch.cat(_branch_outputs(branches, x), dim=2)


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
        """``x[batch, seq, input] -> y[batch, seq, hidden]``, the mixture as matrix products.

        On the concatenated layout ``outputs[batch, seq, branch * hidden]``, plain matrix products,
        which ONNX Runtime runs far faster than a softmax and a sum over a middle axis:

            scores = outputs @ blockdiag(a, ..., a) + bias    one score per branch     [b, t, k]
            spread = softmax(scores) @ kron(I_k, 1_h)         its weight per feature   [b, t, k*h]
            y      = (spread * outputs) @ kron(1_k, I_h)      sum over the branches    [b, t, h]

        The constant matrices fold into initializers at export. :meth:`forward_article` is the
        article's formulation, the reference this one must equal.
        """
        outputs = _concatenated_branches(self.lstms, x)
        k, h = len(self.lstms), self.attention.in_features
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        score_matrix = (eye.unsqueeze(1) * self.attention.weight.reshape(1, h, 1)).reshape(k * h, k)
        spread_matrix = eye.repeat_interleave(h, dim=1)
        spread = torch.softmax(outputs @ score_matrix + self.attention.bias, dim=2) @ spread_matrix
        branch_sum = torch.eye(h, dtype=outputs.dtype, device=outputs.device).repeat(k, 1)
        y: torch.Tensor = (spread * outputs) @ branch_sum
        return y

    def forward_article(self, x: torch.Tensor) -> torch.Tensor:
        """The article's formulation: stack the branches, softmax over the branch axis, weighted sum."""
        outputs = torch.stack(_branch_outputs(self.lstms, x), dim=1)  # [batch, branch, seq, hidden]
        weights = torch.softmax(self.attention(outputs), dim=1)  # [batch, branch, seq, 1]
        return (outputs * weights).sum(dim=1)


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
