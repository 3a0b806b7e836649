"""Sequence-in models built on one LSTM (reference article 003).

Variable-length batches take a ``lengths`` input (the lengths role) and run the LSTM packed, as the
article does: ``pack_padded_sequence(..., enforce_sorted=False)`` -> LSTM -> ``pad_packed_sequence``.
Eager ``forward`` is therefore the packed reference itself; the export patches
(:mod:`rnnexport.builder.patch`) turn the packed run into one ONNX ``LSTM`` node with ``sequence_lens``.

Padding contract of the masked models: ``x`` is ``[batch, seq, input]`` with row ``b`` valid on
steps ``0 .. lengths[b]-1``; ``1 <= lengths[b] <= seq``. Padded inputs are never read (NaN padding
cannot leak). ``many-to-many-masked`` returns the padded length ``seq`` with exact zeros on padded
steps (``pad_packed_sequence`` with ``total_length``; without it the article's model returns
``max(lengths)`` steps, a data-dependent shape); ``attention`` pools over valid steps only, so a
padded sequence gives exactly the output of the same sequence unpadded.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnexport.archs._common import packed_lstm, valid_steps
from rnnexport.spec import ArchConfig

__all__ = ["AttentionLSTM", "ManyToManyLSTM", "MaskedManyToManyLSTM"]


class ManyToManyLSTM(nn.Module):
    """LSTM with a linear head applied at every step."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, batch_first=True)
        self.fc = nn.Linear(config.hidden_size, config.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[batch, seq, input] -> y[batch, seq, output]``."""
        y: torch.Tensor = self.fc(self.lstm(x)[0])
        return y


class MaskedManyToManyLSTM(ManyToManyLSTM):
    """Many-to-many LSTM over padded batches, packed: ``y`` is exactly zero on padded steps."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x[batch, seq, input], lengths[batch] -> y[batch, seq, output]``."""
        padded = ~valid_steps(lengths, x.shape[1], features=True)
        # The packed LSTM's padded outputs are zero, but the head adds its bias: mask after it.
        y: torch.Tensor = self.fc(packed_lstm(self.lstm, x, lengths))
        return y.masked_fill(padded, 0.0)


class AttentionLSTM(nn.Module):
    """LSTM + additive attention pooling over the valid steps -> one vector per sequence."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, batch_first=True)
        self.attention = nn.Linear(config.hidden_size, config.hidden_size)
        self.v = nn.Parameter(torch.rand(config.hidden_size))
        self.fc = nn.Linear(config.hidden_size, config.output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x[batch, seq, input], lengths[batch] -> y[batch, output]``."""
        valid = valid_steps(lengths, x.shape[1])
        out = packed_lstm(self.lstm, x, lengths)
        keys = torch.tanh(self.attention(out))
        # Elementwise products and sums rather than matrix-vector and batched one-row products:
        # the same values, and ONNX Runtime runs Mul + ReduceSum several times faster than those.
        scores = (keys * self.v).sum(dim=2)  # [batch, seq]
        # The lowest finite float, not -inf: exp() of it underflows to exactly 0 (so padded steps get
        # exactly zero weight), and a row with no valid step gives finite weights instead of NaN.
        weights = torch.softmax(scores.masked_fill(~valid, torch.finfo(out.dtype).min), dim=1)
        context = (weights.unsqueeze(2) * out).sum(dim=1)
        y: torch.Tensor = self.fc(context)
        return y

    def forward_streaming(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        running_max: torch.Tensor,
        running_sum: torch.Tensor,
        running_context: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk of a stream: exact attention pooling over every valid step seen so far.

        An online softmax carries, per row, a running maximum score ``m`` (``[batch, 1]``), the
        sum of ``exp(score - m)`` (``[batch, 1]``) and the same weighted sum of LSTM outputs; a
        chunk raises ``m`` where it must and rescales both sums by ``exp(m_old - m_new)``. The
        pooled context is their ratio, exactly the softmax-weighted mean of :meth:`forward`. A row
        has seen a valid step exactly when its sum is positive (the maximum's own term is 1). A
        stream starts from zeros; a row that has seen nothing returns ``fc(0)``, its bias, and a row
        whose chunk length is 0 keeps all three exactly.
        The LSTM's own state is carried by the streaming wrapper (:mod:`rnnexport.builder.patch`).
        """
        valid = valid_steps(lengths, x.shape[1])
        out = packed_lstm(self.lstm, x, lengths)
        scores = (torch.tanh(self.attention(out)) * self.v).sum(dim=2)
        lowest = torch.finfo(out.dtype).min
        masked = scores.masked_fill(~valid, lowest)
        # A row that has seen nothing starts from lowest/2, not from the zero a stream starts from:
        # its first valid steps then set the maximum themselves (shifting by 0 would underflow
        # exp(score) for scores below about -87, which trained weights can reach). With no valid
        # step yet its maximum stays lowest/2, and exp(lowest - lowest/2) is exactly 0: padded steps
        # weigh nothing, and exp(start - new_max) <= 1 never overflows.
        start = torch.where(running_sum > 0, running_max, lowest / 2)
        new_max = torch.maximum(start, masked.amax(dim=1, keepdim=True))
        weights = torch.exp(masked - new_max)
        rescale = torch.exp(start - new_max)  # 1 where the maximum stays; it only scales zeros if unseen
        new_sum = running_sum * rescale + weights.sum(dim=1, keepdim=True)
        new_context = running_context * rescale + (weights.unsqueeze(2) * out).sum(dim=1)
        y: torch.Tensor = self.fc(new_context / new_sum.clamp_min(torch.finfo(out.dtype).tiny))
        return y, new_max, new_sum, new_context

    def forward_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Independent reference: pack, then attend over each sequence's own valid steps, row by row."""
        out = packed_lstm(self.lstm, x, lengths)
        rows = []
        for b, length in enumerate(lengths.tolist()):
            steps = out[b, :length]
            weights = torch.softmax(torch.tanh(self.attention(steps)) @ self.v, dim=0)
            rows.append(weights @ steps)
        y: torch.Tensor = self.fc(torch.stack(rows))
        return y
