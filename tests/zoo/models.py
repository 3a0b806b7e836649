"""User-style models, written as their authors would: plain PyTorch, nothing rnnexport-specific.

Each is small (hidden <= 64) so the zoo runs quickly; ``tests/test_zoo.py`` builds every one with
``--model`` and checks the artifact against the module run eagerly (packed where it packs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class VariableLengthManyToManyLSTM(nn.Module):
    """Reference article 003, example 2, as written there (batch_first=True, enforce_sorted=False).

    ``pad_packed_sequence`` without ``total_length``: the output has ``max(lengths)`` steps.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super(VariableLengthManyToManyLSTM, self).__init__()  # noqa: UP008 - the article's spelling
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor, seq_lengths: torch.Tensor) -> torch.Tensor:
        packed_input = nn.utils.rnn.pack_padded_sequence(
            x, seq_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_output, _ = self.lstm(packed_input)
        output, _ = nn.utils.rnn.pad_packed_sequence(packed_output, batch_first=True)
        output = self.fc(output)
        return output  # type: ignore[no-any-return]  # noqa: RET504 - as the article writes it


class Tagger(nn.Module):
    """Embedding(1000, 32) -> 2-layer bidirectional GRU (hidden 64) over packed tokens -> Linear(128, 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(1000, 32)
        self.gru = nn.GRU(32, 64, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(128, 9)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        encoded, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(encoded, batch_first=True, total_length=tokens.shape[1])
        logits: torch.Tensor = self.out(padded)
        return logits


class Forecaster(nn.Module):
    """A 3-layer LSTM over packed series, many-to-one from ``h_n[-1]``; also returns the final states."""

    def __init__(self, features: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=3, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(
        self, series: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(series, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, c_n) = self.lstm(packed)
        return self.head(h_n[-1]), h_n, c_n


def stateful_lstm(input_size: int = 6, hidden_size: int = 24) -> nn.Module:
    """A factory: an LSTM with explicit ``(x, h0, c0) -> (y, h_n, c_n)``."""
    return StatefulLSTM(input_size, hidden_size)


class StatefulLSTM(nn.Module):
    """``(x, h0, c0) -> (y, (h_n, c_n))``: initial states are inputs with a dynamic batch."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=2, batch_first=True)

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, (h_n, c_n) = self.lstm(x, (h0, c0))
        return y, (h_n, c_n)


class ConvGRU(nn.Module):
    """Time-major: ``x[seq, batch, 6]`` -> Conv1d front end -> GRU(batch_first=False) -> per-step head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, kernel_size=3, padding=1)
        self.gru = nn.GRU(16, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x.permute(1, 2, 0)))  # [batch, 16, seq]
        out, _ = self.gru(features.permute(2, 0, 1))  # [seq, batch, 32]
        y: torch.Tensor = self.head(out)
        return y


class DropoutRNN(nn.Module):
    """A 2-layer tanh ``nn.RNN`` with dropout between the layers (inactive in eval mode), plus a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(8, 24, num_layers=2, dropout=0.3, batch_first=True)
        self.skip = nn.Linear(8, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        y: torch.Tensor = self.head(out + self.skip(x))
        return y


class CellLoop(nn.Module):
    """An ``nn.LSTMCell`` stepped by a Python loop: the trace unrolls it at the example length."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(5, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], 16)
        c = x.new_zeros(x.shape[0], 16)
        steps = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            steps.append(h)
        return torch.stack(steps, dim=1)


class PooledClassifier(nn.Module):
    """Packed bidirectional LSTM with projections and no biases, LayerNorm, masked softmax pooling,
    and extra per-row features concatenated before the head. Also returns the encoder's padded output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, bidirectional=True, proj_size=6, bias=False, batch_first=True)
        self.norm = nn.LayerNorm(12)
        self.score = nn.Linear(12, 1)
        self.head = nn.Linear(12 + 3, 4)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, extra: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        encoded, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        keys = self.norm(encoded)
        valid = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        scores = self.score(keys).squeeze(2).masked_fill(~valid, torch.finfo(x.dtype).min)
        pooled = (torch.softmax(scores, dim=1).unsqueeze(2) * keys).sum(dim=1)
        return self.head(torch.cat([pooled, extra], dim=1)), encoded


class ManualLoop(nn.Module):
    """A hand-written recurrence stepped by a Python loop, no cell module: nothing to count, and no
    tensor value read; the trace still unrolls it, so the sequence axis freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(5 + 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], 16)
        steps = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.step(torch.cat([x[:, t], h], dim=1)))
            steps.append(h)
        return torch.stack(steps, dim=1)
