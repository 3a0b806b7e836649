"""The rule that drops a ``Concat``'s provably empty inputs (:mod:`rnnexport.graph.tidy` says why).

An input that is a ``ConstantOfShape`` whose shape is a constant 0 on the ``Concat`` axis is dropped;
a ``Concat`` left with one input becomes an ``Identity``, which ONNX Runtime removes at load. The nodes
that only computed the empty tensor go with the graph's dead nodes afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from rnnexport.graph.nodes import attribute
from rnnexport.graph.rules import GraphView, Miss, Rule

__all__ = ["DropEmptyConcatInputs"]


def _empty_on(name: str, axis: int, view: GraphView) -> bool:
    """Whether ``name`` is a ConstantOfShape whose shape is a constant 0 at ``axis``.

    The shape is a 1-D tensor, often a Concat of pieces (constants, ``Unsqueeze`` of a computed
    size); the piece that holds position ``axis`` must be a constant, and every piece before it of
    known length (inferred 1-D lengths, and the constants' own).
    """
    producer, constants = view.producer, view.constants
    node = view.nodes[producer[name]] if name in producer else None
    if node is None or node.op_type != "ConstantOfShape" or not node.input:
        return False
    shape = node.input[0]
    shaper = view.nodes[producer[shape]] if shape in producer else None
    pieces = list(shaper.input) if shaper is not None and shaper.op_type == "Concat" else [shape]
    size = {p: (int(np.prod(constants[p].dims)) if p in constants else view.lengths.get(p)) for p in pieces}
    if axis < 0:
        if any(v is None for v in size.values()):
            return False
        axis += sum(v for v in size.values() if v is not None)
    start = 0
    for piece in pieces:
        length = size[piece]
        if length is None:
            return False
        if start <= axis < start + length:
            if piece not in constants:
                return False
            return int(numpy_helper.to_array(constants[piece]).reshape(-1)[axis - start]) == 0
        start += length
    return False


@dataclass(frozen=True)
class _Kept:
    concat: int  # the Concat's index
    inputs: list[str]  # the inputs it keeps, at least one


class DropEmptyConcatInputs(Rule[int, _Kept]):
    """Every provably empty input of a ``Concat`` goes (module docstring). Apply it with
    :func:`~rnnexport.graph.rules.apply_to_each`: shape inference runs once, on the graph as it was."""

    name = "drop_empty_concat_inputs"

    def candidates(self, view: GraphView) -> list[int]:
        """Every ``Concat`` of two or more inputs, one of them a ``ConstantOfShape``'s output."""
        zeros = {o for n in view.nodes if n.op_type == "ConstantOfShape" for o in n.output}
        found = [
            i
            for i, n in enumerate(view.nodes)
            if n.op_type == "Concat" and len(n.input) > 1 and zeros.intersection(n.input)
        ]
        if found:  # everything the matches read, read off the graph before the first rewrite
            _ = (view.lengths, view.producer, view.constants)
        return found

    def match(self, view: GraphView, candidate: int) -> _Kept | Miss:
        """The inputs to keep, or why none goes."""
        concat = view.nodes[candidate]
        axis = int(attribute(concat, "axis"))
        kept = [n for n in concat.input if not _empty_on(n, axis, view)]
        if len(kept) == len(concat.input):
            return Miss("no input provably empty")
        if not kept:
            return Miss("every input empty")
        return _Kept(candidate, kept)

    def rewrite(self, view: GraphView, match: _Kept) -> None:
        """Keep only the inputs that are not empty; one left makes the ``Concat`` an ``Identity``."""
        concat = view.nodes[match.concat]
        del concat.input[:]
        concat.input.extend(match.inputs)
        if len(match.inputs) == 1:
            concat.op_type = "Identity"
            del concat.attribute[:]
