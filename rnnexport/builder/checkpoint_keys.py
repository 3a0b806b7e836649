"""Which state dict of a checkpoint, and which key prefix, fit the key names a model expects.

A checkpoint may wrap its state dict (``{"state_dict": ...}``, ``{"model_state_dict": ...,
"optimizer_...": ...}``, ``{"model": ...}``) and prefix its keys (``module.`` from DataParallel/DDP,
``model.`` from Lightning, both, ``encoder.`` for one part of a bigger model). The expected names
are a :class:`KeyTarget`: a user module's own (with shapes) or an architecture's.
:func:`choose_state_dict` picks the entry and prefix that fit them best, or refuses a tie;
:func:`full_fit` finds the choice that would give every name, for advice when the keys do not fit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnexport.builder.checkpoint_files import TensorInfo, dtype_name, quoted
from rnnexport.builder.eager import build_model
from rnnexport.errors import UsageError, WeightsError
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = [
    "KeyTarget",
    "all_patterns",
    "architectures_with_keys",
    "choose_state_dict",
    "full_fit",
]


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
            {k: dtype_name(v.dtype) for k, v in state.items()},
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


def full_fit(
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


def choose_state_dict(
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
                    f"{quoted(sorted(tied))}. Pass --strip-prefix with the one to strip"
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
            f"{path} holds several state dicts {which}: entries {quoted(str(e) for e in best)}. Expected "
            f"one; pass --state-dict-key with the entry to export (for example --state-dict-key {best[0]!r})."
        )
    entry = best[0]
    if strip_prefix and not any(k.startswith(strip_prefix) for k in candidates[entry]):
        where = f"entry {entry!r} of {path}" if entry is not None else str(path)
        raise UsageError(
            f"--strip-prefix {strip_prefix!r} matches no key of {where}; its keys begin "
            f"{quoted(sorted(candidates[entry])[:3])}. Pass the prefix the keys carry (for example "
            "'module.' or 'model.'), or leave --strip-prefix out to detect it."
        )
    return entry, fits[entry][1] if strip_prefix is None else strip_prefix


def _key_pattern(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(map(_generalise, keys))


def _generalise(key: str) -> str:
    """A key with its branch indices generalised: ``lstms.0.bias`` -> ``lstms.{i}.bias``."""
    return re.sub(r"\.\d+\.", ".{i}.", key)


def all_patterns() -> frozenset[str]:
    """Every registered architecture's key names, branch indices generalised."""
    from rnnexport.registry import list_architectures

    return frozenset().union(
        *(_key_pattern(build_model(s, ArchConfig()).state_dict()) for s in list_architectures())
    )


def architectures_with_keys(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Registered architectures whose state-dict key names (branch indices aside) match these."""
    from rnnexport.registry import list_architectures

    pattern = _key_pattern(shapes)
    return [
        s.name
        for s in list_architectures()
        if _key_pattern(build_model(s, ArchConfig()).state_dict()) == pattern
    ]
