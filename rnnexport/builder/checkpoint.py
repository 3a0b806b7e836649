"""A checkpoint's state dict, found and described before anything big is read, then loaded.

Reading happens in two steps, so that nothing big is loaded before it is known to fit:

1. :func:`read_checkpoint` finds the state dict and what every tensor *is* (name, dtype, shape).
   For safetensors that is the file's JSON header alone; no tensor data is read. It unwraps
   training checkpoints and strips a key prefix from the keys that carry it when exactly one
   choice fits the expected key names best (:mod:`rnnexport.builder.checkpoint_keys`), and says
   what it did.
2. The checkpoint is :meth:`Checkpoint.fitted` to the model (its dtypes; with
   ``--ignore-unexpected-keys``, keys the model lacks are left out) and its names and shapes are
   checked (:func:`rnnexport.builder.weights.fit_to_arch`,
   :func:`rnnexport.builder.usermodel.load_user_weights`); a mismatch names the options that would
   fit (:meth:`Checkpoint.advice`). Then :meth:`Checkpoint.load` refuses what cannot be those
   weights (integer, boolean or complex values where the model has floats; sparse, meta or
   quantized tensors), reads the data, casts floats to float32 (integer buffers the model
   declares, such as BatchNorm's ``num_batches_tracked``, stay as saved) and checks that the
   float32 values are finite.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnexport.builder.checkpoint_files import (
    SAVE_HINT,
    TensorInfo,
    dtype_name,
    first_items,
    load_pickle,
    quoted,
    read_safetensors,
    read_safetensors_header,
    require_file,
    tensor_mappings,
)
from rnnexport.builder.checkpoint_keys import KeyTarget, all_patterns, choose_state_dict, full_fit
from rnnexport.errors import UsageError, WeightsError
from rnnexport.spec import ArchSpec

__all__ = ["Checkpoint", "load_state_dict", "read_checkpoint"]

# float32 and narrower floats become float32 exactly; float64 is rounded (and may overflow to inf).
_UPCAST_EXACT = frozenset(
    {"float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"}
)
_FLOATING = _UPCAST_EXACT | {"float32", "float64"}
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


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
                note += f" (ignored: {quoted(self.ignored_entries)})"
            notes.append(note)
        if self.prefix:
            every = self.stripped == len(self.tensors) + len(self.ignored_keys)
            where = "every key" if every else f"{self.stripped} keys"
            notes.append(f"stripped prefix {self.prefix!r} from {where}")
        if self.ignored_keys:
            count = len(self.ignored_keys)
            notes.append(
                f"left out {count} unexpected key{'s' if count != 1 else ''} (--ignore-unexpected-keys): "
                + quoted(self.ignored_keys)
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
                notes.append(f"loaded {tensors} as saved (the model's own {buffers}: {quoted(names, 3)})")
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
        dtypes = {k: dtype_name(v.dtype) for k, v in model.items()}
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
        best = full_fit(self.target, self.candidates)
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
            left += f" ({quoted(extra, 3)})"
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
                + "; ".join(first_items([f"{k!r} is {why}" for k, why in unusable.items()]))
                + ". Expected dense float tensors that hold their data. Save the trained float weights: "
                "call .to_dense() on sparse tensors and .dequantize() on quantized ones; a meta tensor "
                "is only a placeholder (a model built on torch.device('meta') and never loaded). " + SAVE_HINT
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
            if dtype_name(tensor.dtype) != info.dtype or tuple(tensor.shape) != info.shape:
                raise WeightsError(
                    f"{self.path} changed while it was read: {name!r} was {info.dtype} {list(info.shape)}, "
                    f"then {dtype_name(tensor.dtype)} {list(tensor.shape)}. Expected a "
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
                + ", ".join(first_items(not_floating))
                + ". Expected floating-point tensors (float32; float16, bfloat16 and float64 are cast "
                "to float32). Casting integer, boolean or complex values would ship other weights than "
                "the ones trained: export the trained float weights of the model itself (not a "
                "quantized or converted copy). " + SAVE_HINT
            )
        if other_kind:
            raise WeightsError(
                f"{self.path} holds buffers of another kind than the model declares: "
                + ", ".join(first_items(other_kind))
                + ". Expected the kind the model's own buffer has (such as BatchNorm's int64 "
                "num_batches_tracked): casting would load other values than the ones saved. Save the "
                "state dict of the trained model itself. " + SAVE_HINT
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
    require_file(path)
    tensor_maps: dict[str | None, dict[str, torch.Tensor]] | None = None
    ignored: list[str] = []
    if path.suffix == ".safetensors":
        if state_dict_key is not None:
            raise UsageError(
                f"--state-dict-key {state_dict_key!r} does not apply to {path}: a safetensors file is one "
                "flat mapping of names to tensors, with no entries to choose from. Drop --state-dict-key "
                "(use --strip-prefix if its keys carry a prefix)."
            )
        every: dict[str | None, dict[str, TensorInfo]] = {None: read_safetensors_header(path)}
    else:
        tensor_maps, ignored = tensor_mappings(path, load_pickle(path), state_dict_key)
        every = {k: {n: TensorInfo.of(t) for n, t in v.items()} for k, v in tensor_maps.items()}
    candidates: dict[str | None, dict[str, TensorInfo]] = (
        every if state_dict_key is None else {state_dict_key: every[state_dict_key]}
    )

    # What the key names should look like: the module's, else this architecture's, else any's.
    if module is not None:
        targets = [KeyTarget.of_module(module)]
    else:
        targets = [KeyTarget.of_arch(spec)] if spec else []
        targets.append(KeyTarget("any rnnexport architecture", all_patterns(), generalise=True))
    entry, prefix = choose_state_dict(path, candidates, targets, strip_prefix)
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
        read: Callable[[list[str]], dict[str, torch.Tensor]] = functools.partial(read_safetensors, path)
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
