"""Input tensors ("feeds"): seeded generation and validation against a contract.

Tensors cross module boundaries as ``dict[str, np.ndarray]`` keyed by ONNX names; this module is
numpy-only so that the artifact checker can use it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rnnexport.errors import InputError
from rnnexport.spec import BATCH, SEQ, Contract

__all__ = ["Case", "Feeds", "make_feeds", "validate_feeds"]

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One verification case: inputs and the outputs the PyTorch reference computed for them."""

    name: str
    inputs: Feeds
    outputs: Feeds

    @property
    def shapes(self) -> dict[str, list[int]]:
        """Input shapes, for reports."""
        return {k: list(v.shape) for k, v in self.inputs.items()}


def make_feeds(contract: Contract, *, batch: int, seq: int, rng: np.random.Generator) -> Feeds:
    """Seeded inputs of the given batch and sequence length.

    Floats are standard normal. ``lengths`` always covers the edges: with ``batch >= 2`` the first
    row is full length and the last has length 1; the rest are uniform in ``[1, seq]``. With
    ``batch == 1`` the single row is full length (callers wanting length 1 use ``seq=1`` or set it).
    """
    feeds: Feeds = {}
    sizes = {BATCH: batch, SEQ: seq}
    for spec in contract.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.name == "lengths":
            lengths = rng.integers(1, seq + 1, size=shape, dtype=np.int64)
            lengths[0] = seq
            if batch >= 2:
                lengths[-1] = 1
            feeds[spec.name] = lengths
        elif spec.dtype == "float32":
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
        else:  # pragma: no cover - no such input exists; a new one must say how it is generated
            raise NotImplementedError(f"no generator for input {spec.name} ({spec.dtype})")
    return feeds


def validate_feeds(contract: Contract, feeds: Mapping[str, np.ndarray], *, origin: str) -> None:
    """Raise :class:`InputError` unless ``feeds`` fit ``contract`` and hold sane values.

    Checks, in order: names, dtypes, ranks, fixed sizes, agreement of each dynamic axis across
    inputs, no empty axis, ``1 <= lengths[b] <= seq``, and finite floats at every valid step (steps
    past a row's length are padding and may hold anything). ``origin`` names where the
    tensors came from, for the message.
    """
    expected = contract.input_names
    missing = [n for n in expected if n not in feeds]
    unexpected = [n for n in feeds if n not in expected]
    if missing or unexpected:
        raise InputError(
            f"Inputs in {origin} do not match the model: expected exactly {expected}, "
            f"got {sorted(feeds)} (missing {missing}, unexpected {unexpected}). "
            "Name each tensor after the model input it feeds."
        )
    axes: dict[str, tuple[int, str]] = {}
    for spec in contract.inputs:
        array = feeds[spec.name]
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"Input '{spec.name}' in {origin} has dtype {array.dtype}, expected {spec.dtype}. "
                f"Convert it (for example array.astype(np.{spec.dtype}))."
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"Input '{spec.name}' in {origin} has shape {list(array.shape)}, expected rank "
                f"{len(spec.shape)} {spec.shape_str()}. Reshape it to that layout (batch first)."
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if got == 0:
                raise InputError(
                    f"Input '{spec.name}' in {origin} has an empty axis {axis} (shape {list(array.shape)}); "
                    "every axis needs at least one element."
                )
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"Input '{spec.name}' in {origin} has size {got} on axis {axis}, expected {want} "
                    f"({spec.shape_str()}). Use tensors built for this model's sizes."
                )
            if isinstance(want, str):
                seen = axes.setdefault(want, (got, spec.name))
                if seen[0] != got:
                    raise InputError(
                        f"Inputs in {origin} disagree on '{want}': '{seen[1]}' has {seen[0]}, "
                        f"'{spec.name}' has {got}. Every input must share the same {want} size."
                    )
    lengths = feeds.get("lengths") if SEQ in axes else None
    if lengths is not None:
        seq = axes[SEQ][0]
        bad_rows = np.flatnonzero((lengths < 1) | (lengths > seq))
        if bad_rows.size:
            row = int(bad_rows[0])
            raise InputError(
                f"Input 'lengths' in {origin} must satisfy 1 <= lengths[b] <= seq ({seq}); row {row} has "
                f"{int(lengths[row])} ({bad_rows.size} bad row(s)). Give each row's count of valid "
                "(unpadded) steps; an empty sequence cannot be run, drop it from the batch."
            )
    for spec in contract.inputs:
        array = feeds[spec.name]
        if array.dtype.kind != "f":
            continue
        nonfinite = ~np.isfinite(array)
        if lengths is not None and BATCH in spec.shape and SEQ in spec.shape:
            # Steps past a row's length are padding, which the model ignores: anything may be there.
            steps = np.moveaxis(nonfinite, (spec.shape.index(BATCH), spec.shape.index(SEQ)), (0, 1))
            padded = np.arange(steps.shape[1])[None, :] >= lengths[:, None]
            nonfinite = steps & ~padded.reshape(padded.shape + (1,) * (steps.ndim - 2))
        if nonfinite.any():
            raise InputError(
                f"Input '{spec.name}' in {origin} holds {int(nonfinite.sum())} NaN or infinite value(s) "
                "at valid steps; expected finite numbers there (padded steps past a row's length may "
                "hold anything). Replace them before building or verifying."
            )
