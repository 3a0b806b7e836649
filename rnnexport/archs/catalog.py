"""Every built-in architecture, declared without importing torch.

``rnnexport list``, the registry and a target install's ``verify`` read these declarations (names,
I/O contract templates, sizes, how to read sizes off a checkpoint); the PyTorch modules themselves
live in one file per family (:mod:`rnnexport.archs.parallel`, :mod:`rnnexport.archs.sequence`) and
are imported only when a model is built. To add an architecture: its module in a family file, its
``register(...)`` here, then ``python scripts/make_golden.py --arch NAME``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rnnexport.registry import register
from rnnexport.spec import BATCH, LENGTHS, SEQ, ArchConfig, ArchSpec, StreamingForm, TensorSpec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["count_indexed"]


def _module(path: str) -> Callable[[ArchConfig], nn.Module]:
    """A builder for ``module:Class`` that imports the family module (and torch) on first use."""
    module, name = path.split(":")

    def build(config: ArchConfig) -> nn.Module:
        cls: Callable[[ArchConfig], nn.Module] = getattr(importlib.import_module(module), name)
        return cls(config)

    build.__qualname__ = build.__name__ = name
    return build


def count_indexed(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct indices ``i`` fill ``pattern`` (like ``lstms.{i}.weight_ih_l0``) among the keys."""
    regex = re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$")
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


# -- parallel branches (reference article 000) ----------------------------------------------------


class _SizesReader:
    """Reads input, hidden and branch count off ``<branch_attr>.{i}.weight_ih_l0`` / ``weight_hh_l0``."""

    def __init__(self, branch_attr: str) -> None:
        self.branch_attr = branch_attr

    def __call__(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        branches = count_indexed(shapes, f"{self.branch_attr}.{{i}}.weight_ih_l0")
        if branches:
            sizes["branches"] = branches
        w_ih = shapes.get(f"{self.branch_attr}.0.weight_ih_l0")
        w_hh = shapes.get(f"{self.branch_attr}.0.weight_hh_l0")
        if w_ih is not None and len(w_ih) == 2:
            sizes["input_size"] = w_ih[1]
        if w_hh is not None and len(w_hh) == 2:
            sizes["hidden_size"] = w_hh[1]
        return sizes


_PARALLEL_X = TensorSpec("x", "float32", (BATCH, SEQ, "input_size"), "input sequence, batch-first")
_PARALLEL_Y = TensorSpec("y", "float32", (BATCH, SEQ, "hidden_size"), "fused per-step features")
_PARALLEL_SIZES = ("input_size", "hidden_size", "branches")
# The reference article (shared/seeds/000_2dc1f8ec3c0ad6e4.txt), by its title.
_PARALLEL_SOURCE = "How can I implement multiple LSTM cells per block in PyTorch?"

register(
    ArchSpec(
        name="parallel-lstm",
        summary="parallel LSTM branches, concatenated, then linear",
        source=f"{_PARALLEL_SOURCE} (example 1)",
        build_model=_module("rnnexport.archs.parallel:ParallelLSTM"),
        inputs=(_PARALLEL_X,),
        outputs=(_PARALLEL_Y,),
        sizes=_PARALLEL_SIZES,
        infer_sizes=_SizesReader("lstms"),
    )
)
register(
    ArchSpec(
        name="parallel-lstm-attention",
        summary="parallel LSTM branches mixed by a per-step softmax over the branches",
        source=f"{_PARALLEL_SOURCE} (example 2)",
        build_model=_module("rnnexport.archs.parallel:ParallelLSTMAttention"),
        inputs=(_PARALLEL_X,),
        outputs=(_PARALLEL_Y,),
        sizes=_PARALLEL_SIZES,
        infer_sizes=_SizesReader("lstms"),
        notes=("the softmax runs over the branch axis at each step, not over time",),
        reference="forward_article",
    )
)
register(
    ArchSpec(
        name="parallel-gru",
        summary="parallel GRU branches, concatenated, then linear",
        source=f"{_PARALLEL_SOURCE} (example 3)",
        build_model=_module("rnnexport.archs.parallel:ParallelGRU"),
        inputs=(_PARALLEL_X,),
        outputs=(_PARALLEL_Y,),
        sizes=_PARALLEL_SIZES,
        infer_sizes=_SizesReader("grus"),
    )
)


# -- sequence models on one LSTM (reference article 003) ------------------------------------------


def _read_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Input and hidden from ``lstm.weight_ih_l0`` / ``lstm.weight_hh_l0``, output from ``fc.weight``."""
    sizes: dict[str, int] = {}
    readers = {
        "input_size": ("lstm.weight_ih_l0", 1),
        "hidden_size": ("lstm.weight_hh_l0", 1),
        "output_size": ("fc.weight", 0),
    }
    for size, (key, axis) in readers.items():
        shape = shapes.get(key)
        if shape is not None and len(shape) == 2:
            sizes[size] = shape[axis]
    return sizes


_X = TensorSpec("x", "float32", (BATCH, SEQ, "input_size"), "input sequence, batch-first")
_LENGTHS = TensorSpec(
    "lengths", "int64", (BATCH,), "valid steps per row, 1 <= lengths[b] <= seq", role=LENGTHS
)
_SIZES = ("input_size", "hidden_size", "output_size")
# The reference article (shared/seeds/003_b1e4274b19d9071a.txt), by its title.
_SOURCE = "How can a many-to-many LSTM be implemented in PyTorch?"

register(
    ArchSpec(
        name="many-to-many",
        summary="LSTM with a per-step linear head",
        source=f"{_SOURCE} (example 1)",
        build_model=_module("rnnexport.archs.sequence:ManyToManyLSTM"),
        inputs=(_X,),
        outputs=(TensorSpec("y", "float32", (BATCH, SEQ, "output_size"), "per-step output"),),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
    )
)
register(
    ArchSpec(
        name="many-to-many-masked",
        summary="many-to-many LSTM over padded batches, packed; padded steps are zero",
        source=f"{_SOURCE} (example 2)",
        build_model=_module("rnnexport.archs.sequence:MaskedManyToManyLSTM"),
        inputs=(_X, _LENGTHS),
        outputs=(
            TensorSpec(
                "y", "float32", (BATCH, SEQ, "output_size"), "per-step output, exactly 0 on padded steps"
            ),
        ),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
        notes=("returns the padded length with zeros, not max(lengths) steps",),
    )
)
register(
    ArchSpec(
        name="attention",
        summary="LSTM + additive attention pooling over the valid steps (many-to-one)",
        source=f"{_SOURCE} (example 3)",
        build_model=_module("rnnexport.archs.sequence:AttentionLSTM"),
        inputs=(_X, _LENGTHS),
        outputs=(TensorSpec("y", "float32", (BATCH, "output_size"), "one vector per sequence"),),
        sizes=_SIZES,
        infer_sizes=_read_sizes,
        notes=("many-to-one: one vector per sequence, padded steps take no part in the softmax",),
        reference="forward_packed",
        streaming=StreamingForm(
            method="forward_streaming",
            states=(
                TensorSpec("attention.max", "float32", (BATCH, 1), "running maximum attention score"),
                TensorSpec("attention.sum", "float32", (BATCH, 1), "running sum of exp(score - max)"),
                TensorSpec(
                    "attention.context",
                    "float32",
                    (BATCH, "hidden_size"),
                    "running sum of exp(score - max) * LSTM output",
                ),
            ),
            doc="each call returns the pooled output of every valid step seen so far (exact online softmax)",
        ),
    )
)
