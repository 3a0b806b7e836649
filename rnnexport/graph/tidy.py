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
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper

__all__ = ["tidy_graph"]


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _squeeze_axes(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[int, ...] | None:
    """A Squeeze's axes when they are explicit and non-negative (else it is left alone)."""
    if len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        axes = None if tensor is None else [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
    else:
        value = _attribute(node, "axes")  # before opset 13
        axes = None if value is None else [int(v) for v in value]
    if not axes or min(axes) < 0:
        return None
    return tuple(sorted(axes))


def _key(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[object, ...] | None:
    """What two layout nodes must share to move together: op and permutation or axes."""
    if node.op_type == "Transpose":
        perm = _attribute(node, "perm")
        return None if perm is None else ("Transpose", tuple(perm))
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = _squeeze_axes(node, constants)
        return None if axes is None else (node.op_type, axes)
    return None


def _inner_axis(key: tuple[object, ...], axis: int) -> int | None:
    """The axis on a layout node's input that becomes ``axis`` on its output (None: no such axis,
    or not known without the rank)."""
    op, detail = key
    assert isinstance(detail, tuple)
    if op == "Transpose":
        return int(detail[axis % len(detail)])
    if axis < 0:  # the rank is not known here
        return None
    if op == "Unsqueeze":
        return None if axis in detail else axis - sum(1 for u in detail if int(u) < axis)
    for squeezed in detail:  # sorted: each squeezed axis at or before the target shifts it by one
        if int(squeezed) <= axis:
            axis += 1
    return axis


def _outer_axis(key: tuple[object, ...], axis: int) -> int | None:
    """The axis on a layout node's output that ``axis`` of its input becomes (the inverse)."""
    op, detail = key
    assert isinstance(detail, tuple)
    if axis < 0:
        return None
    if op == "Transpose":
        return list(detail).index(axis) if axis in detail else None
    if op == "Squeeze":
        return None if axis in detail else axis - sum(1 for u in detail if int(u) < axis)
    for inserted in detail:  # Unsqueeze: sorted, as in _inner_axis for Squeeze
        if int(inserted) <= axis:
            axis += 1
    return axis


def _reads(graph: onnx.GraphProto) -> Counter[str]:
    """How often each value is read: by nodes, as a graph output, and inside nested subgraphs
    (an ``If`` or ``Loop`` body reads outer values without listing them as the node's inputs)."""
    counts: Counter[str] = Counter(o.name for o in graph.output)
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                counts.update(_reads(sub))
    return counts


def _fresh(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``...: the first name not in ``taken`` (which it joins)."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _splice(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], *, at: int, new: list[onnx.NodeProto], drop: set[int]
) -> None:
    """Set the graph's nodes to ``nodes`` with ``nodes[at]`` replaced by ``new`` and the nodes at
    the indices in ``drop`` left out. The order stays topological when ``new`` reads only values
    computed before ``nodes[at]``, and computes what it and the dropped nodes computed."""
    rebuilt: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        if i == at:
            rebuilt += new
        elif i not in drop:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)


def _hoist_once(graph: onnx.GraphProto) -> bool:
    """Apply the rewrite to the first Concat it fits; whether it did."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    uses = _reads(graph)
    constants = _constants(graph)
    for c, concat in enumerate(nodes):
        if concat.op_type != "Concat" or len(concat.input) < 2:
            continue
        parts = [producer.get(name) for name in concat.input]
        if any(i is None or uses[name] != 1 for i, name in zip(parts, concat.input, strict=True)):
            continue
        drop = {i for i in parts if i is not None}
        layout = [nodes[i] for i in sorted(drop)]
        keys = {_key(n, constants) for n in layout}
        if len(drop) != len(parts) or len(keys) != 1 or None in keys:
            continue
        (key,) = keys
        assert key is not None
        axis = _inner_axis(key, int(_attribute(concat, "axis")))
        if axis is None:
            continue
        taken = {n.name for n in nodes} | set(producer) | {i.name for i in graph.input}
        joined = _fresh(f"{concat.output[0]}/joined", taken)
        inputs = [nodes[i].input[0] for i in parts if i is not None]  # in the Concat's order
        new_concat = helper.make_node("Concat", inputs, [joined], name=_fresh(joined, taken), axis=axis)
        first = layout[0]
        moved = helper.make_node(
            first.op_type,
            [joined, *first.input[1:]],
            list(concat.output),
            name=_fresh(f"{first.name or first.output[0]}/after_concat", taken),
        )
        moved.attribute.extend(first.attribute)
        _splice(graph, nodes, at=c, new=[new_concat, moved], drop=drop)
        return True
    return False


_RECURRENT = ("LSTM", "GRU", "RNN")


def _squeeze_first_once(graph: onnx.GraphProto) -> bool:
    """``Squeeze(Concat(Y1, Y2, ...))`` of recurrent outputs becomes ``Concat(Squeeze(Y1), ...)``
    (module docstring: the form every runtime computes right); whether it rewrote one."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    uses = _reads(graph)
    constants = _constants(graph)
    for s, squeeze in enumerate(nodes):
        key = _key(squeeze, constants)
        if key is None or key[0] != "Squeeze" or squeeze.input[0] not in producer:
            continue
        c = producer[squeeze.input[0]]
        concat = nodes[c]
        if concat.op_type != "Concat" or uses[concat.output[0]] != 1 or len(concat.input) < 2:
            continue
        parts = [producer.get(name) for name in concat.input]
        recurrent = all(
            i is not None and nodes[i].op_type in _RECURRENT and nodes[i].output[0] == name
            for i, name in zip(parts, concat.input, strict=True)
        )
        axis = _outer_axis(key, int(_attribute(concat, "axis")))
        if not recurrent or axis is None:
            continue
        taken = {n.name for n in nodes} | set(producer) | {i.name for i in graph.input}
        taken |= {t.name for t in graph.initializer}
        squeezed = []
        for name in concat.input:
            out = _fresh(f"{name}/squeezed", taken)
            node = helper.make_node("Squeeze", [name, *squeeze.input[1:]], [out], name=out)
            node.attribute.extend(squeeze.attribute)
            squeezed.append(node)
        joined = helper.make_node(
            "Concat",
            [n.output[0] for n in squeezed],
            list(squeeze.output),
            name=_fresh(f"{squeeze.output[0]}/joined", taken),
            axis=axis,
        )
        # The new nodes read the recurrent outputs, all computed before the Concat: put them there.
        _splice(graph, nodes, at=c, new=[*squeezed, joined], drop={s})
        return True
    return False


def _sink_split_once(graph: onnx.GraphProto) -> bool:
    """The mirror of :func:`_hoist_once`: a Split each of whose parts goes to its own layout node,
    all alike, becomes that layout node once and then the Split (axis mapped); whether it did."""
    nodes = list(graph.node)
    uses = _reads(graph)
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(i)
    constants = _constants(graph)
    for s, split in enumerate(nodes):
        if split.op_type != "Split" or len(split.output) < 2 or not all(split.output):
            continue
        layout = [readers.get(name, []) for name in split.output]
        if any(len(r) != 1 or uses[name] != 1 for r, name in zip(layout, split.output, strict=True)):
            continue
        movers = [nodes[r[0]] for r in layout]
        keys = {_key(n, constants) for n in movers}
        if len({r[0] for r in layout}) != len(movers) or len(keys) != 1 or None in keys:
            continue
        if any(n.input[0] != name for n, name in zip(movers, split.output, strict=True)):
            continue
        (key,) = keys
        assert key is not None
        axis = _outer_axis(key, int(_attribute(split, "axis") or 0))
        if axis is None:
            continue
        taken = {n.name for n in nodes} | {o for n in nodes for o in n.output} | {i.name for i in graph.input}
        first = movers[0]
        laid = _fresh(f"{split.input[0]}/{first.op_type.lower()}", taken)
        moved = helper.make_node(
            first.op_type, [split.input[0], *first.input[1:]], [laid], name=_fresh(laid, taken)
        )
        moved.attribute.extend(first.attribute)
        new_split = helper.make_node(
            "Split",
            [laid, *split.input[1:]],
            [n.output[0] for n in movers],
            name=_fresh(f"{split.name or split.output[0]}/after_{first.op_type.lower()}", taken),
        )
        new_split.attribute.extend(a for a in split.attribute if a.name != "axis")
        new_split.attribute.append(helper.make_attribute("axis", axis))
        drop = {r[0] for r in layout}
        _splice(graph, nodes, at=s, new=[moved, new_split], drop=drop)
        return True
    return False


#: Gate blocks per recurrent op, in ONNX's order (LSTM i, o, f, c; GRU z, r, h; RNN one).
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}

#: The largest merged hidden size. The merged recurrent weight is block-diagonal, so each step's
#: recurrent GEMM does ``gates * S^2`` multiply-adds for the ``gates * sum(h^2)`` of the separate
#: nodes; past this size the wasted zeros cost more than the per-node overhead they save. Measured
#: on one step, batch 1, one CPU thread (ONNX Runtime 1.32): three LSTMs of 42 units take 34.9 us
#: apart and 31.1 us merged (GRU 27.8 / 25.9), three of 64 take 36.5 us apart and 40.6 us merged
#: (GRU 31.6 / 33.4).
MAX_MERGED_HIDDEN = 128


def _merge_key(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[object, ...] | None:
    """What recurrent nodes must share to merge: op, input, lengths, attributes but the hidden size.

    None for a node that cannot merge: weights that are not constants, peepholes, batch-first
    ``layout``, or an op this rewrite does not know.
    """
    if node.op_type not in GATES:
        return None
    inputs = [*node.input, *[""] * (8 - len(node.input))]
    if any(name not in constants for name in inputs[1:3]) or (inputs[3] and inputs[3] not in constants):
        return None
    if inputs[7] or _attribute(node, "layout") or _attribute(node, "hidden_size") is None:
        return None
    attributes = tuple(
        sorted(
            (a.name, repr(helper.get_attribute_value(a))) for a in node.attribute if a.name != "hidden_size"
        )
    )
    initial = tuple(bool(name) for name in inputs[5:7])
    return (node.op_type, inputs[0], inputs[4], initial, attributes)


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
    hidden = [int(_attribute(p, "hidden_size")) for p in parts]
    total = sum(hidden)
    arrays = [[numpy_helper.to_array(constants[p.input[n]]) for p in parts] for n in (1, 2)]
    dirs = arrays[0][0].shape[0]
    arrays.append(
        [
            numpy_helper.to_array(constants[p.input[3]])
            if len(p.input) > 3 and p.input[3]
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
            numpy_helper.from_array(np.ascontiguousarray(array), _fresh(f"{base}/{name}", taken))
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
                padded.append(_fresh(f"{base}/R{k}/padded", taken))
                nodes.append(helper.make_node("Pad", [piece, pads], [padded[-1]], name=padded[-1]))
                start += h
            pieces = padded
        joined = _fresh(f"{base}/{kind}/joined", taken)
        nodes.append(helper.make_node("Concat", pieces, [joined], name=joined, axis=2))
        names.append(_fresh(f"{base}/{kind}", taken))
        shape = constant(np.array(shapes[kind], np.int64), f"{kind}/shape")
        nodes.append(helper.make_node("Reshape", [joined, shape], [names[-1]], name=names[-1]))
    return names, initializers, nodes


def _toposorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """``nodes`` in an order where each reads only values already computed (those no node
    computes are graph inputs, initializers or outer values), keeping the given order where it
    can; None if they form a cycle."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits = [{producer[name] for name in n.input if name in producer} for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, needs in enumerate(waits):
        for j in needs:
            readers.setdefault(j, []).append(i)
    missing = [len(needs) for needs in waits]
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    ordered: list[onnx.NodeProto] = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in readers.get(i, []):
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(ready, j)
    return ordered if len(ordered) == len(nodes) else None


def _merge_once(graph: onnx.GraphProto) -> bool:
    """Merge the first group of parallel recurrences it finds (module docstring); whether it did."""
    nodes = list(graph.node)
    constants = _constants(graph)
    uses = _reads(graph)
    groups: dict[tuple[object, ...], list[onnx.NodeProto]] = {}
    for node in nodes:
        key = _merge_key(node, constants)
        if key is not None:
            groups.setdefault(key, []).append(node)
    for key, parts in groups.items():
        op = str(key[0])
        shapes = {tuple(constants[p.input[1]].dims[::2]) for p in parts}  # (dirs, input)
        dtypes = {constants[p.input[n]].data_type for p in parts for n in (1, 2)}
        hidden = [int(_attribute(p, "hidden_size")) for p in parts]
        if len(parts) < 2 or len(shapes) != 1 or len(dtypes) != 1 or sum(hidden) > MAX_MERGED_HIDDEN:
            continue
        # Keep the branch order of a Concat that joins every Y (it then goes: the merged Y is it).
        ys = [p.output[0] if p.output else "" for p in parts]
        joinable = all(y and uses[y] == 1 for y in ys)  # each Y read once: by that Concat
        join = next(
            (
                n
                for n in nodes
                if joinable
                and n.op_type == "Concat"
                and _attribute(n, "axis") in (3, -1)
                and sorted(n.input) == sorted(ys)
            ),
            None,
        )
        if join is not None:
            parts = [parts[ys.index(y)] for y in join.input]
            hidden = [int(_attribute(p, "hidden_size")) for p in parts]
        taken = {n.name for n in nodes} | {o for n in nodes for o in n.output}
        taken |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
        base = f"{parts[0].name or parts[0].output[0]}/merged"
        weights, initializers, added = _merged_weights(op, parts, constants, base, taken)
        sizes = numpy_helper.from_array(np.array(hidden, np.int64), _fresh(f"{base}/split", taken))
        initializers.append(sizes)
        inputs = [parts[0].input[0], *weights, *parts[0].input[4:5]]
        for slot in (5, 6) if op == "LSTM" else (5,):
            if len(parts[0].input) <= slot or not parts[0].input[slot]:  # none given (the key: alike)
                break
            while len(inputs) < slot:
                inputs.append("")
            joined = _fresh(f"{base}/initial_{'hc'[slot - 5]}", taken)
            added.append(
                helper.make_node(
                    "Concat", [p.input[slot] for p in parts], [joined], name=_fresh(joined, taken), axis=2
                )
            )
            inputs.append(joined)
        outputs = []
        for slot in range(3 if op == "LSTM" else 2):
            names = [p.output[slot] if len(p.output) > slot else "" for p in parts]
            read = [bool(n) and uses[n] > 0 for n in names]
            if slot == 0 and join is not None:
                outputs.append(join.output[0])
                continue
            if not any(read):
                outputs.append("")
                continue
            merged = _fresh(f"{base}/{['Y', 'Y_h', 'Y_c'][slot]}", taken)
            outputs.append(merged)
            parts_out = [
                n if ok else _fresh(f"{merged}/unused", taken) for n, ok in zip(names, read, strict=True)
            ]
            split = helper.make_node(
                "Split",
                [merged, sizes.name],
                parts_out,
                name=_fresh(merged, taken),
                axis=3 if slot == 0 else 2,
            )
            added.append(split)
        while outputs and not outputs[-1]:
            outputs.pop()
        merged_node = helper.make_node(op, inputs, outputs, name=_fresh(base, taken))
        merged_node.attribute.extend(a for a in parts[0].attribute if a.name != "hidden_size")
        merged_node.attribute.append(helper.make_attribute("hidden_size", sum(hidden)))
        gone = {id(p) for p in parts} | ({id(join)} if join is not None else set())
        first = next(i for i, n in enumerate(nodes) if id(n) in gone)
        kept = [n for n in nodes if id(n) not in gone]
        ordered = _toposorted([*kept[:first], *added, merged_node, *kept[first:]])
        if ordered is None:  # one branch's initial state depends on another branch's output
            continue
        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(initializers)
        return True
    return False


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and ``Constant`` node values, by name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        value = _attribute(node, "value") if node.op_type == "Constant" and node.output else None
        if isinstance(value, onnx.TensorProto):
            found[node.output[0]] = value
    return found


def _empty_on(
    name: str,
    axis: int,
    producer: dict[str, onnx.NodeProto],
    constants: dict[str, onnx.TensorProto],
    lengths: dict[str, int],
) -> bool:
    """Whether ``name`` is a ConstantOfShape whose shape is a constant 0 at ``axis``.

    The shape is a 1-D tensor, often a Concat of pieces (constants, ``Unsqueeze`` of a computed
    size); the piece that holds position ``axis`` must be a constant, and every piece before it of
    known length (``lengths``: inferred 1-D lengths, and the constants' own).
    """
    node = producer.get(name)
    if node is None or node.op_type != "ConstantOfShape" or not node.input:
        return False
    shape = node.input[0]
    pieces = (
        list(producer[shape].input) if shape in producer and producer[shape].op_type == "Concat" else [shape]
    )
    size = {p: (int(np.prod(constants[p].dims)) if p in constants else lengths.get(p)) for p in pieces}
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


def _drop_empty_inputs(model: onnx.ModelProto) -> bool:
    """Remove every provably empty input of every Concat; whether any was removed."""
    graph = model.graph
    zeros = {o for n in graph.node if n.op_type == "ConstantOfShape" for o in n.output}
    concats = [
        n for n in graph.node if n.op_type == "Concat" and len(n.input) > 1 and zeros.intersection(n.input)
    ]
    if not concats:
        return False
    lengths = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except (ValueError, EncodeError, onnx.shape_inference.InferenceError):
        # Inference serializes the model, which protobuf refuses past 2 GiB (weights in memory
        # before they go to external data). Without inferred lengths, only a 0 at the start of a
        # shape, or after constant pieces, can be located; the rest is left as it is.
        inferred = onnx.GraphProto()
    for info in [*inferred.value_info, *inferred.input, *inferred.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 1 and dims[0].HasField("dim_value"):
            lengths[info.name] = dims[0].dim_value
    producer = {out: node for node in graph.node for out in node.output}
    constants = _constants(graph)
    changed = False
    for concat in concats:
        axis = int(_attribute(concat, "axis"))
        kept = [n for n in concat.input if not _empty_on(n, axis, producer, constants, lengths)]
        if len(kept) == len(concat.input) or not kept:
            continue
        changed = True
        del concat.input[:]
        concat.input.extend(kept)
        if len(kept) == 1:
            concat.op_type = "Identity"
            del concat.attribute[:]
    return changed


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Nodes none of whose outputs is read, repeatedly; then initializers nothing reads."""
    while True:
        used = set(_reads(graph))
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    listed = {i.name for i in graph.input}
    initializers = [t for t in graph.initializer if t.name in used or t.name in listed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def tidy_graph(model: onnx.ModelProto, *, merge_recurrences: bool = False) -> int:
    """Apply the rewrites (see the module docstring) in place; return the number of nodes saved.

    ``merge_recurrences``: also merge parallel recurrences (opset 13 and later), for graphs called
    one step at a time.
    """
    graph = model.graph
    before = len(graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    merge = merge_recurrences and opset >= 13  # Split, Pad and Squeeze take their sizes as inputs
    changed = _drop_empty_inputs(model)
    # Layout nodes first move after the branches' Concat, so that it joins the recurrences' own
    # outputs and the merge can take it over; each rewrite then runs until none applies.
    while _hoist_once(graph) or (merge and _merge_once(graph)) or _sink_split_once(graph):
        changed = True
    while _squeeze_first_once(graph):
        changed = True
    if changed:
        _drop_dead(graph)
    return before - len(graph.node)
