"""Architectures registered by name.

Each module in :mod:`rnnexport.archs` calls :func:`register` for the architectures it defines;
adding an architecture means adding (or extending) one such module and generating its golden data.
Lookups import the modules on first use, so importing :mod:`rnnexport` stays free of torch.
"""

from __future__ import annotations

import difflib
import importlib

from rnnexport.errors import UsageError
from rnnexport.spec import ArchSpec

__all__ = ["get_arch", "list_architectures", "register"]

_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture; a second registration under the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    # Importing the package runs every architecture module's register() calls.
    importlib.import_module("rnnexport.archs")


def list_architectures() -> list[ArchSpec]:
    """Every registered architecture, in registration order."""
    _load()
    return list(_REGISTRY.values())


def get_arch(name: str) -> ArchSpec:
    """The architecture called ``name``; an unknown name raises :class:`UsageError` listing the valid ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(_REGISTRY)
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"Unknown architecture {name!r}: expected one of {valid}.{hint} "
            f"Run 'rnnexport list' to see each one's inputs and outputs."
        ) from None
