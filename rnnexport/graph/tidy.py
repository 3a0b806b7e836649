"""Graph rewrites onnxsim lacks, for the shapes recurrent exports take. Each keeps every value.

**Layout nodes move after a Concat, and before a Split.** Parallel recurrent branches export as one
ONNX ``LSTM``/``GRU`` per branch, each followed by the ``Squeeze`` and ``Transpose`` that turn ONNX's
``[seq, dirs, batch, hidden]`` into the batch-first ``[batch, seq, hidden]`` the module returns,
then a ``Concat`` of the branches::

    Concat(Transpose(Squeeze(Y1)), Transpose(Squeeze(Y2)), ...)  ->  Transpose(Squeeze(Concat(Y1, Y2, ...)))

(a transpose or squeeze of each part, then joining, equals joining and then one transpose or
squeeze, with the axis mapped): two layout nodes instead of two per branch. ``Unsqueeze`` moves the
same way, and a ``Split`` whose every part goes through the same layout node takes that node once,
before it. Only a layout node whose output feeds that ``Concat`` (or comes from that ``Split``)
alone moves.

**Empty Concat inputs go.** ``pad_packed_sequence(..., total_length=x.size(1))`` exports as a
``Concat`` of the recurrent output with zeros of ``total_length - steps`` steps. onnxsim proves that
count is 0 but keeps the ``Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape`` that builds
the empty tensor, and the ``Concat`` itself: six nodes that add nothing. An input that is a
``ConstantOfShape`` whose shape is a constant 0 on the ``Concat`` axis is dropped (a ``Concat`` left
with one input becomes an ``Identity``, which ONNX Runtime removes at load), and so are the nodes
that only computed it.

**Parallel recurrences merge** (``merge_recurrences=True``, streaming builds). Recurrent nodes of one
kind that read the same input and lengths, with the same attributes and constant weights, are one
recurrence of the summed hidden size: each gate block of W and B stacks the branches' blocks, and
R is block-diagonal, so no branch reads another's state (a zero weight adds an exact zero). The
initial states are concatenated into it and the final states split back out; the ``Concat`` that
joined the branches' outputs is the merged node's output itself. Each branch keeps its own state
tensors, so the state contract does not change. Only up to :data:`MAX_MERGED_HIDDEN` units, where
the wasted zeros cost less than the nodes they save; never when one branch reads another's output.

**Each branch squeezes before the join** (the portable form). The hoist leaves
``Squeeze(Concat(Y1, Y2, ...), axis=3)`` on the recurrences' own 4-D outputs when they are not
merged. OpenVINO's ONNX frontend (2026.4, ``core.read_model``) computes that ``Concat`` wrongly at
batch > 1 (errors of 0.2-0.8 on the parallel architectures) while ONNX Runtime and the ONNX
reference evaluator compute it right; ``Concat(Squeeze(Y1), Squeeze(Y2), ..., axis=2)`` is exact on
both. So a Squeeze whose input joins recurrent outputs goes back to each branch, the ``Concat``
then joining 3-D tensors: one ``Squeeze`` per branch instead of one, which costs nothing measurable
on ONNX Runtime (``rnnexport bench``, README "Other runtimes"). Merged recurrences have no such ``Concat``.

On a one-step streaming call ONNX Runtime's per-node overhead (1-2 us a node on one CPU core) is
most of the time, so each node saved is time saved on every call; the pipeline verifies the graph
that ships either way.

Each rewrite is a named rule (:class:`~rnnexport.graph.rules.Rule`), in its own module:
:mod:`~rnnexport.graph.empty_concat` (empty inputs), :mod:`~rnnexport.graph.layout` (the hoist, the
Split's mirror of it, the squeeze per branch), :mod:`~rnnexport.graph.merge`. :func:`tidy` applies
them and reports, per rule, how often it applied and why it did not elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from rnnexport.graph.empty_concat import DropEmptyConcatInputs
from rnnexport.graph.layout import HoistLayoutAfterConcat, SinkLayoutBeforeSplit, SqueezeBeforeJoin
from rnnexport.graph.merge import MergeParallelRecurrences
from rnnexport.graph.nodes import reads
from rnnexport.graph.rules import Rule, RuleCount, apply_to_each, apply_until_none

__all__ = ["TidyReport", "tidy", "tidy_graph"]


@dataclass(frozen=True)
class TidyReport:
    """What :func:`tidy` did: nodes saved, and per rule (by name, in the order they ran) the rewrites
    it applied and why it left the other candidates as they were."""

    nodes_saved: int
    rules: dict[str, RuleCount]

    def lines(self) -> list[str]:
        """One line per rule, for a build's verbose report: what it applied, and why it left the
        candidates of the final graph as they were."""
        lines = []
        for name, count in self.rules.items():
            misses = ", ".join(f"{reason} x{n}" for reason, n in sorted(count.misses.items()))
            lines.append(
                f"rule {name}: applied {count.applied}" + (f"; left as is: {misses}" if misses else "")
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        """``{"nodes_saved": n, "rules": {name: {"applied": n, "misses": {reason: n}}}}``."""
        return {"nodes_saved": self.nodes_saved, "rules": {k: v.to_json() for k, v in self.rules.items()}}


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Nodes none of whose outputs is read, repeatedly; then initializers nothing reads."""
    while True:
        used = set(reads(graph))
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    listed = {i.name for i in graph.input}
    initializers = [t for t in graph.initializer if t.name in used or t.name in listed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def tidy(model: onnx.ModelProto, *, merge_recurrences: bool = False) -> TidyReport:
    """Apply the rewrites (see the module docstring) in place; say what they did.

    ``merge_recurrences``: also merge parallel recurrences (opset 13 and later), for graphs called
    one step at a time.
    """
    graph = model.graph
    before = len(graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    merge = merge_recurrences and opset >= 13  # Split, Pad and Squeeze take their sizes as inputs
    counts: dict[str, RuleCount] = {}
    changed = apply_to_each(model, DropEmptyConcatInputs(), counts) > 0
    # Layout nodes first move after the branches' Concat, so that it joins the recurrences' own
    # outputs and the merge can take it over; each rule then runs until none applies.
    first: list[Rule[Any, Any]] = [HoistLayoutAfterConcat()]
    first += [MergeParallelRecurrences()] if merge else []
    first += [SinkLayoutBeforeSplit()]
    changed = apply_until_none(model, first, counts) > 0 or changed
    changed = apply_until_none(model, [SqueezeBeforeJoin()], counts) > 0 or changed
    if changed:
        _drop_dead(graph)
    return TidyReport(before - len(graph.node), counts)


def tidy_graph(model: onnx.ModelProto, *, merge_recurrences: bool = False) -> int:
    """Apply the rewrites (see the module docstring) in place; return the number of nodes saved
    (:func:`tidy` says what each rule did)."""
    return tidy(model, merge_recurrences=merge_recurrences).nodes_saved
