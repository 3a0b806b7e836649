"""Reading the golden PyTorch reference tensors (``golden/<arch>/``).

Layout of one architecture's folder, written only by ``scripts/make_golden.py``:

- ``weights.safetensors``: the weights every case was computed with (default sizes, seeded init);
- ``case_<k>.safetensors``: ``input.<name>`` and ``output.<name>`` tensors of one seeded case;
- ``meta.json``: seed, sizes, I/O contract, the cases' shapes, the reference used, library versions.

This module only reads, and imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnexport.errors import GoldenError, RnnExportError
from rnnexport.feeds import Case, in_order, validate_feeds
from rnnexport.limits import DEFAULT_LIMITS
from rnnexport.safeio import loads_strict, read_bounded
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
    package = Path(__file__).resolve().parents[1]  # rnnexport/
    checkout = package.parent / "golden"
    # A checkout (or editable install) has pyproject.toml beside the package; site-packages does not.
    in_checkout = checkout.is_dir() and (package.parent / "pyproject.toml").is_file()
    return checkout if in_checkout else package / "_golden"


def regenerate_command(arch: str) -> str:
    """The exact command that (re)writes one architecture's golden folder."""
    return f"python scripts/make_golden.py --arch {arch} --overwrite"


def _read_safetensors(path: Path, *, fix: str) -> dict[str, Any]:
    """One golden ``.safetensors`` file, read once within a size bound; any fault is a GoldenError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = read_bounded(
        path, limit=DEFAULT_LIMITS.golden_bytes, what="Golden file", error=GoldenError, fix=fix
    )
    try:
        return dict(load(data))
    except (SafetensorError, ValueError, TypeError, OSError) as exc:
        raise GoldenError(f"Golden file {path} is not a readable safetensors file ({exc}). {fix}") from None


def _prefixed(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def load_golden(spec: ArchSpec, *, root: Path | None = None) -> GoldenSet:
    """Load and check ``spec``'s golden folder; missing, stale or corrupt data raises :class:`GoldenError`.

    Stale means: written by another format version, or recorded for a different I/O contract than
    the architecture declares today. Corrupt means: files that are not regular files, too large,
    not strict JSON / safetensors, or cases whose tensors do not fit the contract. (Whether the
    weights still fit the module, and whether the module still reproduces the outputs, is checked
    on the torch side by the tests and by ``build``.)
    """
    directory = (root or golden_root()) / spec.name
    fix = f"Run '{regenerate_command(spec.name)}' from the repository root to write it."
    meta_path = directory / "meta.json"
    if not os.path.lexists(meta_path):
        raise GoldenError(f"No golden data for '{spec.name}': expected {meta_path}, found nothing. {fix}")
    meta = loads_strict(
        read_bounded(
            meta_path,
            limit=DEFAULT_LIMITS.config_bytes * 16,
            what="Golden metadata",
            error=GoldenError,
            fix=fix,
        ),
        what=f"Golden metadata {meta_path}",
        error=GoldenError,
        fix=fix,
    )
    try:
        if not isinstance(meta, dict):
            raise TypeError(f"meta.json holds a JSON {type(meta).__name__}, expected an object")
        if meta.get("format") != GOLDEN_FORMAT:
            raise GoldenError(
                f"Golden data for '{spec.name}' is stale: format {meta.get('format')!r}, expected "
                f"{GOLDEN_FORMAT}. {fix}"
            )
        config = ArchConfig.from_mapping(meta["config"], origin=str(meta_path))
        declared = spec.contract(config).to_json()
        if meta["contract"] != declared:
            raise GoldenError(
                f"Golden data for '{spec.name}' is stale: it was made for the I/O contract "
                f"{meta['contract']}, but the architecture now declares {declared}. {fix}"
            )
        weights = _read_safetensors(directory / _plain_name(meta["weights"]["file"]), fix=fix)
        cases = []
        for entry in meta["cases"]:
            tensors = _read_safetensors(directory / _plain_name(entry["file"]), fix=fix)
            contract = spec.contract(config)
            case = Case(
                name=f"golden:{entry['file']}",
                inputs=in_order(contract.input_names, _prefixed(tensors, "input.")),
                outputs=in_order(contract.output_names, _prefixed(tensors, "output.")),
            )
            validate_feeds(contract, case.inputs, origin=str(directory / entry["file"]))
            if sorted(case.outputs) != sorted(contract.output_names):
                raise ValueError(
                    f"{entry['file']} holds outputs {sorted(case.outputs)}, expected {contract.output_names}"
                )
            cases.append(case)
    except GoldenError:
        raise
    except (RnnExportError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise GoldenError(
            f"Golden data for '{spec.name}' in {directory} cannot be read "
            f"({type(exc).__name__}: {exc}). {fix}"
        ) from None
    return GoldenSet(arch=spec.name, directory=directory, meta=meta, weights=weights, cases=cases)


def _plain_name(name: object) -> str:
    """A file name recorded in meta.json: one plain name inside the golden folder, nothing else."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"meta.json names the file {name!r}, expected a plain file name in the folder")
    return name
