"""User models: importing ``FILE.py:NAME`` or ``package.module:NAME``, building, loading weights,
and checking what the module returns against its I/O description.

Importing a model file runs the user's code (that is the point); checkpoints are still read safely
(:func:`rnnexport.weights.load_state_dict`: safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnexport.errors import UsageError, WeightsError
from rnnexport.safeio import loads_strict, read_bounded
from rnnexport.spec import Contract
from rnnexport.weights import Checkpoint, key_mismatches

__all__ = [
    "ModelSource",
    "check_outputs",
    "instantiate",
    "load_factory",
    "load_user_weights",
    "read_kwargs_file",
    "state_sha256",
]


@dataclass(frozen=True)
class ModelSource:
    """Where a user model came from, as the manifest records it."""

    module: str
    name: str
    kind: str  # "class" or "factory"
    file: str | None = None
    file_sha256: str | None = None

    def to_json(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's ``source`` section."""
        data: dict[str, Any] = {"module": self.module, self.kind: self.name, "config": dict(config)}
        if self.file is not None:
            data["file"] = self.file
            data["file_sha256"] = self.file_sha256
        return data


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"--model {path}: no such file. Pass FILE.py:NAME with the path of your model file.")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    # A module name of its own (registered, so that classes and the export patches can find it).
    name = f"rnnexport_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--model {path}: cannot be imported as Python. Pass a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code failed on import: report it, it is theirs to fix
        del sys.modules[name]
        raise UsageError(
            f"Importing --model file {path} raised {type(exc).__name__}: {exc}. Fix the error in that file "
            "(it runs as a normal Python import)."
        ) from exc
    return module


def load_factory(target: str) -> tuple[Callable[..., Any], ModelSource]:
    """Resolve ``FILE.py:NAME`` or ``package.module:NAME`` to the class or factory it names."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UsageError(
            f"--model {target!r} is not FILE.py:NAME or package.module:NAME. Name the file or module and "
            "the nn.Module class (or factory function) in it, e.g. --model models.py:Tagger."
        )
    file: Path | None = None
    if where.endswith(".py") or "/" in where or "\\" in where:
        file = Path(where)
        module = _import_file(file)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise UsageError(
                f"--model {target}: cannot import module {where!r} ({exc}). Install or add it to PYTHONPATH, "
                "or pass the file path instead (FILE.py:NAME)."
            ) from exc
        except Exception as exc:
            raise UsageError(
                f"Importing --model module {where} raised {type(exc).__name__}: {exc}. Fix the error there."
            ) from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        candidates = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__
        )
        raise UsageError(
            f"--model {target}: {where} has no class or function {name!r}. "
            + (f"nn.Module classes defined there: {', '.join(candidates)}." if candidates else "")
            + " Name an nn.Module subclass or a function that returns one."
        )
    kind = "class" if inspect.isclass(factory) else "factory"
    if kind == "class" and not issubclass(factory, torch.nn.Module):
        raise UsageError(f"--model {target}: {name} is a class but not an nn.Module subclass.")
    source = ModelSource(
        module=module.__name__ if file is None else file.stem,
        name=name,
        kind=kind,
        file=None if file is None else file.name,
        file_sha256=None if file is None else hashlib.sha256(file.read_bytes()).hexdigest(),
    )
    return factory, source


def read_kwargs_file(path: Path) -> dict[str, Any]:
    """``--config`` for a user model: a JSON object of keyword arguments."""
    fix = (
        "Expected a JSON object of the keyword arguments the model class or factory takes, such as "
        '{"hidden_size": 64, "num_layers": 2}.'
    )
    raw = read_bounded(path, limit=1 << 20, what="--config", fix=fix)
    data = loads_strict(raw, what=f"--config {path}", fix=fix)
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path} holds a JSON {type(data).__name__}, expected an object of keyword arguments."
        )
    return data


def instantiate(factory: Callable[..., Any], config: Mapping[str, Any], *, what: str) -> torch.nn.Module:
    """``factory(**config)`` in eval mode; a failure or a non-module result is a :class:`UsageError`."""
    try:
        model = factory(**dict(config))
    except Exception as exc:
        raise UsageError(
            f"Calling {what}(**config) with config {dict(config)} raised {type(exc).__name__}: {exc}. "
            "Give --config a JSON object of the keyword arguments it takes."
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{what}(**config) returned a {type(model).__name__}, expected an nn.Module.")
    return model.eval()


def load_user_weights(
    model: torch.nn.Module, checkpoint: Checkpoint, *, ignore_unexpected: bool = False
) -> Checkpoint:
    """Load ``checkpoint`` (read against ``model``'s keys) into ``model`` strictly; return it as loaded.

    Every missing, unexpected or wrongly shaped key is listed, with the options that would make
    the keys fit where some would (see :meth:`Checkpoint.advice`). ``ignore_unexpected`` leaves
    out the keys the model does not have (the returned checkpoint records them); missing keys stay
    an error. Each tensor's dtype is checked against the model's own parameter or buffer of that
    name, so BatchNorm's int64 ``num_batches_tracked`` loads as saved.
    """
    own = model.state_dict()
    fitted = checkpoint.fitted(own, ignore_unexpected=ignore_unexpected)
    expected = {k: tuple(v.shape) for k, v in own.items()}
    parts, _, _ = key_mismatches(expected, fitted.shapes, limit=8)
    if parts:
        advice = fitted.advice(ignore_unexpected=ignore_unexpected)
        raise WeightsError(
            f"The weights in {fitted.origin} do not fit the model: "
            + ". ".join(parts)
            + "."
            + (
                advice
                or " Check that the checkpoint was saved from this model class with the same --config "
                "(its sizes)."
            )
        )
    model.load_state_dict(fitted.load(), strict=True)
    return fitted


def state_sha256(model: torch.nn.Module) -> str:
    """A digest of the model's weights (names, shapes, dtypes and bytes), for the manifest."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{key}:{array.dtype}:{list(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_outputs(contract: Contract, results: list[Any], sizes: Mapping[str, int], *, what: str) -> None:
    """Raise :class:`UsageError` unless the flattened ``results`` fit the declared outputs.

    ``sizes`` are the input axes' sizes of the call (``batch``, ``seq``, ...). Output axes with other
    names may take any size, the same wherever the name recurs.
    """
    declared = contract.outputs
    shapes = [list(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in results]
    fix = "Declare the outputs forward returns, in order (a nested tuple counts leaf by leaf)."
    if len(results) != len(declared) or not all(isinstance(r, torch.Tensor) for r in results):
        raise UsageError(
            f"{what}.forward returned {len(results)} value(s) {shapes}, the I/O description declares "
            f"{len(declared)} output(s) {[t.shape_str() for t in declared]}. {fix}"
        )
    seen = dict(sizes)
    for spec, tensor in zip(declared, results, strict=True):
        dtype = str(tensor.dtype).removeprefix("torch.")
        problem = None
        if dtype != spec.dtype:
            problem = f"dtype {dtype}"
        elif tensor.dim() != len(spec.shape):
            problem = f"rank {tensor.dim()}"
        else:
            for axis, (want, got) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
                expected = want if isinstance(want, int) else seen.setdefault(want, int(got))
                if expected != got:
                    problem = f"size {got} on axis {axis} (expected {expected})"
                    break
        if problem:
            raise UsageError(
                f"{what}.forward's output '{spec.name}' has shape {list(tensor.shape)} and {problem}, "
                f"but the I/O description declares {spec.shape_str()} (inputs: {dict(sizes)}). Correct "
                "the output's entry in the description, or the model."
            )
