"""The bidirectional LSTM classifier of the classic PyTorch tutorial, zero initial states made in forward."""

from __future__ import annotations

import torch
from torch import nn


class BiRNN(nn.Module):
    """Rows of an image (or any sequence) ``[batch, seq, input_size]`` -> class logits from the last step."""

    def __init__(
        self, input_size: int = 28, hidden_size: int = 32, num_layers: int = 2, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(hidden_size * 2, num_classes)  # 2 for bidirection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Set initial states
        h0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size).to(x.device)
        c0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden_size).to(x.device)

        # Forward propagate LSTM
        out, _ = self.lstm(x, (h0, c0))  # out: tensor of shape (batch_size, seq_length, hidden_size*2)

        # Decode the hidden state of the last time step
        logits: torch.Tensor = self.fc(out[:, -1, :])
        return logits
