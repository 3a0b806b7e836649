"""Small pieces the architecture families share."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["packed_lstm", "valid_steps"]


def valid_steps(lengths: torch.Tensor, seq_len: int, *, features: bool = False) -> torch.Tensor:
    """Boolean mask ``[batch, seq]`` (``[batch, seq, 1]`` with ``features``, to broadcast over a
    feature axis): True where step ``t < lengths[b]``.

    Built from ``arange`` over the runtime sequence length, so it traces to ONNX ``Range`` on a
    ``Shape`` and follows the dynamic sequence axis instead of freezing the trace length. The 3-D
    mask is built as such (a reshape of each side), not unsqueezed after: one node fewer per call.
    """
    steps = torch.arange(seq_len, device=lengths.device)
    if features:
        return steps.reshape(1, -1, 1) < lengths.reshape(-1, 1, 1)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The article's formulation: pack (rows in any order), run, unpad to the padded length.

    Valid steps equal the unpadded run of each row; padded steps are exactly zero, and nothing in
    the padding (NaN included) is read. The export patches (:mod:`rnnexport.builder.patch`) turn this into
    one ONNX ``LSTM`` node with ``sequence_lens``: no padded step is computed there either.
    """
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])
    return out
