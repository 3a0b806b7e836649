"""The PyTorch side: building models and computing reference outputs with eager PyTorch.

:class:`TorchRunner` has the same ``infer(feeds) -> outputs`` signature as the ONNX Runtime runner
in :mod:`rnnexport.runtime`, so comparisons never care which side produced a dict.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch

from rnnexport.feeds import Feeds
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = ["Float64Runner", "TorchRunner", "build_model", "state_dict_to_numpy"]


def build_model(
    spec: ArchSpec,
    config: ArchConfig,
    *,
    seed: int | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Construct ``spec``'s module in eval mode.

    Weights come from ``state_dict`` when given (strictly: callers check the keys first, see
    :mod:`rnnexport.weights`), otherwise from PyTorch's default initialisation under ``seed``.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = spec.build_model(config)
    if state_dict is not None:
        model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()


def state_dict_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as contiguous float32 numpy arrays, keyed by state-dict name."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


class TorchRunner:
    """Runs an architecture's reference computation in eager PyTorch on CPU, in float32.

    For masked architectures the reference is ``forward_packed`` (the article's packed formulation),
    so every comparison of an exported model is against an independent computation of the same
    function; for the rest it is ``forward``. ``reference=False`` runs ``forward`` in every case.
    """

    def __init__(self, spec: ArchSpec, model: torch.nn.Module, *, reference: bool = True) -> None:
        self.spec = spec
        self.model = model
        packed = getattr(model, "forward_packed", None) if reference and spec.masked else None
        self._call = packed if packed is not None else model

    @torch.inference_mode()
    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Outputs keyed by ONNX output name."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.spec.inputs]
        result = self._call(*args)
        names = [t.name for t in self.spec.outputs]
        tensors = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        return {name: t.detach().cpu().numpy() for name, t in zip(names, tensors, strict=True)}


class Float64Runner(TorchRunner):
    """The same reference computation in float64: the oracle that float32 results are measured against.

    A deep copy of ``model`` is converted with ``.double()`` (the weights are the float32 weights,
    widened exactly), float inputs are cast to float64 and integer inputs (``lengths``) are passed
    unchanged. Outputs are float64.
    """

    def __init__(self, spec: ArchSpec, model: torch.nn.Module, *, reference: bool = True) -> None:
        super().__init__(spec, copy.deepcopy(model).double().eval(), reference=reference)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Float64 outputs keyed by ONNX output name."""
        widened = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
        return super().infer(widened)
