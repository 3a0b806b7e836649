"""Reading user checkpoints safely and fitting them to an architecture, strictly.

Two formats: safetensors (preferred: plain tensors, no code) and PyTorch ``state_dict`` files,
which are pickles. Those are read with ``torch.load(weights_only=True)`` and nothing else: passing
the argument explicitly means ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot loosen it, and the
restricted unpickler refuses any global it does not know (a class, ``os.system``, ...) before
calling it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from rnnexport.errors import UsageError, WeightsError
from rnnexport.reference import build_model
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = ["check_state_dict", "load_state_dict"]

_SAVE_HINT = (
    "Save only the weights: safetensors.torch.save_file(model.state_dict(), 'model.safetensors') "
    "(preferred) or torch.save(model.state_dict(), 'model.pt')."
)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # SafetensorError, OSError, ValueError: all mean "not a usable file"
        raise WeightsError(
            f"Cannot read {path} as safetensors: {exc}. Expected a complete safetensors file; it looks "
            f"truncated or corrupt. Save it again with safetensors.torch.save_file(model.state_dict(), ...)."
        ) from exc


def _load_pickle(path: Path) -> object:
    try:
        # torch warns about pickle protocols it may not fully support; failures surface as exceptions.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            what = (
                f"asks to import {found.group(1)}: a whole pickled module, or some other object whose "
                "unpickling could run code"
            )
        else:
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", str(exc))
            refused = detail.group(1).strip() if detail else "an instruction it does not allow"
            what = (
                f"holds something other than plain tensors (the restricted unpickler refused: {refused}), "
                "which could run code if loaded without restriction"
            )
        raise WeightsError(
            f"Refused to load {path}: expected a state_dict of tensors, but the file {what}. "
            f"Nothing in it was executed. {_SAVE_HINT}"
        ) from None
    except Exception as exc:  # zip/pickle corruption: RuntimeError, EOFError, ...
        raise WeightsError(
            f"Cannot read {path} as a PyTorch state_dict: {type(exc).__name__}: {exc}. Expected a file "
            f"written by torch.save(model.state_dict(), ...); it looks truncated or corrupt. {_SAVE_HINT}"
        ) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a flat ``{name: tensor}`` dict, safely; raise :class:`WeightsError` otherwise.

    ``.safetensors`` files are read as safetensors; anything else as a ``torch.save`` pickle with the
    restricted unpickler. A ``{"state_dict": {...}}`` wrapper is unwrapped. Non-finite weights are
    refused: a NaN in a checkpoint makes every comparison meaningless.
    """
    if not path.is_file():
        raise UsageError(
            f"Weights file {path} does not exist (or is not a file). Pass the path of a checkpoint."
        )
    loaded = _load_safetensors(path) if path.suffix == ".safetensors" else _load_pickle(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"{path} holds a {type(loaded).__name__}, expected a state_dict (name -> tensor). {_SAVE_HINT}"
        )
    not_tensors = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise WeightsError(
            f"{path} is not a plain state_dict: entries {not_tensors[:8]} are not tensors. {_SAVE_HINT}"
        )
    state = {str(k): v for k, v in loaded.items()}
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise WeightsError(
            f"{path} holds NaN or infinite values in {bad}. Expected finite weights; the model cannot be "
            "verified with them. Check the training run that produced this checkpoint."
        )
    return state


def check_state_dict(
    spec: ArchSpec, config: ArchConfig, state: Mapping[str, torch.Tensor], *, origin: str
) -> None:
    """Raise :class:`WeightsError` listing every missing, unexpected and wrongly shaped key."""
    expected = {k: tuple(v.shape) for k, v in build_model(spec, config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [f"{k} {list(s)}" for k, s in expected.items() if k not in got]
    unexpected = [f"{k} {list(s)}" for k, s in got.items() if k not in expected]
    wrong = [
        f"{k}: expected {list(expected[k])}, got {list(s)}"
        for k, s in got.items()
        if k in expected and s != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(items)}): " + "; ".join(items)
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        sizes = ", ".join(f"{k}={v}" for k, v in config.subset(spec.sizes).items())
        matching = _architectures_with_keys(got)
        if spec.name in matching:  # the right architecture, other sizes
            read = ", ".join(f"{k}={v}" for k, v in spec.infer_sizes(got).items())
            hint = f" The key names fit '{spec.name}'; the checkpoint's shapes say {read}."
        elif matching:
            hint = (
                f" The keys look like weights of {', '.join(map(repr, matching))}: try --arch {matching[0]}."
            )
        else:
            hint = ""
        raise WeightsError(
            f"The weights in {origin} do not fit '{spec.name}' with {sizes}. "
            + ". ".join(parts)
            + "."
            + hint
            + " Check that the checkpoint was trained with this architecture, and pass the sizes "
            "it was trained with (--config or --input-size/--hidden-size/--output-size/--branches)."
        )


def _key_pattern(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(re.sub(r"\.\d+\.", ".{i}.", k) for k in keys)


def _architectures_with_keys(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Registered architectures whose state-dict key names (branch indices aside) match these."""
    from rnnexport.registry import list_architectures

    pattern = _key_pattern(shapes)
    return [
        s.name
        for s in list_architectures()
        if _key_pattern(build_model(s, ArchConfig()).state_dict()) == pattern
    ]
