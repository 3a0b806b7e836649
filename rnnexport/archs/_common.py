"""Small pieces the architecture families share."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["count_indexed", "valid_steps"]


def valid_steps(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean mask ``[batch, seq]``: True where step ``t < lengths[b]``.

    Built from ``arange`` over the runtime sequence length, so it traces to ONNX ``Range`` on a
    ``Shape`` and follows the dynamic sequence axis instead of freezing the trace length.
    """
    steps = torch.arange(seq_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def count_indexed(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct indices ``i`` fill ``pattern`` (like ``lstms.{i}.weight_ih_l0``) among the keys."""
    regex = re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$")
    return len({m.group(1) for key in shapes if (m := regex.match(key))})
