"""Train the keyword spotter on synthetic clips and save its weights (``python train_entry.py --out kws.pt``).

The model lives in the file beside this one and is imported as a sibling, as a script does.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from kws import KWSCRNN  # type: ignore[import-not-found]  # the sibling file, found from this script's folder


def synthetic_clips(batch: int, frames: int, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise clips whose label shifts energy into a band of mel bins."""
    labels = torch.randint(0, n_classes, (batch,))
    mel = torch.randn(batch, 1, frames, 40)
    for row, label in enumerate(labels.tolist()):
        mel[row, 0, :, 3 * label : 3 * label + 3] += 2.0
    return mel, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="kws.pt")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = KWSCRNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(args.steps):
        mel, labels = synthetic_clips(batch=16, frames=30, n_classes=12)
        loss = F.cross_entropy(model(mel), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
