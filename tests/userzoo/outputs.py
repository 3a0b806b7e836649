"""Models that return structured outputs: a dict, a NamedTuple and a dataclass, as libraries do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class SpeakerGRU(nn.Module):
    """Frames -> per-step speaker logits and the final hidden state, returned as a dict."""

    def __init__(self, n_features: int = 10, hidden: int = 20, n_speakers: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, n_speakers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        output, hidden = self.gru(x)
        return {"logits": self.head(output), "hidden": hidden}


class TaggerOutput(NamedTuple):
    """What :class:`NamedTupleTagger` returns."""

    emissions: torch.Tensor
    final_state: torch.Tensor


class NamedTupleTagger(nn.Module):
    """Frames -> per-step emission scores and the last layer's final state, as a NamedTuple."""

    def __init__(self, n_features: int = 10, hidden: int = 20, n_tags: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True)
        self.emit = nn.Linear(hidden, n_tags)

    def forward(self, x: torch.Tensor) -> TaggerOutput:
        output, (h_n, _) = self.lstm(x)
        return TaggerOutput(emissions=self.emit(output), final_state=h_n[-1])


@dataclass
class EncoderOutput:
    """What :class:`DataclassEncoder` returns, in the style of library model outputs."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


class DataclassEncoder(nn.Module):
    """Frames -> every step's hidden state and a mean-pooled summary, as a dataclass."""

    def __init__(self, n_features: int = 10, hidden: int = 20) -> None:
        super().__init__()
        self.rnn = nn.RNN(n_features, hidden, batch_first=True, nonlinearity="tanh")
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        output, _ = self.rnn(x)
        return EncoderOutput(
            last_hidden_state=output, pooler_output=torch.tanh(self.pooler(output.mean(dim=1)))
        )
