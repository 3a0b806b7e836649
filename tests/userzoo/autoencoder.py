"""An LSTM autoencoder for multivariate sequences; the encoder alone is what gets deployed."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Sequence ``[batch, seq, n_features]`` -> latent code ``[batch, latent_dim]``."""

    def __init__(self, n_features: int = 6, hidden_dim: int = 32, latent_dim: int = 8) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden_dim, batch_first=True)
        self.to_latent = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(x)
        z: torch.Tensor = self.to_latent(hidden[-1])
        return z


class Decoder(nn.Module):
    """Latent code -> a sequence of ``seq_len`` steps, from the code repeated at every step."""

    def __init__(self, latent_dim: int = 8, hidden_dim: int = 32, n_features: int = 6) -> None:
        super().__init__()
        self.lstm = nn.LSTM(latent_dim, hidden_dim, batch_first=True)
        self.output_layer = nn.Linear(hidden_dim, n_features)

    def forward(self, z: torch.Tensor, seq_len: int) -> torch.Tensor:
        repeated = z.unsqueeze(1).repeat(1, seq_len, 1)
        output, _ = self.lstm(repeated)
        reconstruction: torch.Tensor = self.output_layer(output)
        return reconstruction


class LSTMAutoencoder(nn.Module):
    """Encoder and decoder, trained together on reconstruction."""

    def __init__(self, n_features: int = 6, hidden_dim: int = 32, latent_dim: int = 8) -> None:
        super().__init__()
        self.encoder = Encoder(n_features, hidden_dim, latent_dim)
        self.decoder = Decoder(latent_dim, hidden_dim, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reconstruction: torch.Tensor = self.decoder(self.encoder(x), x.size(1))
        return reconstruction
