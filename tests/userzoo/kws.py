"""Keyword spotting: a small CRNN over log-mel frames (conv front end, GRU, classifier)."""

from __future__ import annotations

import torch
from torch import nn


class KWSCRNN(nn.Module):
    """Log-mel spectrogram ``[batch, 1, time, n_mels]`` -> keyword logits ``[batch, n_classes]``.

    The convolutions pool the frequency axis only, so every frame reaches the GRU.
    """

    def __init__(self, n_mels: int = 40, n_classes: int = 12, channels: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 2)),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 2)),
        )
        self.gru = nn.GRU(channels * (n_mels // 4), hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.features(mel)  # [batch, channels, time, n_mels / 4]
        x = x.permute(0, 2, 1, 3).flatten(start_dim=2)  # [batch, time, channels * n_mels / 4]
        _, h_n = self.gru(x)
        logits: torch.Tensor = self.classifier(h_n[-1])
        return logits
