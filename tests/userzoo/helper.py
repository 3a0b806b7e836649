"""A few seeded training steps on synthetic data, the same loop for every model of the set."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Step = Callable[[], torch.Tensor]  # one synthetic batch through the model, returning the loss


def train(
    model: nn.Module, loss_of_batch: Step, *, steps: int = 6, lr: float = 1e-2, head: nn.Module | None = None
) -> torch.optim.Optimizer:
    """Train ``model`` (and ``head``, a training-only layer on top of it) for ``steps`` Adam steps.

    ``loss_of_batch`` draws its batch from torch's global generator, which this seeds, so the weights
    are the same on every run. Returns the optimizer (its state goes into training checkpoints) with
    the model left in eval mode.
    """
    torch.manual_seed(0)
    parameters = [*model.parameters(), *(head.parameters() if head is not None else ())]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    model.train()
    for _ in range(steps):
        loss = loss_of_batch()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    return optimizer
