"""Reading the golden PyTorch reference tensors (``golden/<arch>/``).

Layout of one architecture's folder, written only by ``scripts/make_golden.py``:

- ``weights.safetensors``: the weights every case was computed with (default sizes, seeded init);
- ``case_<k>.safetensors``: ``input.<name>`` and ``output.<name>`` tensors of one seeded case;
- ``meta.json``: seed, sizes, I/O contract, the cases' shapes, the reference used, library versions.

This module only reads, and imports no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file

from rnnexport.errors import GoldenError
from rnnexport.feeds import Case
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = [
    "GOLDEN_FORMAT",
    "GoldenSet",
    "golden_root",
    "load_golden",
    "regenerate_command",
]

# Bumped whenever the folder layout or meta.json schema changes; older folders count as stale.
GOLDEN_FORMAT = 1


@dataclass(frozen=True)
class GoldenSet:
    """An architecture's golden folder, loaded."""

    arch: str
    directory: Path
    meta: dict[str, Any]
    weights: dict[str, Any]  # name -> np.ndarray
    cases: list[Case]

    @property
    def config(self) -> ArchConfig:
        """The sizes the goldens were made with."""
        return ArchConfig.from_mapping(self.meta["config"], origin=str(self.directory / "meta.json"))


def golden_root() -> Path:
    """Where golden folders live: ``$RNNEXPORT_GOLDEN_DIR``, the checkout's ``golden/``, or the wheel's."""
    override = os.environ.get("RNNEXPORT_GOLDEN_DIR")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    checkout = package.parent / "golden"
    # A checkout (or editable install) has pyproject.toml beside the package; site-packages does not.
    in_checkout = checkout.is_dir() and (package.parent / "pyproject.toml").is_file()
    return checkout if in_checkout else package / "_golden"


def regenerate_command(arch: str) -> str:
    """The exact command that (re)writes one architecture's golden folder."""
    return f"python scripts/make_golden.py --arch {arch} --overwrite"


def load_golden(spec: ArchSpec, *, root: Path | None = None) -> GoldenSet:
    """Load and sanity-check ``spec``'s golden folder; missing or stale data raises :class:`GoldenError`.

    Stale means: written by another format version, or recorded for a different I/O contract than
    the architecture declares today. (Whether the weights still fit the module, and whether the
    module still reproduces the outputs, is checked on the torch side by the tests and by ``build``.)
    """
    directory = (root or golden_root()) / spec.name
    fix = f"Run '{regenerate_command(spec.name)}' from the repository root to write it."
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise GoldenError(f"No golden data for '{spec.name}': expected {meta_path}, found nothing. {fix}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != GOLDEN_FORMAT:
            raise GoldenError(
                f"Golden data for '{spec.name}' is stale: format {meta.get('format')!r}, expected "
                f"{GOLDEN_FORMAT}. {fix}"
            )
        declared = spec.contract(ArchConfig.from_mapping(meta["config"])).to_json()
        if meta["contract"] != declared:
            raise GoldenError(
                f"Golden data for '{spec.name}' is stale: it was made for the I/O contract "
                f"{meta['contract']}, but the architecture now declares {declared}. {fix}"
            )
        weights = load_file(directory / meta["weights"]["file"])
        cases = []
        for entry in meta["cases"]:
            tensors = load_file(directory / entry["file"])
            cases.append(
                Case(
                    name=f"golden:{entry['file']}",
                    inputs={
                        k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")
                    },
                    outputs={
                        k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")
                    },
                )
            )
    except GoldenError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise GoldenError(
            f"Golden data for '{spec.name}' in {directory} cannot be read "
            f"({type(exc).__name__}: {exc}). {fix}"
        ) from exc
    return GoldenSet(arch=spec.name, directory=directory, meta=meta, weights=weights, cases=cases)
