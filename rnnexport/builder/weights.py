"""Reading user checkpoints safely and fitting them to the model they load into, strictly.

Two formats: safetensors (preferred: plain tensors, no code) and PyTorch ``state_dict`` files,
which are pickles. Those are read with ``torch.load(weights_only=True)`` and nothing else: passing
the argument explicitly means ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot loosen it, and the
restricted unpickler refuses any global it does not know (a class, ``os.system``, ...) before
calling it.

Reading happens in two steps, so that nothing big is loaded before it is known to fit:

1. :func:`read_checkpoint` finds the state dict and what every tensor *is* (name, dtype, shape).
   For safetensors that is the file's JSON header alone; no tensor data is read. It unwraps
   training checkpoints (``{"state_dict": ...}``, ``{"model_state_dict": ..., "optimizer_...":
   ...}``, ``{"model": ...}``) and strips a key prefix (``module.`` from DataParallel/DDP,
   ``model.`` from Lightning, both, ``encoder.`` for one part of a bigger model) from the keys that
   carry it when exactly one choice fits the expected key names best, and says what it did. The
   expected names are a :class:`KeyTarget`: a user module's own (with shapes) or an architecture's.
2. The checkpoint is :meth:`Checkpoint.fitted` to the model (its dtypes; with
   ``--ignore-unexpected-keys``, keys the model lacks are left out) and its names and shapes are
   checked (:func:`fit_to_arch`, :func:`rnnexport.builder.usermodel.load_user_weights`); a mismatch names
   the options that would fit (:meth:`Checkpoint.advice`). Then :meth:`Checkpoint.load` refuses
   what cannot be those weights (integer, boolean or complex values where the model has floats;
   sparse, meta or quantized tensors), reads the data, casts floats to float32 (integer buffers
   the model declares, such as BatchNorm's ``num_batches_tracked``, stay as saved) and checks that
   the float32 values are finite.

Every key from a file is quoted with ``repr()`` in messages: a key may hold control characters,
and nothing raw from a file may reach the terminal.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
import struct
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnexport.builder.reference import build_model
from rnnexport.errors import UsageError, WeightsError
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "Checkpoint",
    "KeyTarget",
    "TensorInfo",
    "check_state_dict",
    "fit_to_arch",
    "load_state_dict",
    "read_checkpoint",
]

_SAVE_HINT = (
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

# float32 and narrower floats become float32 exactly; float64 is rounded (and may overflow to inf).
_UPCAST_EXACT = frozenset(
    {"float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"}
)
_FLOATING = _UPCAST_EXACT | {"float32", "float64"}

_RNN_KEY = re.compile(
    r"^(?P<module>.+)\.(?:weight|bias)_(?P<kind>ih|hh|hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


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


@dataclass(frozen=True)
class KeyTarget:
    """The state-dict keys a checkpoint must give once unwrapped and its prefix stripped.

    One mechanism for both kinds of model. An architecture's target (:meth:`of_arch`) holds its
    key names with branch indices generalised (``lstms.{i}.weight_ih_l0``: any branch count fits)
    and no shapes, since its sizes are read off the checkpoint. A built module's target
    (:meth:`of_module`) holds the module's own names, shapes and dtypes.
    """

    label: str  # for messages: "'many-to-many'", "the model 'Encoder'"
    names: frozenset[str]
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)
    generalise: bool = False

    @classmethod
    def of_arch(cls, spec: ArchSpec) -> KeyTarget:
        """An architecture's key names, at any sizes and branch count."""
        return cls(
            repr(spec.name), _key_pattern(build_model(spec, ArchConfig()).state_dict()), generalise=True
        )

    @classmethod
    def of_module(cls, module: torch.nn.Module, label: str | None = None) -> KeyTarget:
        """A module's own state-dict keys, with their shapes and dtypes."""
        state = module.state_dict()
        return cls(
            label or f"the model {type(module).__name__!r}",
            frozenset(state),
            {k: tuple(v.shape) for k, v in state.items()},
            {k: _dtype_name(v.dtype) for k, v in state.items()},
        )

    def normal(self, name: str) -> str:
        """``name`` as it is compared with :attr:`names`."""
        return _generalise(name) if self.generalise else name

    def fit(self, infos: Mapping[str, TensorInfo], prefix: str) -> tuple[int, int] | None:
        """How well the keys fit once ``prefix`` is stripped from those that carry it.

        ``(names given, of those with the expected shape)``; ``None`` when stripping would make
        two keys one (or a key empty).
        """
        seen: set[str] = set()
        given: set[str] = set()
        shaped = 0
        for key, info in infos.items():
            name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
            if not name or name in seen:
                return None
            seen.add(name)
            normal = self.normal(name)
            if normal in self.names and normal not in given:
                given.add(normal)
                shaped += self.shapes.get(name) == info.shape
        return len(given), shaped

    def prefixes(self, keys: Iterable[str]) -> list[str]:
        """``""`` and the dot-terminated key prefixes whose removal leaves one of the expected names.

        Not only prefixes every key shares: an autoencoder's ``encoder.`` leaves ``decoder.*`` as
        it is. At most :data:`_MAX_PREFIXES`, those that leave the most names first.
        """
        hits: dict[str, int] = {}
        for key in keys:
            for dot in re.finditer(r"\.", key):
                rest = key[dot.end() :]
                if rest and self.normal(rest) in self.names:
                    hits[key[: dot.end()]] = hits.get(key[: dot.end()], 0) + 1
        ranked = sorted(hits, key=lambda p: (-hits[p], p))[:_MAX_PREFIXES]
        return ["", *ranked]


# Enough for any wrapper nesting; a checkpoint with more candidate prefixes than this has its
# best-matching ones tried.
_MAX_PREFIXES = 64


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's state dict, described but not yet loaded (see :func:`read_checkpoint`).

    ``tensors`` is keyed by the names the model sees (prefix stripped); ``entry`` is the
    checkpoint entry that held the state dict (``None``: the file is the state dict) and
    ``prefix`` what was stripped from the keys that had it. :meth:`fitted` adds what the model
    declares (its dtypes) and may leave unexpected keys out; :meth:`load` reads the data.
    """

    path: Path
    tensors: dict[str, TensorInfo]
    # Name the model sees -> key as stored in the file.
    stored_keys: dict[str, str]
    # Reads the named tensors (stored keys) in their stored dtype.
    read: Callable[[list[str]], dict[str, torch.Tensor]] = field(repr=False)
    entry: str | None = None
    prefix: str = ""
    ignored_entries: tuple[str, ...] = ()
    # What the keys were fitted against, and every state dict the file holds (entry -> stored
    # key -> info), so that a mismatch can say which options would have fitted.
    target: KeyTarget | None = field(default=None, repr=False)
    candidates: Mapping[str | None, Mapping[str, TensorInfo]] = field(default_factory=dict, repr=False)
    # The model's dtype for each of its keys (from :meth:`fitted`): a key the model declares
    # non-floating (BatchNorm's int64 num_batches_tracked) loads as saved, not as float32.
    model_dtypes: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Stored keys left out with --ignore-unexpected-keys.
    ignored_keys: tuple[str, ...] = ()

    @property
    def stripped(self) -> int:
        """How many keys lost the prefix (those left out included)."""
        loaded = sum(name != key for name, key in self.stored_keys.items())
        return loaded + sum(1 for key in self.ignored_keys if self.prefix and key.startswith(self.prefix))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape, what sizes are read off and fitted against."""
        return {k: v.shape for k, v in self.tensors.items()}

    @property
    def origin(self) -> str:
        """The file, and how its state dict was found, for messages: ``m.pt (entry 'model', ...)``."""
        how = []
        if self.entry is not None:
            how.append(f"entry {self.entry!r}")
        if self.prefix:
            how.append(f"prefix {self.prefix!r} stripped")
        return f"{self.path}" + (f" ({', '.join(how)})" if how else "")

    @property
    def source_dtypes(self) -> dict[str, int]:
        """How many tensors the checkpoint stores in each dtype."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def kept_as_saved(self) -> dict[str, str]:
        """Name -> dtype of the tensors that load in their own dtype: the model declares them so."""
        return {
            name: info.dtype
            for name, info in self.tensors.items()
            if _kind(self.model_dtypes.get(name, "float32")) != "float" and _kind(info.dtype) != "float"
        }

    @property
    def notes(self) -> list[str]:
        """What was done to the checkpoint on the way in, for the build output."""
        notes = []
        if self.entry is not None:
            note = f"used entry {self.entry!r} of the checkpoint"
            if self.ignored_entries:
                note += f" (ignored: {_quoted(self.ignored_entries)})"
            notes.append(note)
        if self.prefix:
            every = self.stripped == len(self.tensors) + len(self.ignored_keys)
            where = "every key" if every else f"{self.stripped} keys"
            notes.append(f"stripped prefix {self.prefix!r} from {where}")
        if self.ignored_keys:
            count = len(self.ignored_keys)
            notes.append(
                f"left out {count} unexpected key{'s' if count != 1 else ''} (--ignore-unexpected-keys): "
                + _quoted(self.ignored_keys)
            )
        kept = self.kept_as_saved
        for dtype, count in self.source_dtypes.items():
            if dtype == "float32":
                continue
            tensors = f"{count} {dtype} tensor{'s' if count != 1 else ''}"
            if dtype in _UPCAST_EXACT:
                notes.append(f"upcast {tensors} to float32 (exact)")
            elif dtype in _FLOATING:
                notes.append(f"downcast {tensors} to float32 (rounded to float32 precision)")
            elif dtype in kept.values():
                names = [n for n, d in kept.items() if d == dtype]
                buffers = f"{_kind(dtype)} buffer{'s' if count != 1 else ''}"
                notes.append(f"loaded {tensors} as saved (the model's own {buffers}: {_quoted(names, 3)})")
        return notes

    def manifest_entry(self) -> dict[str, Any]:
        """What the manifest's ``weights`` section records about how the file was read."""
        entry: dict[str, Any] = {"source_dtypes": self.source_dtypes, "loaded_as": "float32"}
        if self.entry is not None:
            entry["state_dict_key"] = self.entry
        if self.prefix:
            entry["stripped_prefix"] = self.prefix
        if self.kept_as_saved:
            entry["kept_as_saved"] = self.kept_as_saved
        if self.ignored_keys:
            entry["ignored_keys"] = list(self.ignored_keys)
        return entry

    def fitted(self, model: Mapping[str, torch.Tensor], *, ignore_unexpected: bool = False) -> Checkpoint:
        """This checkpoint for a model whose state dict (or a meta-device copy of it) is ``model``.

        Records the model's dtypes, which :meth:`load` checks each tensor against; with
        ``ignore_unexpected`` the keys the model does not have are left out (and said so).
        """
        dtypes = {k: _dtype_name(v.dtype) for k, v in model.items()}
        extra = [name for name in self.tensors if name not in dtypes] if ignore_unexpected else []
        return dataclasses.replace(
            self,
            tensors={k: v for k, v in self.tensors.items() if k not in extra},
            stored_keys={k: v for k, v in self.stored_keys.items() if k not in extra},
            model_dtypes=dtypes,
            ignored_keys=tuple(sorted(self.stored_keys[k] for k in extra)),
        )

    def advice(self, *, ignore_unexpected: bool) -> str:
        """What would make the keys fit, for a message about keys that do not: a sentence or ``""``.

        Looks at every state dict in the file and every prefix whose removal gives the target's
        names, for one that gives all of them (with the expected shapes, where those are known);
        says the options that pick it, and ``--ignore-unexpected-keys`` when it leaves keys over.
        """
        if self.target is None:
            return ""
        best = _full_fit(self.target, self.candidates)
        if best is None:
            return ""
        entry, prefix, extra = best
        if entry == self.entry and prefix == self.prefix and (not extra or ignore_unexpected):
            return ""
        options = []
        if entry != self.entry and entry is not None:
            options.append(f"--state-dict-key {entry!r}")
        if prefix != self.prefix:
            options.append(f"--strip-prefix {prefix!r}")
        if extra and not ignore_unexpected:
            options.append("--ignore-unexpected-keys")
        where = f"entry {entry!r}" if entry is not None else "the file's state dict"
        how = f"after stripping {prefix!r}" if prefix else "as they are"
        left = (
            f", with {len(extra)} key{'s' if len(extra) != 1 else ''} it does not have left over"
            if extra
            else ""
        )
        if extra and (entry, prefix) != (self.entry, self.prefix):  # not the keys listed as unexpected
            left += f" ({_quoted(extra, 3)})"
        return (
            f" Every key {self.target.label} needs is in {where} {how}{left}: pass "
            f"{' '.join(options)} to load it"
            + (" (the keys left over are listed on the terminal and in the manifest)" if extra else "")
            + "."
        )

    def load(self) -> dict[str, torch.Tensor]:
        """Read the tensors; raise :class:`WeightsError` for anything that is not a weight.

        Floating tensors become float32. A tensor the model declares non-floating (per
        :meth:`fitted`, such as BatchNorm's int64 ``num_batches_tracked``) loads as saved when it is
        of that kind; any other non-floating tensor is refused, as are sparse, meta or quantized
        ones, all before any data is read. Then refuses values that are not finite in float32 (a
        float64 1e300 becomes inf).
        """
        unusable = {k: v.problem for k, v in sorted(self.tensors.items()) if v.problem}
        if unusable:
            raise WeightsError(
                f"{self.path} holds tensors that cannot be used as weights: "
                + "; ".join(_first([f"{k!r} is {why}" for k, why in unusable.items()]))
                + ". Expected dense float tensors that hold their data. Save the trained float weights: "
                "call .to_dense() on sparse tensors and .dequantize() on quantized ones; a meta tensor "
                "is only a placeholder (a model built on torch.device('meta') and never loaded). "
                + _SAVE_HINT
            )
        self._check_dtypes()
        kept = self.kept_as_saved
        stored = self.read(list(self.stored_keys.values()))
        state: dict[str, torch.Tensor] = {}
        overflow: list[str] = []
        non_finite: list[str] = []
        for name, key in self.stored_keys.items():
            tensor = stored[key]
            info = self.tensors[name]
            if _dtype_name(tensor.dtype) != info.dtype or tuple(tensor.shape) != info.shape:
                raise WeightsError(
                    f"{self.path} changed while it was read: {name!r} was {info.dtype} {list(info.shape)}, "
                    f"then {_dtype_name(tensor.dtype)} {list(tensor.shape)}. Expected a "
                    "file that is not being written; build again once it is complete."
                )
            if name in kept:
                state[name] = tensor.detach().contiguous()
                continue
            as_float32 = tensor.detach().to(torch.float32).contiguous()
            if not torch.isfinite(as_float32).all():
                # Only float64 can be finite in its own dtype and not in float32 (beyond its range);
                # every narrower float converts exactly, so its NaN or inf was in the file.
                overflowed = info.dtype == "float64" and bool(torch.isfinite(tensor).all())
                (overflow if overflowed else non_finite).append(name)
            state[name] = as_float32
        if non_finite or overflow:
            parts = []
            if non_finite:
                parts.append(f"NaN or infinite values in {sorted(non_finite)}")
            if overflow:
                parts.append(
                    f"values beyond float32's range (+-{_FLOAT32_MAX:.3g}), which become infinite when "
                    f"cast to float32, in {sorted(overflow)}"
                )
            raise WeightsError(
                f"{self.path} holds " + "; and ".join(parts) + ". Expected weights that are finite in "
                "float32; the model cannot be verified with them. Check the training run that produced "
                "this checkpoint."
            )
        return state

    def _check_dtypes(self) -> None:
        """Refuse, by key, a tensor whose kind (float, integer, bool, complex) is not the model's.

        Without the model's dtypes (a checkpoint not yet :meth:`fitted`), every tensor must float.
        """
        not_floating: list[str] = []
        other_kind: list[str] = []
        for name, info in sorted(self.tensors.items()):
            want = self.model_dtypes.get(name, "float32")
            if _kind(want) == _kind(info.dtype):
                continue
            model = f", the model's is {want}" if name in self.model_dtypes else ""
            (not_floating if _kind(want) == "float" else other_kind).append(f"{name!r} ({info.dtype}{model})")
        if not_floating:
            raise WeightsError(
                f"{self.path} holds non-floating weights: "
                + ", ".join(_first(not_floating))
                + ". Expected floating-point tensors (float32; float16, bfloat16 and float64 are cast "
                "to float32). Casting integer, boolean or complex values would ship other weights than "
                "the ones trained: export the trained float weights of the model itself (not a "
                "quantized or converted copy). " + _SAVE_HINT
            )
        if other_kind:
            raise WeightsError(
                f"{self.path} holds buffers of another kind than the model declares: "
                + ", ".join(_first(other_kind))
                + ". Expected the kind the model's own buffer has (such as BatchNorm's int64 "
                "num_batches_tracked): casting would load other values than the ones saved. Save the "
                "state dict of the trained model itself. " + _SAVE_HINT
            )


def _kind(dtype: str) -> str:
    """``float``, ``integer``, ``bool`` or ``complex``: what a value of ``dtype`` is."""
    if dtype in _FLOATING:
        return "float"
    if dtype == "bool":
        return "bool"
    if dtype.startswith("complex"):
        return "complex"
    return "integer"


def _full_fit(
    target: KeyTarget, candidates: Mapping[str | None, Mapping[str, TensorInfo]]
) -> tuple[str | None, str, list[str]] | None:
    """The entry and prefix that give every name of ``target`` (shapes too, where known) and leave
    the fewest keys over, with those keys (as stored); ``None`` when no choice gives them all."""
    found: list[tuple[int, str, str | None, str, list[str]]] = []
    for entry, infos in candidates.items():
        for prefix in target.prefixes(infos):
            fit = target.fit(infos, prefix)
            if fit is None or fit[0] < len(target.names) or (target.shapes and fit[1] < len(target.names)):
                continue
            extra = [
                key
                for key in infos
                if target.normal(key[len(prefix) :] if prefix and key.startswith(prefix) else key)
                not in target.names
            ]
            found.append((len(extra), prefix, entry, prefix, extra))
    if not found:
        return None
    _, _, entry, prefix, extra = min(found, key=lambda f: (f[0], len(f[1]), str(f[2])))
    return entry, prefix, sorted(extra)


def read_checkpoint(
    path: Path,
    spec: ArchSpec | None = None,
    *,
    module: torch.nn.Module | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
) -> Checkpoint:
    """Find the state dict in ``path`` and describe its tensors, reading no safetensors data.

    ``state_dict_key`` names the checkpoint entry that holds the state dict and ``strip_prefix``
    the key prefix to remove (``""``: none); left ``None``, both are detected: the state dict is
    the file itself or the entry whose keys fit best, and the prefix stripped is the one whose
    removal (from the keys that carry it) makes the most key names fit ``module``'s own (with its
    shapes breaking ties), else ``spec``'s, else any registered architecture's. Raises
    :class:`WeightsError` for unreadable or unsafe files and ambiguous checkpoints,
    :class:`UsageError` for an option that does not apply.
    """
    _require_file(path)
    tensor_maps: dict[str | None, dict[str, torch.Tensor]] | None = None
    ignored: list[str] = []
    if path.suffix == ".safetensors":
        if state_dict_key is not None:
            raise UsageError(
                f"--state-dict-key {state_dict_key!r} does not apply to {path}: a safetensors file is one "
                "flat mapping of names to tensors, with no entries to choose from. Drop --state-dict-key "
                "(use --strip-prefix if its keys carry a prefix)."
            )
        every: dict[str | None, dict[str, TensorInfo]] = {None: _read_safetensors_header(path)}
    else:
        tensor_maps, ignored = _tensor_mappings(path, _load_pickle(path), state_dict_key)
        every = {k: {n: TensorInfo.of(t) for n, t in v.items()} for k, v in tensor_maps.items()}
    candidates: dict[str | None, dict[str, TensorInfo]] = (
        every if state_dict_key is None else {state_dict_key: every[state_dict_key]}
    )

    # What the key names should look like: the module's, else this architecture's, else any's.
    if module is not None:
        targets = [KeyTarget.of_module(module)]
    else:
        targets = [KeyTarget.of_arch(spec)] if spec else []
        targets.append(KeyTarget("any rnnexport architecture", _all_patterns(), generalise=True))
    entry, prefix = _choose(path, candidates, targets, strip_prefix)
    tensors: dict[str, TensorInfo] = {}
    stored_keys: dict[str, str] = {}
    for key, info in candidates[entry].items():
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if name in tensors or not name:
            raise UsageError(
                f"--strip-prefix {prefix!r} cannot be applied to {path}: stripping it from {key!r} gives "
                f"{name!r}, which is empty or another key's name. Pass a prefix that every key of the state "
                "dict carries (or --strip-prefix '' to strip nothing)."
            )
        tensors[name] = info
        stored_keys[name] = key

    if tensor_maps is None:
        read: Callable[[list[str]], dict[str, torch.Tensor]] = functools.partial(_read_safetensors, path)
    else:
        chosen = tensor_maps[entry]

        def read(keys: list[str]) -> dict[str, torch.Tensor]:
            return {k: chosen[k] for k in keys}

    return Checkpoint(
        path=path,
        tensors=tensors,
        stored_keys=stored_keys,
        read=read,
        entry=entry,
        prefix=prefix,
        ignored_entries=tuple(sorted(n for n in ignored if n != entry)),
        target=targets[0] if module is not None or spec is not None else None,
        candidates=every,
    )


def load_state_dict(
    path: Path,
    spec: ArchSpec | None = None,
    *,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a flat ``{name: float32 tensor}`` dict, safely.

    The state dict is found and its keys fitted as :func:`read_checkpoint` describes; the tensors
    are checked and cast as :meth:`Checkpoint.load` describes. Raises :class:`WeightsError` (or
    :class:`UsageError` for a missing file or an option that does not apply).
    """
    checkpoint = read_checkpoint(path, spec, state_dict_key=state_dict_key, strip_prefix=strip_prefix)
    return checkpoint.load()


def fit_to_arch(
    checkpoint: Checkpoint, spec: ArchSpec, config: ArchConfig, *, ignore_unexpected: bool = False
) -> Checkpoint:
    """``checkpoint`` fitted to ``spec`` at ``config`` (see :meth:`Checkpoint.fitted`) and checked
    by :func:`check_state_dict`; its data is not read yet."""
    with torch.device("meta"):  # dtypes only: no storage, whatever the sizes
        template = spec.build_model(config).state_dict()
    fitted = checkpoint.fitted(template, ignore_unexpected=ignore_unexpected)
    check_state_dict(
        spec,
        config,
        fitted.shapes,
        origin=fitted.origin,
        advice=functools.partial(fitted.advice, ignore_unexpected=ignore_unexpected),
    )
    return fitted


def key_mismatches(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], *, limit: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """How a checkpoint's key shapes depart from a model's: ``(parts, missing, unexpected)``.

    ``parts`` is one ``"missing (N): 'key' [shape]; ..."`` line per kind (missing, unexpected,
    wrong shape), keys quoted with ``repr`` so nothing from the file reaches a terminal raw, at most
    ``limit`` keys each; empty when every key fits.
    """
    missing = [f"{k!r} {list(s)}" for k, s in expected.items() if k not in got]
    unexpected = [f"{k!r} {list(s)}" for k, s in got.items() if k not in expected]
    wrong = [
        f"{k!r}: expected {list(expected[k])}, got {list(s)}"
        for k, s in got.items()
        if k in expected and s != expected[k]
    ]
    parts = [
        f"{label} ({len(items)}): "
        + "; ".join(items[:limit])
        + (f"; and {len(items) - limit} more" if limit is not None and len(items) > limit else "")
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]
    return parts, missing, unexpected


def check_state_dict(
    spec: ArchSpec,
    config: ArchConfig,
    state: Mapping[str, torch.Tensor] | Mapping[str, tuple[int, ...]],
    *,
    origin: str,
    advice: Callable[[], str] | None = None,
) -> None:
    """Raise :class:`WeightsError` listing every missing, unexpected and wrongly shaped key.

    ``state`` maps names to tensors or to shapes (so a safetensors header is checked before any
    data is read). An RNN with more layers, or more directions, than the architecture's gets a
    message saying exactly that: no size option can fix it. ``advice``, called on a mismatch (see
    :meth:`Checkpoint.advice`), names the options that would make the keys fit, when some would.
    """
    model = build_model(spec, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    _check_rnn_structure(spec, model, got, origin=origin)
    parts, missing, unexpected = key_mismatches(expected, got)
    if parts:
        used = config.subset(spec.sizes)
        sizes = ", ".join(f"{k}={v}" for k, v in used.items())
        matching = _architectures_with_keys(got)
        sizes_advice = (
            " Check that the checkpoint was trained with this architecture, and pass the sizes it was "
            "trained with (--config or --input-size/--hidden-size/--output-size/--branches)."
        )
        if spec.name in matching:  # the right architecture, other sizes (or shapes that disagree)
            read_sizes = spec.infer_sizes(got)
            read = ", ".join(f"{k}={v}" for k, v in read_sizes.items())
            if all(used.get(k) == v for k, v in read_sizes.items()) and not missing and not unexpected:
                hint = (
                    f" The key names fit '{spec.name}' and its sizes read off the checkpoint are {read}, "
                    "but the shapes listed disagree with those sizes: the file was not saved from this "
                    "architecture, or was edited after saving. No size option makes it fit; save the "
                    "trained model's state_dict again."
                )
                sizes_advice = ""
            else:
                hint = f" The key names fit '{spec.name}'; the checkpoint's shapes say {read}."
        elif matching:
            hint = (
                f" The keys look like weights of {', '.join(map(repr, matching))}: try --arch {matching[0]}."
            )
        else:
            hint = ""
        options = advice() if advice is not None else ""
        if options:  # options fit the key names: that is the fix, not another architecture
            hint = options
            if not any(part.startswith("wrong shape") for part in parts):
                sizes_advice = ""
        raise WeightsError(
            f"The weights in {origin} do not fit '{spec.name}' with {sizes}. "
            + ". ".join(parts)
            + "."
            + hint
            + sizes_advice
        )


# --- checkpoint structure -------------------------------------------------------------------------


def _check_rnn_structure(
    spec: ArchSpec, model: torch.nn.Module, got: Mapping[str, tuple[int, ...]], *, origin: str
) -> None:
    """Refuse stacked, bidirectional or projected RNN weights given to an architecture without them."""
    expected = {
        name: (m.mode, m.num_layers, m.bidirectional, getattr(m, "proj_size", 0) > 0)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.RNNBase)
    }
    if not expected:
        return
    kinds = set(expected.values())
    # Where module names differ (another architecture's checkpoint), compare with this one's RNNs
    # when they are all alike; the generic key listing covers the rest.
    typical = next(iter(kinds)) if len(kinds) == 1 else None
    found: dict[str, dict[str, int]] = {}  # module -> {key: layer}
    for key in got:
        match = _RNN_KEY.match(key)
        if match:
            found.setdefault(match["module"], {})[key] = int(match["layer"])
    problems = []
    for module, keys in found.items():
        want = expected.get(module, typical)
        if want is None:
            continue
        _, layers, bidirectional, projected = want
        deeper = [k for k, layer in keys.items() if layer >= layers]
        reverse = [k for k in keys if k.endswith("_reverse")]
        projections = [k for k in keys if "_hr_l" in k]
        facts = []
        if deeper:
            facts.append(f"has {1 + max(keys.values())} layers (keys {_quoted(deeper, 4)})")
        if reverse and not bidirectional:
            facts.append(f"is bidirectional (keys {_quoted(reverse, 4)})")
        if projections and not projected:
            facts.append(f"has output projections, proj_size > 0 (keys {_quoted(projections, 4)})")
        if facts:
            problems.append(f"{module!r} " + " and ".join(facts))
    if problems:
        mode, layers, bidirectional, _ = typical or next(iter(kinds))
        rnns = (
            f"{'one' if layers == 1 else layers}-layer, "
            f"{'bidirectional' if bidirectional else 'unidirectional'} {mode}s"
        )
        raise WeightsError(
            f"The weights in {origin} come from a different kind of RNN than '{spec.name}' has: "
            + "; ".join(_first(problems, 4))
            + f". '{spec.name}' is built from {rnns} (num_layers={layers}, bidirectional={bidirectional}), "
            "so no size option makes these weights fit. Export a model trained with "
            f"num_layers={layers} and bidirectional={bidirectional}."
        )


def _tensor_mappings(
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
            f"{path} holds a {type(loaded).__name__}, expected a state_dict (name -> tensor). {_SAVE_HINT}"
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
                f"Entries that are state dicts: {_quoted(sorted(found))}."
                if found
                else f"None of its entries ({_quoted(sorted(entries))}) is a state dict."
            )
        )
    if not found:
        not_tensors = sorted(repr(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
        raise WeightsError(
            f"{path} is not a plain state_dict and holds none: entries {', '.join(_first(not_tensors))} "
            "are not tensors, and no entry is a mapping of names to tensors (such as 'state_dict', "
            f"'model_state_dict' or 'model'). {_SAVE_HINT}"
        )
    return {k: v for k, v in found.items()}, entries  # widen the key type to str | None


def _is_tensor_mapping(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _choose(
    path: Path,
    candidates: Mapping[str | None, Mapping[str, TensorInfo]],
    targets: list[KeyTarget],
    strip_prefix: str | None,
) -> tuple[str | None, str]:
    """The candidate entry and key prefix whose stripped names fit the expected key names best.

    ``targets`` are tried in order: a module's or this architecture's key names, then any
    architecture's, so that a DDP checkpoint of another architecture still loses its prefix and
    gets the right "try --arch" hint. A fit is the number of expected names given, then of those
    with the expected shape; among equal fits, the prefix stripped from fewer keys wins (stripping
    nothing, where that fits as well). Remaining ties are refused: only the user knows which to
    export.
    """
    fits: dict[str | None, tuple[tuple[int, int], str]] = {}
    label = targets[0].label
    for target in targets:
        label, fits = target.label, {}
        for entry, infos in candidates.items():
            prefixes = [strip_prefix] if strip_prefix is not None else target.prefixes(infos)
            scored: list[tuple[tuple[int, int], int, str]] = []
            for prefix in prefixes:
                fit = target.fit(infos, prefix)
                if fit is not None or strip_prefix is not None:
                    stripped = sum(1 for k in infos if prefix and k.startswith(prefix))
                    scored.append((fit or (0, 0), -stripped, prefix))
            scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
            best_fit, best_stripped, best_prefix = scored[0]
            tied = [p for fit, stripped, p in scored if (fit, stripped) == (best_fit, best_stripped)]
            if best_fit[0] and len(tied) > 1:
                raise WeightsError(
                    f"The keys of {path} fit {label} equally well after stripping any of the prefixes "
                    f"{_quoted(sorted(tied))}. Pass --strip-prefix with the one to strip"
                    + (
                        " (and --ignore-unexpected-keys to leave out the keys that then do not fit)."
                        if strip_prefix is None and len(target.shapes) > 0
                        else "."
                    )
                )
            fits[entry] = (best_fit, best_prefix if best_fit[0] else "")
        if any(fit[0] for fit, _ in fits.values()):
            break
    top = max(fit for fit, _ in fits.values())
    best = sorted((e for e, (fit, _) in fits.items() if fit == top), key=str)
    if len(best) > 1:
        which = (
            f"whose key names fit {label}" if top[0] else f"and none has the key names of {targets[0].label}"
        )
        raise WeightsError(
            f"{path} holds several state dicts {which}: entries {_quoted(str(e) for e in best)}. Expected "
            f"one; pass --state-dict-key with the entry to export (for example --state-dict-key {best[0]!r})."
        )
    entry = best[0]
    if strip_prefix and not any(k.startswith(strip_prefix) for k in candidates[entry]):
        where = f"entry {entry!r} of {path}" if entry is not None else str(path)
        raise UsageError(
            f"--strip-prefix {strip_prefix!r} matches no key of {where}; its keys begin "
            f"{_quoted(sorted(candidates[entry])[:3])}. Pass the prefix the keys carry (for example "
            "'module.' or 'model.'), or leave --strip-prefix out to detect it."
        )
    return entry, fits[entry][1] if strip_prefix is None else strip_prefix


def _key_pattern(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(map(_generalise, keys))


def _generalise(key: str) -> str:
    """A key with its branch indices generalised: ``lstms.0.bias`` -> ``lstms.{i}.bias``."""
    return re.sub(r"\.\d+\.", ".{i}.", key)


def _all_patterns() -> frozenset[str]:
    from rnnexport.registry import list_architectures

    return frozenset().union(
        *(_key_pattern(build_model(s, ArchConfig()).state_dict()) for s in list_architectures())
    )


def _architectures_with_keys(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Registered architectures whose state-dict key names (branch indices aside) match these."""
    from rnnexport.registry import list_architectures

    pattern = _key_pattern(shapes)
    return [
        s.name
        for s in list_architectures()
        if _key_pattern(build_model(s, ArchConfig()).state_dict()) == pattern
    ]


def _quoted(items: Iterable[str], limit: int = 6) -> str:
    """``'a', 'b', 'c' and 4 more``: names from a file, escaped, and never a wall of text."""
    return ", ".join(_first([repr(i) for i in items], limit))


def _first(items: Iterable[str], limit: int = 8) -> list[str]:
    items = list(items)
    return items[:limit] + ([f"and {len(items) - limit} more"] if len(items) > limit else [])


def _visible(text: str, limit: int = 300) -> str:
    """A library's message, which may quote bytes of the file: control characters made visible."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit].rstrip(" .,;") + " [...]"


# --- file formats ---------------------------------------------------------------------------------


def _require_file(path: Path) -> None:
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


def _read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
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


def _read_safetensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
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
            f"Nothing in it was executed. {_SAVE_HINT}"
        ) from None
    except Exception as exc:  # zip/pickle corruption: RuntimeError, EOFError, ...
        raise WeightsError(
            f"Cannot read {path} as a PyTorch state_dict: {type(exc).__name__}: {_visible(str(exc))}. "
            "Expected a file written by torch.save(model.state_dict(), ...); it looks truncated or "
            f"corrupt. {_SAVE_HINT}"
        ) from None
