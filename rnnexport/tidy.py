"""Two graph rewrites onnxsim lacks, for the shapes recurrent exports take. Both keep every value.

**Layout nodes move after a Concat.** Parallel recurrent branches export as one ONNX ``LSTM``/``GRU``
per branch, each followed by the ``Squeeze`` and ``Transpose`` that turn ONNX's
``[seq, dirs, batch, hidden]`` into the batch-first ``[batch, seq, hidden]`` the module returns,
then a ``Concat`` of the branches::

    Concat(Transpose(Squeeze(Y1)), Transpose(Squeeze(Y2)), ...)  ->  Transpose(Squeeze(Concat(Y1, Y2, ...)))

(a transpose or squeeze of each part, then joining, equals joining and then one transpose or
squeeze, with the axis mapped): two layout nodes instead of two per branch. Only a layout node whose
output feeds that ``Concat`` alone moves.

**Empty Concat inputs go.** ``pad_packed_sequence(..., total_length=x.size(1))`` exports as a
``Concat`` of the recurrent output with zeros of ``total_length - steps`` steps. onnxsim proves that
count is 0 but keeps the ``Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape`` that builds
the empty tensor, and the ``Concat`` itself: six nodes that add nothing. An input that is a
``ConstantOfShape`` whose shape is a constant 0 on the ``Concat`` axis is dropped (a ``Concat`` left
with one input becomes an ``Identity``, which ONNX Runtime removes at load), and so are the nodes
that only computed it.

On a one-step streaming call ONNX Runtime's per-node overhead (1-2 us a node on one CPU core) is
most of the time, so each node saved is time saved on every call; the pipeline verifies the graph
that ships either way.
"""

from __future__ import annotations

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
    if node.op_type == "Squeeze":
        axes = _squeeze_axes(node, constants)
        return None if axes is None else ("Squeeze", axes)
    return None


def _inner_axis(key: tuple[object, ...], axis: int) -> int | None:
    """The Concat axis on the layout nodes' inputs that gives ``axis`` on their outputs."""
    op, detail = key
    if op == "Transpose":
        perm = detail
        assert isinstance(perm, tuple)
        return int(perm[axis % len(perm)])
    assert isinstance(detail, tuple)
    if axis < 0:  # the input rank is not known here
        return None
    for squeezed in detail:  # sorted: each squeezed axis at or before the target shifts it by one
        if int(squeezed) <= axis:
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
        rebuilt: list[onnx.NodeProto] = []
        for i, node in enumerate(nodes):
            if i == c:
                rebuilt += [new_concat, moved]
            elif i not in drop:
                rebuilt.append(node)
        del graph.node[:]
        graph.node.extend(rebuilt)
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


def tidy_graph(model: onnx.ModelProto) -> int:
    """Apply both rewrites (see the module docstring) in place; return the number of nodes saved."""
    before = len(model.graph.node)
    changed = _drop_empty_inputs(model)
    while _hoist_once(model.graph):
        changed = True
    if changed:
        _drop_dead(model.graph)
    return before - len(model.graph.node)
