"""Sentiment classification: embeddings, a packed 2-layer bidirectional LSTM, max-pooling over real tokens."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0


class SentimentLSTM(nn.Module):
    """Token ids ``[batch, seq]`` (``PAD`` after each review's end) and lengths -> class logits."""

    def __init__(self, vocab: int = 500, hidden: int = 24, embed_dim: int = 16, n_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(
            embed_dim, hidden, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25
        )
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(2 * hidden, n_classes)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(input_ids)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(packed_output, batch_first=True, total_length=input_ids.size(1))
        # Max over the real tokens only: padded steps come back as zeros, which could win the max.
        steps = torch.arange(input_ids.size(1), device=input_ids.device)
        padding = steps[None, :] >= lengths[:, None]
        output = output.masked_fill(padding.unsqueeze(-1), float("-inf"))
        pooled, _ = output.max(dim=1)
        logits: torch.Tensor = self.fc(self.dropout(pooled))
        return logits
