"""A per-frame tagger whose recurrences sit inside ``nn.Sequential`` and ``nn.ModuleDict`` containers."""

from __future__ import annotations

import torch
from torch import nn


class SelectItem(nn.Module):
    """Picks one element of a tuple, so that an ``nn.LSTM`` can sit inside ``nn.Sequential``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return inputs[self.index]


class FrameTagger(nn.Module):
    """Acoustic frames ``[batch, seq, n_features]`` -> tag scores for every frame ``[batch, seq, n_tags]``."""

    def __init__(self, n_features: int = 13, hidden: int = 24, n_tags: int = 7) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.Tanh(),
            nn.LSTM(hidden, hidden, batch_first=True),
            SelectItem(0),
            nn.Dropout(0.1),
        )
        self.heads = nn.ModuleDict(
            {
                "context": nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True),
                "tags": nn.Linear(2 * hidden, n_tags),
            }
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(frames)
        context, _ = self.heads["context"](encoded)
        scores: torch.Tensor = self.heads["tags"](context)
        return scores
