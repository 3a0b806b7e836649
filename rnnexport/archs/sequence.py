"""Sequence-in models built on one LSTM (reference article 003).

Variable-length batches use a ``lengths`` input and a mask built inside the model, never
``pack_padded_sequence``: packing does not survive ONNX export with dynamic shapes. The article's
packed formulation stays here as ``forward_packed``, the reference the masked models must equal:
identical valid steps, zeros at padded steps.

Padding contract of the masked models: ``x`` is ``[batch, seq, input]`` with row ``b`` valid on
steps ``0 .. lengths[b]-1``; ``1 <= lengths[b] <= seq``. Padded inputs are ignored entirely (they are
zeroed before the LSTM, so even NaN padding cannot leak). ``many-to-many-masked`` returns the padded
length ``seq`` with exact zeros on padded steps (the article's ``pad_packed_sequence`` without
``total_length`` would return ``max(lengths)`` steps, which makes the output shape data-dependent);
``attention`` pools over valid steps only, so a padded sequence gives exactly the output of the same
sequence unpadded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnexport.archs._common import masked_lstm, tracing, valid_steps
from rnnexport.registry import register
from rnnexport.spec import BATCH, SEQ, ArchConfig, ArchSpec, TensorSpec

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


def _packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The article's formulation: pack, run, unpack to the padded length (zeros after each length)."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])
    return out


class MaskedManyToManyLSTM(ManyToManyLSTM):
    """Many-to-many LSTM over padded batches: ``y`` is exactly zero on padded steps."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x[batch, seq, input], lengths[batch] -> y[batch, seq, output]``."""
        padded = ~valid_steps(lengths, x.shape[1]).unsqueeze(2)
        # masked_lstm's padded outputs are zero, but the head adds its bias: mask again after it.
        y: torch.Tensor = self.fc(masked_lstm(self.lstm, x, lengths))
        return y.masked_fill(padded, 0.0)

    def forward_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Packed reference: same weights, ``pack_padded_sequence``; padded steps set to zero."""
        padded = ~valid_steps(lengths, x.shape[1]).unsqueeze(2)
        y: torch.Tensor = self.fc(_packed_lstm(self.lstm, x, lengths))
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
        out = masked_lstm(self.lstm, x, lengths)
        keys = torch.tanh(self.attention(out))
        # For ONNX Runtime, Mul + ReduceSum: it runs a matrix-vector product over a batch of
        # sequences, and a batch of one-row matrix products, several times slower.
        scores = (keys * self.v).sum(dim=2) if tracing() else keys @ self.v  # [batch, seq]
        # The lowest finite float, not -inf: exp() of it underflows to exactly 0 (so padded steps get
        # exactly zero weight), and a row with no valid step gives finite weights instead of NaN.
        weights = torch.softmax(scores.masked_fill(~valid, torch.finfo(out.dtype).min), dim=1)
        if tracing():
            context = (weights.unsqueeze(2) * out).sum(dim=1)
        else:
            context = torch.bmm(weights.unsqueeze(1), out).squeeze(1)
        y: torch.Tensor = self.fc(context)
        return y

    def forward_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Packed reference: pack, then attend over each sequence's own valid steps, one row at a time."""
        out = _packed_lstm(self.lstm, x, lengths)
        rows = []
        for b, length in enumerate(lengths.tolist()):
            steps = out[b, :length]
            weights = torch.softmax(torch.tanh(self.attention(steps)) @ self.v, dim=0)
            rows.append(weights @ steps)
        y: torch.Tensor = self.fc(torch.stack(rows))
        return y


def _read_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Input and hidden from ``lstm.weight_ih_l0`` / ``lstm.weight_hh_l0``, output from ``fc.weight``."""
    sizes: dict[str, int] = {}
    readers = {
        "input_size": ("lstm.weight_ih_l0", 1),
        "hidden_size": ("lstm.weight_hh_l0", 1),
        "output_size": ("fc.weight", 0),
    }
    for size, (key, axis) in readers.items():
        shape = shapes.get(key)
        if shape is not None and len(shape) == 2:
            sizes[size] = shape[axis]
    return sizes


_X = TensorSpec("x", "float32", (BATCH, SEQ, "input_size"), "input sequence, batch-first")
_LENGTHS = TensorSpec("lengths", "int64", (BATCH,), "valid steps per row, 1 <= lengths[b] <= seq")
_SIZES = ("input_size", "hidden_size", "output_size")
# The reference article (shared/seeds/003_b1e4274b19d9071a.txt), by its title.
_SOURCE = "How can a many-to-many LSTM be implemented in PyTorch?"

register(
    ArchSpec(
        name="many-to-many",
        summary="LSTM with a per-step linear head",
        source=f"{_SOURCE} (example 1)",
        build_model=ManyToManyLSTM,
        inputs=(_X,),
        outputs=(TensorSpec("y", "float32", (BATCH, SEQ, "output_size"), "per-step output"),),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
    )
)
register(
    ArchSpec(
        name="many-to-many-masked",
        summary="many-to-many LSTM over padded batches, masked (not packed); padded steps are zero",
        source=f"{_SOURCE} (example 2)",
        build_model=MaskedManyToManyLSTM,
        inputs=(_X, _LENGTHS),
        outputs=(
            TensorSpec(
                "y", "float32", (BATCH, SEQ, "output_size"), "per-step output, exactly 0 on padded steps"
            ),
        ),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
        notes=("returns the padded length with zeros, not max(lengths) steps",),
    )
)
register(
    ArchSpec(
        name="attention",
        summary="LSTM + additive attention pooling over the valid steps (many-to-one)",
        source=f"{_SOURCE} (example 3)",
        build_model=AttentionLSTM,
        inputs=(_X, _LENGTHS),
        outputs=(TensorSpec("y", "float32", (BATCH, "output_size"), "one vector per sequence"),),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
        notes=("many-to-one: one vector per sequence, padded steps take no part in the softmax",),
    )
)
