"""Reading checkpoint files safely: what each tensor is, and its data only once asked for.

Two formats: safetensors (preferred: plain tensors, no code) and PyTorch ``state_dict`` files,
which are pickles. Those are read with ``torch.load(weights_only=True)`` and nothing else: passing
the argument explicitly means ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot loosen it, and the
restricted unpickler refuses any global it does not know (a class, ``os.system``, ...) before
calling it. A safetensors file is described from its JSON header alone
(:func:`read_safetensors_header`); its data is read by :func:`read_safetensors` once the
checkpoint is known to fit. A pickle's candidate state dicts are its top-level mappings of names to
tensors (:func:`tensor_mappings`).

Every key from a file is quoted with ``repr()`` in messages (:func:`quoted`): a key may hold
control characters, and nothing raw from a file may reach the terminal.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnexport.errors import UsageError, WeightsError

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "SAVE_HINT",
    "TensorInfo",
    "dtype_name",
    "first_items",
    "load_pickle",
    "quoted",
    "read_safetensors",
    "read_safetensors_header",
    "require_file",
    "tensor_mappings",
]

SAVE_HINT = (
    "Save only the weights: safetensors.torch.save_file(model.state_dict(), 'model.safetensors') "
    "(preferred) or torch.save(model.state_dict(), 'model.pt')."
)


# A header describes names, dtypes and shapes only: a few kB for these architectures, a few MB for
# the largest public models. Anything bigger is not a checkpoint we should parse.
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024

# safetensors dtype code -> (torch dtype name, bytes per element).
_SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "C64": ("complex64", 8),
}


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says one tensor is, known before (safetensors) or without reading its data.

    ``problem`` says why the tensor cannot be used as a weight whatever its dtype (sparse, on the
    meta device, quantized), or is ``None``.
    """

    dtype: str
    shape: tuple[int, ...]
    problem: str | None = None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorInfo:
        """Describe an in-memory tensor (from a pickled checkpoint)."""
        problem = None
        if tensor.layout != torch.strided:
            problem = f"sparse ({str(tensor.layout).removeprefix('torch.')})"
        elif tensor.device.type == "meta":
            problem = "on the meta device (a shape without data)"
        elif tensor.is_quantized:
            problem = f"quantized ({str(tensor.dtype).removeprefix('torch.')})"
        return cls(str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), problem)


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: a dtype as :class:`TensorInfo` and messages name it."""
    return str(dtype).removeprefix("torch.")


def quoted(items: Iterable[str], limit: int = 6) -> str:
    """``'a', 'b', 'c' and 4 more``: names from a file, escaped, and never a wall of text."""
    return ", ".join(first_items([repr(i) for i in items], limit))


def first_items(items: Iterable[str], limit: int = 8) -> list[str]:
    """The first ``limit`` items, then ``"and K more"`` if any were left out."""
    items = list(items)
    return items[:limit] + ([f"and {len(items) - limit} more"] if len(items) > limit else [])


def _visible(text: str, limit: int = 300) -> str:
    """A library's message, which may quote bytes of the file: control characters made visible."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit].rstrip(" .,;") + " [...]"


def require_file(path: Path) -> None:
    """Raise :class:`UsageError` unless ``path`` is a file that can be looked up."""
    try:
        is_file = path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise UsageError(
            f"Weights file {path} cannot be looked up: {exc.strerror}. Pass the path of a checkpoint."
        ) from None
    if not is_file:
        raise UsageError(
            f"Weights file {path} does not exist (or is not a file). Pass the path of a checkpoint."
        )


def _corrupt_safetensors(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"Cannot read {path} as safetensors: {detail}. Expected a complete safetensors file; it looks "
        f"truncated or corrupt. Save it again with safetensors.torch.save_file(model.state_dict(), ...)."
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes from a safetensors header: an 8-byte little-endian length, then JSON.

    Reads at most :data:`MAX_SAFETENSORS_HEADER` bytes and no tensor data, so a multi-gigabyte file
    with a wrong shape is refused at once. Offsets are checked against the file's size.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise _corrupt_safetensors(path, f"it has {size} bytes, fewer than the 8 of a header length")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_SAFETENSORS_HEADER:
                raise _corrupt_safetensors(
                    path, f"its header claims {length} bytes, more than the {MAX_SAFETENSORS_HEADER} accepted"
                )
            if 8 + length > size:
                raise _corrupt_safetensors(
                    path, f"its header claims {length} bytes, but only {size - 8} follow the length"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise WeightsError(
            f"Cannot read {path}: {exc.strerror}. Check the file and its permissions."
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt_safetensors(path, f"its header is not valid JSON ({_visible(str(exc))})") from None
    if not isinstance(header, dict):
        raise _corrupt_safetensors(path, f"its header is a JSON {type(header).__name__}, not an object")
    data_bytes = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _corrupt_safetensors(path, f"the header entry {name!r} is not a tensor description")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _SAFETENSORS_DTYPES:
            raise _corrupt_safetensors(
                path,
                f"{name!r} has the dtype code {code!r}, which is none of {', '.join(_SAFETENSORS_DTYPES)}",
            )
        if not (isinstance(shape, list) and all(_whole(d) for d in shape)):
            raise _corrupt_safetensors(path, f"{name!r} has the shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets)):
            raise _corrupt_safetensors(path, f"{name!r} has the data offsets {offsets!r}, not [begin, end]")
        dtype, itemsize = _SAFETENSORS_DTYPES[code]
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        if not begin <= end <= data_bytes or end - begin != numel * itemsize:
            raise _corrupt_safetensors(
                path,
                f"{name!r} ({dtype} {shape}, {numel * itemsize} bytes) claims bytes {begin}-{end} of a data "
                f"section of {data_bytes}",
            )
        tensors[name] = TensorInfo(dtype, tuple(shape))
    if not tensors:
        raise _corrupt_safetensors(path, "its header lists no tensors")
    return tensors


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors file, in their stored dtype; :class:`WeightsError` if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in names}
    except Exception as exc:  # SafetensorError, OSError, ValueError: all mean "not a usable file"
        raise WeightsError(
            f"Cannot read {path} as safetensors: {_visible(str(exc))}. Expected a complete safetensors "
            "file; it looks truncated or corrupt. Save it again with "
            "safetensors.torch.save_file(model.state_dict(), ...)."
        ) from None


def load_pickle(path: Path) -> object:
    """A PyTorch checkpoint, loaded with ``torch.load(weights_only=True)``; :class:`WeightsError` for
    anything the restricted unpickler refuses or cannot read, saying why."""
    try:
        # torch warns about pickle protocols it may not fully support; failures surface as exceptions.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            what = (
                f"asks to import {found.group(1)}, which torch.load(weights_only=True) does not allow: "
                "unpickling such an object could run code. That is a whole pickled module, or a training "
                "checkpoint that pickles objects of its own besides tensors, numbers, strings and "
                "containers (hyperparameters as argparse.Namespace or AttributeDict, paths, numpy values, "
                "callbacks). If you trust the file, take the weights out of it in Python, e.g. "
                f"torch.save(torch.load('{path.name}', weights_only=False)['state_dict'], 'model.pt') "
                "with the entry that holds them"
            )
        else:
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", str(exc))
            refused = _visible(detail.group(1).strip()) if detail else "an instruction it does not allow"
            what = (
                f"holds something other than plain tensors (the restricted unpickler refused: {refused}), "
                "which could run code if loaded without restriction"
            )
        raise WeightsError(
            f"Refused to load {path}: expected a state_dict of tensors, but the file {what}. "
            f"Nothing in it was executed. {SAVE_HINT}"
        ) from None
    except Exception as exc:  # zip/pickle corruption: RuntimeError, EOFError, ...
        raise WeightsError(
            f"Cannot read {path} as a PyTorch state_dict: {type(exc).__name__}: {_visible(str(exc))}. "
            "Expected a file written by torch.save(model.state_dict(), ...); it looks truncated or "
            f"corrupt. {SAVE_HINT}"
        ) from None


def tensor_mappings(
    path: Path, loaded: object, state_dict_key: str | None
) -> tuple[dict[str | None, dict[str, torch.Tensor]], list[str]]:
    """The state-dict candidates in a pickled checkpoint, and the names of its top-level entries.

    The file itself is a candidate when it is a mapping of names to tensors; otherwise each
    top-level entry that is one (``state_dict``, ``model_state_dict``, ``model``, an EMA copy, ...).
    An optimizer state is not: its ``state`` is keyed by parameter number. ``state_dict_key`` must
    name one of them; all are returned, so that a mismatch can say which entry would fit.
    """
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"{path} holds a {type(loaded).__name__}, expected a state_dict (name -> tensor). {SAVE_HINT}"
        )
    if _is_tensor_mapping(loaded):
        if state_dict_key is not None:
            raise UsageError(
                f"--state-dict-key {state_dict_key!r} does not apply to {path}: the file is itself a state "
                "dict (every entry is a tensor). Drop --state-dict-key."
            )
        return {None: {str(k): v for k, v in loaded.items()}}, []
    entries = [k for k in loaded if isinstance(k, str)]
    found = {k: {str(n): t for n, t in loaded[k].items()} for k in entries if _is_tensor_mapping(loaded[k])}
    if state_dict_key is not None and state_dict_key not in found:
        what = (
            f"its entry {state_dict_key!r} holds a {type(loaded[state_dict_key]).__name__}, not a "
            "mapping of names to tensors"
            if state_dict_key in entries
            else f"it has no entry {state_dict_key!r}"
        )
        raise UsageError(
            f"--state-dict-key {state_dict_key!r} does not name a state dict in {path}: {what}. "
            + (
                f"Entries that are state dicts: {quoted(sorted(found))}."
                if found
                else f"None of its entries ({quoted(sorted(entries))}) is a state dict."
            )
        )
    if not found:
        not_tensors = sorted(repr(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
        raise WeightsError(
            f"{path} is not a plain state_dict and holds none: entries {', '.join(first_items(not_tensors))} "
            "are not tensors, and no entry is a mapping of names to tensors (such as 'state_dict', "
            f"'model_state_dict' or 'model'). {SAVE_HINT}"
        )
    return {k: v for k, v in found.items()}, entries  # widen the key type to str | None


def _is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )
