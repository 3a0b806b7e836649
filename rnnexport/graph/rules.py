"""Graph rewrites as named rules, and the engine that applies them (after onnxscript's rewriter).

A :class:`Rule` has a ``name``, lists its ``candidates`` in a graph (the nodes, or groups of nodes,
it could rewrite, in graph order), ``match``-es one candidate, returning either what the rewrite needs
or a :class:`Miss` that says why it does not apply, and ``rewrite``-s a match in place. Matching
reads the graph only; only ``rewrite`` changes it.

:func:`apply_until_none` applies rules to a fixpoint, :func:`apply_to_each` applies one rule to every
candidate in one pass; both count, per rule, the rewrites done and the misses by reason
(:class:`RuleCount`), as data the build can report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

import onnx
from google.protobuf.message import EncodeError

from rnnexport.graph.nodes import constant_tensors, reads

__all__ = ["GraphView", "Miss", "Rule", "RuleCount", "apply_to_each", "apply_until_none"]

Candidate = TypeVar("Candidate")
Match = TypeVar("Match")


@dataclass(frozen=True)
class Miss:
    """Why a rule does not apply to one candidate (a short phrase: counts are kept by it)."""

    reason: str


class GraphView:
    """What rules read off one state of a model's graph, each part computed on first use.

    A view is valid until a rewrite changes the graph; the engine makes a new one after each.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)

    @cached_property
    def producer(self) -> dict[str, int]:
        """The index of the node that computes each value (the last one, were there several)."""
        return {out: i for i, node in enumerate(self.nodes) for out in node.output}

    @cached_property
    def uses(self) -> Counter[str]:
        """How often each value is read (:func:`~rnnexport.graph.nodes.reads`)."""
        return reads(self.graph)

    @cached_property
    def constants(self) -> dict[str, onnx.TensorProto]:
        """Initializers and ``Constant`` node values, by name."""
        return constant_tensors(self.graph)

    @cached_property
    def readers(self) -> dict[str, list[int]]:
        """The indices of the nodes that read each value, in graph order (once per input slot)."""
        found: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                found.setdefault(name, []).append(i)
        return found

    @cached_property
    def lengths(self) -> dict[str, int]:
        """The length of each 1-D value whose length ONNX shape inference knows."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False).graph
        except (ValueError, EncodeError, onnx.shape_inference.InferenceError):
            # Inference serializes the model, which protobuf refuses past 2 GiB (weights in memory
            # before they go to external data). Without inferred lengths, only a 0 at the start of a
            # shape, or after constant pieces, can be located; the rest is left as it is.
            inferred = onnx.GraphProto()
        found = {}
        for info in [*inferred.value_info, *inferred.input, *inferred.output]:
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 1 and dims[0].HasField("dim_value"):
                found[info.name] = dims[0].dim_value
        return found


class Rule(ABC, Generic[Candidate, Match]):
    """One graph rewrite: see the module docstring."""

    #: Names the rule in the counts.
    name: ClassVar[str]

    @abstractmethod
    def candidates(self, view: GraphView) -> Iterable[Candidate]:
        """What the rule could rewrite, in the order it is tried."""

    @abstractmethod
    def match(self, view: GraphView, candidate: Candidate) -> Match | Miss:
        """What :meth:`rewrite` needs to rewrite ``candidate``, or why it does not apply."""

    @abstractmethod
    def rewrite(self, view: GraphView, match: Match) -> None:
        """Rewrite the graph in place (``view`` is the one ``match`` read)."""


@dataclass
class RuleCount:
    """What one rule did: rewrites applied, and candidates left as they were, by reason."""

    applied: int = 0
    misses: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """``{"applied": n, "misses": {reason: count}}``, reasons sorted."""
        return {"applied": self.applied, "misses": dict(sorted(self.misses.items()))}


def _first_match(rule: Rule[Any, Any], view: GraphView, misses: Counter[str]) -> tuple[bool, Any]:
    """The first candidate's match (True, match), or (False, None); each miss before it counted."""
    for candidate in rule.candidates(view):
        found = rule.match(view, candidate)
        if not isinstance(found, Miss):
            return True, found
        misses[found.reason] += 1
    return False, None


def apply_until_none(
    model: onnx.ModelProto, rules: Sequence[Rule[Any, Any]], counts: dict[str, RuleCount]
) -> int:
    """Apply ``rules`` to ``model`` until none applies; return how many rewrites were done.

    Each round tries the rules in order and rewrites the first candidate that the first rule able
    to rewrite anything matches, then starts over on the changed graph (so an earlier rule always
    goes first). ``counts`` gains each rule's rewrites, and the misses of the last round: why each
    candidate left in the final graph stayed as it is.
    """
    done = 0
    while True:
        view = GraphView(model)
        misses = {rule.name: Counter[str]() for rule in rules}
        for rule in rules:
            found, match = _first_match(rule, view, misses[rule.name])
            if found:
                rule.rewrite(view, match)
                counts.setdefault(rule.name, RuleCount()).applied += 1
                done += 1
                break
        else:
            for name, missed in misses.items():
                counts.setdefault(name, RuleCount()).misses = missed
            return done


def apply_to_each(model: onnx.ModelProto, rule: Rule[Any, Any], counts: dict[str, RuleCount]) -> int:
    """Apply ``rule`` to each of its candidates in ``model``, all listed and matched against the
    graph as it was before the first rewrite, in one pass; return how many were rewritten.

    For rules whose rewrites leave each other's matches valid, and whose reading of the graph is
    costly (shape inference) or must not see the rule's own changes.
    """
    count = counts.setdefault(rule.name, RuleCount())
    view = GraphView(model)
    done = 0
    for candidate in list(rule.candidates(view)):
        found = rule.match(view, candidate)
        if isinstance(found, Miss):
            count.misses[found.reason] += 1
            continue
        rule.rewrite(view, found)
        count.applied += 1
        done += 1
    return done
