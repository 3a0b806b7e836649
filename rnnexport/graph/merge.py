"""The rule that merges parallel recurrences into one (:mod:`rnnexport.graph.tidy` says why and when).

Recurrent nodes of one kind that read the same input and lengths, with the same attributes and
constant weights, become one node of the summed hidden size: W and B stack the branches' gate blocks,
R is block-diagonal. The initial states are concatenated into it and the final states split back out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnexport.graph.nodes import attribute, fresh_name, topological_order
from rnnexport.graph.onnx_slots import (
    GATES,
    INITIAL_C,
    INITIAL_H,
    INPUT_COUNT,
    SEQUENCE_LENS,
    STATE_INPUTS,
    Y_C,
    Y_H,
    B,
    P,
    R,
    W,
    X,
    Y,
)
from rnnexport.graph.rules import GraphView, Miss, Rule

__all__ = ["MAX_MERGED_HIDDEN", "MergeParallelRecurrences"]

#: The largest merged hidden size. The merged recurrent weight is block-diagonal, so each step's
#: recurrent GEMM does ``gates * S^2`` multiply-adds for the ``gates * sum(h^2)`` of the separate
#: nodes; past this size the wasted zeros cost more than the per-node overhead they save. Measured
#: on one step, batch 1, one CPU thread (ONNX Runtime 1.32): three LSTMs of 42 units take 34.9 us
#: apart and 31.1 us merged (GRU 27.8 / 25.9), three of 64 take 36.5 us apart and 40.6 us merged
#: (GRU 31.6 / 33.4).
MAX_MERGED_HIDDEN = 128

#: The merged node's output names and each output's split axis (Y is ``[seq, dirs, batch, hidden]``,
#: Y_h and Y_c ``[dirs, batch, hidden]``).
_OUTPUTS = {Y: ("Y", 3), Y_H: ("Y_h", 2), Y_C: ("Y_c", 2)}
_INITIAL = {INITIAL_H: "h", INITIAL_C: "c"}


def _merge_key(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[object, ...] | Miss:
    """What recurrent nodes must share to merge: op, input, lengths, attributes but the hidden size;
    or why the node cannot merge (``node`` is one of :data:`~rnnexport.graph.onnx_slots.GATES`)."""
    inputs = [*node.input, *[""] * (INPUT_COUNT - len(node.input))]
    if any(name not in constants for name in inputs[W : R + 1]) or (inputs[B] and inputs[B] not in constants):
        return Miss("weights not constants")
    if inputs[P]:
        return Miss("peepholes")
    if attribute(node, "layout") or attribute(node, "hidden_size") is None:
        return Miss("batch-first layout, or no hidden_size")
    attributes = tuple(
        sorted(
            (a.name, repr(helper.get_attribute_value(a))) for a in node.attribute if a.name != "hidden_size"
        )
    )
    initial = tuple(bool(inputs[slot]) for slot in STATE_INPUTS)
    return (node.op_type, inputs[X], inputs[SEQUENCE_LENS], initial, attributes)


def _merged_weights(
    op: str, parts: list[onnx.NodeProto], constants: dict[str, onnx.TensorProto], base: str, taken: set[str]
) -> tuple[list[str], list[onnx.TensorProto], list[onnx.NodeProto]]:
    """The names of W, R and B for one node computing ``parts`` side by side, and the initializers
    and constant nodes that build them.

    The file keeps each branch's weights once, as they were (only their dims regrouped by gate);
    the merged tensors, R block-diagonal and mostly zeros, are built by ``Concat``/``Pad`` nodes
    of constants, which ONNX Runtime's constant folding computes once when it loads the model.
    """
    gates = GATES[op]
    hidden = [int(attribute(p, "hidden_size")) for p in parts]
    total = sum(hidden)
    arrays = [[numpy_helper.to_array(constants[p.input[n]]) for p in parts] for n in (W, R)]
    dirs = arrays[0][0].shape[0]
    arrays.append(
        [
            numpy_helper.to_array(constants[p.input[B]])
            if len(p.input) > B and p.input[B]
            else np.zeros((dirs, 2 * gates * h), arrays[0][0].dtype)  # ONNX's default: no bias
            for p, h in zip(parts, hidden, strict=True)
        ]
    )
    blocks = {  # per branch: [dirs, gate blocks, h, columns]
        "W": [w.reshape(dirs, gates, h, -1) for w, h in zip(arrays[0], hidden, strict=True)],
        "R": [r.reshape(dirs, gates, h, h) for r, h in zip(arrays[1], hidden, strict=True)],
        "B": [b.reshape(dirs, 2 * gates, h, 1) for b, h in zip(arrays[2], hidden, strict=True)],
    }
    shapes = {
        "W": [dirs, gates * total, -1],
        "R": [dirs, gates * total, total],
        "B": [dirs, 2 * gates * total],
    }
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    names = []

    def constant(array: np.ndarray, name: str) -> str:
        initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(array), fresh_name(f"{base}/{name}", taken))
        )
        return initializers[-1].name

    for kind, parts_of_kind in blocks.items():
        pieces = [constant(a, f"{kind}{k}") for k, a in enumerate(parts_of_kind)]
        if kind == "R":  # each branch's block, padded with zeros to every column, rows stacked
            start, padded = 0, []
            for k, (piece, h) in enumerate(zip(pieces, hidden, strict=True)):
                pads = constant(
                    np.array([0, 0, 0, start, 0, 0, 0, total - start - h], np.int64), f"R{k}/pads"
                )
                padded.append(fresh_name(f"{base}/R{k}/padded", taken))
                nodes.append(helper.make_node("Pad", [piece, pads], [padded[-1]], name=padded[-1]))
                start += h
            pieces = padded
        joined = fresh_name(f"{base}/{kind}/joined", taken)
        nodes.append(helper.make_node("Concat", pieces, [joined], name=joined, axis=2))
        names.append(fresh_name(f"{base}/{kind}", taken))
        shape = constant(np.array(shapes[kind], np.int64), f"{kind}/shape")
        nodes.append(helper.make_node("Reshape", [joined, shape], [names[-1]], name=names[-1]))
    return names, initializers, nodes


def _join(view: GraphView, parts: list[onnx.NodeProto]) -> onnx.NodeProto | None:
    """The ``Concat`` on the last axis that joins every part's Y and is their only reader, if any."""
    ys = [p.output[Y] if p.output else "" for p in parts]
    if not all(y and view.uses[y] == 1 for y in ys):
        return None
    return next(
        (
            n
            for n in view.nodes
            if n.op_type == "Concat" and attribute(n, "axis") in (3, -1) and sorted(n.input) == sorted(ys)
        ),
        None,
    )


@dataclass(frozen=True)
class _Merge:
    nodes: list[onnx.NodeProto]  # the graph's nodes after the merge, in order
    initializers: list[onnx.TensorProto]  # to add


#: A group of recurrent nodes that may merge: what they share, or why the one node in it cannot merge.
_Group = tuple[tuple[object, ...] | Miss, list[onnx.NodeProto]]


class MergeParallelRecurrences(Rule[_Group, _Merge]):
    """Parallel recurrences of one kind become one node (module docstring)."""

    name = "merge_parallel_recurrences"

    def candidates(self, view: GraphView) -> list[_Group]:
        """The recurrent nodes, grouped by what they must share to merge (first seen, first), then
        each that cannot merge, alone."""
        groups: dict[tuple[object, ...], list[onnx.NodeProto]] = {}
        alone: list[_Group] = []
        for node in view.nodes:
            if node.op_type in GATES:
                key = _merge_key(node, view.constants)
                if isinstance(key, Miss):
                    alone.append((key, [node]))
                else:
                    groups.setdefault(key, []).append(node)
        return [*groups.items(), *alone]

    def match(self, view: GraphView, candidate: _Group) -> _Merge | Miss:
        """The merged graph's nodes and new initializers, or why the group does not merge."""
        key, parts = candidate
        if isinstance(key, Miss):
            return key
        constants = view.constants
        shapes = {tuple(constants[p.input[W]].dims[::2]) for p in parts}  # (dirs, input)
        dtypes = {constants[p.input[n]].data_type for p in parts for n in (W, R)}
        if len(parts) < 2:
            return Miss("nothing to merge with")
        if len(shapes) != 1 or len(dtypes) != 1:
            return Miss("weights of different shapes or types")
        if sum(int(attribute(p, "hidden_size")) for p in parts) > MAX_MERGED_HIDDEN:
            return Miss(f"more than {MAX_MERGED_HIDDEN} merged units")
        # Keep the branch order of a Concat that joins every Y (it then goes: the merged Y is it).
        join = _join(view, parts)
        if join is not None:
            ys = [p.output[Y] for p in parts]
            parts = [parts[ys.index(y)] for y in join.input]
        added, initializers, merged = _merged_node(view, str(key[0]), parts, join)
        gone = {id(p) for p in parts} | ({id(join)} if join is not None else set())
        first = next(i for i, n in enumerate(view.nodes) if id(n) in gone)
        kept = [n for n in view.nodes if id(n) not in gone]
        ordered, stuck = topological_order([*kept[:first], *added, merged, *kept[first:]])
        if stuck:
            return Miss("one branch reads another's output")
        return _Merge(ordered, initializers)

    def rewrite(self, view: GraphView, match: _Merge) -> None:
        """Install the merged graph's nodes and the new initializers."""
        del view.graph.node[:]
        view.graph.node.extend(match.nodes)
        view.graph.initializer.extend(match.initializers)


def _merged_node(
    view: GraphView, op: str, parts: list[onnx.NodeProto], join: onnx.NodeProto | None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], onnx.NodeProto]:
    """The nodes that feed and split the merged recurrence, its initializers, and the node itself."""
    hidden = [int(attribute(p, "hidden_size")) for p in parts]
    taken = {n.name for n in view.nodes} | {o for n in view.nodes for o in n.output}
    taken |= {i.name for i in view.graph.input} | {t.name for t in view.graph.initializer}
    base = f"{parts[0].name or parts[0].output[Y]}/merged"
    weights, initializers, added = _merged_weights(op, parts, view.constants, base, taken)
    sizes = numpy_helper.from_array(np.array(hidden, np.int64), fresh_name(f"{base}/split", taken))
    initializers.append(sizes)
    inputs = [parts[0].input[X], *weights, *parts[0].input[SEQUENCE_LENS : SEQUENCE_LENS + 1]]
    for slot in STATE_INPUTS if op == "LSTM" else STATE_INPUTS[:1]:
        if len(parts[0].input) <= slot or not parts[0].input[slot]:  # none given (the key: alike)
            break
        while len(inputs) < slot:
            inputs.append("")
        joined = fresh_name(f"{base}/initial_{_INITIAL[slot]}", taken)
        added.append(
            helper.make_node(
                "Concat", [p.input[slot] for p in parts], [joined], name=fresh_name(joined, taken), axis=2
            )
        )
        inputs.append(joined)
    outputs = []
    for slot in (Y, Y_H, Y_C) if op == "LSTM" else (Y, Y_H):
        names = [p.output[slot] if len(p.output) > slot else "" for p in parts]
        read = [bool(n) and view.uses[n] > 0 for n in names]
        if slot == Y and join is not None:
            outputs.append(join.output[0])
            continue
        if not any(read):
            outputs.append("")
            continue
        label, axis = _OUTPUTS[slot]
        merged = fresh_name(f"{base}/{label}", taken)
        outputs.append(merged)
        parts_out = [
            n if ok else fresh_name(f"{merged}/unused", taken) for n, ok in zip(names, read, strict=True)
        ]
        added.append(
            helper.make_node(
                "Split", [merged, sizes.name], parts_out, name=fresh_name(merged, taken), axis=axis
            )
        )
    while outputs and not outputs[-1]:
        outputs.pop()
    node = helper.make_node(op, inputs, outputs, name=fresh_name(base, taken))
    node.attribute.extend(a for a in parts[0].attribute if a.name != "hidden_size")
    node.attribute.append(helper.make_attribute("hidden_size", sum(hidden)))
    return added, initializers, node
