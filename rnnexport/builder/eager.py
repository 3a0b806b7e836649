"""The PyTorch side: building models and computing reference outputs with eager PyTorch.

:class:`TorchRunner` has the same ``infer(feeds) -> outputs`` signature as the ONNX Runtime runner
in :mod:`rnnexport.runtime`, so comparisons never care which side produced a dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from rnnexport.feeds import Feeds
from rnnexport.spec import ArchConfig, ArchSpec, Contract

__all__ = [
    "Float64Runner",
    "ModuleRunner",
    "TorchRunner",
    "build_model",
    "default_dtype",
    "flatten_outputs",
    "state_dict_to_numpy",
]


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` inside the block, and the previous default restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _widen_plain_tensors(model: torch.nn.Module) -> None:
    """Float tensors kept as plain attributes (not parameters or buffers, which ``.double()`` converts)
    widened to float64 too: a constant matrix stored as ``self.w = torch.randn(...)`` included."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                setattr(module, name, value.double())


def build_model(
    spec: ArchSpec,
    config: ArchConfig,
    *,
    seed: int | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Construct ``spec``'s module in eval mode.

    Weights come from ``state_dict`` when given (strictly: callers check the keys first, see
    :mod:`rnnexport.builder.weights`), otherwise from PyTorch's default initialisation under ``seed``.
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


def flatten_outputs(result: Any) -> list[Any]:
    """A ``forward`` result as a flat list, in order: ``(y, (h_n, c_n))`` -> ``[y, h_n, c_n]``."""
    if isinstance(result, (tuple, list)):
        return [leaf for item in result for leaf in flatten_outputs(item)]
    return [result]


class ModuleRunner:
    """Runs a module (or one of its methods) in eager PyTorch on CPU, in float32.

    Inputs are passed positionally in contract order; the results, flattened (see
    :func:`flatten_outputs`), are keyed by the contract's output names.
    """

    def __init__(self, contract: Contract, call: Callable[..., Any]) -> None:
        self.contract = contract
        self._call = call

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """The flattened results, unchecked (tensors, or whatever the module returned)."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.contract.inputs]
        with torch.inference_mode():
            return flatten_outputs(self._call(*args))

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Outputs keyed by ONNX output name."""
        names = self.contract.output_names
        results = self.run(feeds)
        return {name: t.detach().cpu().numpy() for name, t in zip(names, results, strict=True)}


class TorchRunner(ModuleRunner):
    """Runs an architecture's reference computation.

    ``reference=True`` (the default) calls the method the architecture names as its reference
    (:attr:`ArchSpec.reference`: ``forward``, or an independent formulation of the same function),
    so golden data and verification compare the export against it; ``reference=False`` always
    runs ``forward``. Outputs are keyed by the architecture's output names.
    """

    def __init__(self, spec: ArchSpec, model: torch.nn.Module, *, reference: bool = True) -> None:
        self.spec = spec
        self.model = model
        call = getattr(model, spec.reference) if reference else model
        contract = Contract(spec.inputs, spec.outputs)  # names and order are all a runner reads
        super().__init__(contract, call)


class Float64Runner(ModuleRunner):
    """The same reference computation in float64: the oracle that float32 results are measured against.

    A deep copy of ``model`` is converted with ``.double()`` (the weights are the float32 weights,
    widened exactly; float tensors held as plain attributes too) and ``method`` of it is called;
    float inputs are cast to float64 and integer inputs (lengths, tokens) are passed unchanged. The
    run has float64 as torch's default dtype, so tensors that ``forward`` creates itself
    (``torch.zeros(layers, batch, hidden)`` for an initial state, ``torch.tensor([0.5, 2.0])``) are
    float64 as well. Outputs are float64 unless the model casts them itself.
    """

    def __init__(self, contract: Contract, model: torch.nn.Module, *, method: str = "forward") -> None:
        double = copy.deepcopy(model).double().eval()
        _widen_plain_tensors(double)
        super().__init__(contract, getattr(double, method) if method != "forward" else double)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """The flattened results of one float64 run (torch's default dtype float64 meanwhile)."""
        with default_dtype(torch.float64):
            return super().run(feeds)

    @classmethod
    def for_arch(cls, spec: ArchSpec, model: torch.nn.Module) -> Float64Runner:
        """The float64 twin of ``TorchRunner(spec, model)``: the architecture's reference method."""
        return cls(Contract(spec.inputs, spec.outputs), model, method=spec.reference)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Float64 outputs keyed by ONNX output name."""
        widened = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
        return super().infer(widened)
