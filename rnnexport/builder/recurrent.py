"""The recurrent layers an export stands in for, and the padded batch their packing stand-ins pass on.

Shared by the export rewrites (:mod:`rnnexport.builder.patch`) and the streaming hooks
(:mod:`rnnexport.builder.patch_streaming`): both recognise ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
modules, and a packed batch in its export form. No private torch API is used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["RECURRENT_LAYERS", "PaddedBatch", "recurrent_base_class"]

# The layer classes whose forward an export replaces (their subclasses inherit the replacement).
RECURRENT_LAYERS: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)


@dataclass(frozen=True)
class PaddedBatch:
    """What ``pack_padded_sequence`` returns during an export: a padded batch and its row lengths.

    ``data`` is time-major ``[seq, batch, features]``; a recurrent layer's output keeps zeros on each
    row's padded steps (ONNX recurrent ops write zeros past ``sequence_lens``).
    """

    data: torch.Tensor
    lengths: torch.Tensor


def recurrent_base_class(module: nn.Module) -> type[nn.Module]:
    """The one of :data:`RECURRENT_LAYERS` that ``module`` is an instance of."""
    for cls in RECURRENT_LAYERS:
        if isinstance(module, cls):
            return cls
    raise TypeError(f"{type(module).__name__} is not an nn.LSTM, nn.GRU or nn.RNN")
