"""The encoder half of a seq2seq model, with a learned initial state instead of zeros."""

from __future__ import annotations

import torch
from torch import nn


class Seq2SeqEncoder(nn.Module):
    """Source tokens ``[batch, seq]`` -> per-step outputs and the final ``(hidden, cell)`` for a decoder.

    ``h0`` and ``c0`` are trained with everything else and expanded over the batch at every call.
    """

    def __init__(
        self, vocab_size: int = 300, emb_dim: int = 16, hid_dim: int = 32, n_layers: int = 2
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hid_dim, num_layers=n_layers, batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(n_layers, 1, hid_dim))
        self.c0 = nn.Parameter(torch.zeros(n_layers, 1, hid_dim))

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch_size = src.size(0)
        h0 = self.h0.expand(-1, batch_size, -1).contiguous()
        c0 = self.c0.expand(-1, batch_size, -1).contiguous()
        outputs, (hidden, cell) = self.rnn(self.embedding(src), (h0, c0))
        return outputs, (hidden, cell)
