"""Reading and reordering an ONNX graph's nodes: the helpers every graph rewrite in rnnexport shares.

:func:`topological_order` is the one topological sort (the rewrites' splices, and the float16
converter's appended ``Cast`` nodes); :func:`constants_to_initializers` the one turning of
``Constant`` nodes into initializers (for the int8 quantizer, which quantizes initializers only, and
for external data, which ONNX Runtime reads for initializers only).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import onnx
from onnx import helper

__all__ = [
    "attribute",
    "constant_tensors",
    "constants_to_initializers",
    "fresh_name",
    "reads",
    "splice",
    "topological_order",
]


def attribute(node: onnx.NodeProto, name: str) -> Any:
    """The value of ``node``'s attribute ``name``, or None where it has none."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and ``Constant`` node values, by name."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        value = attribute(node, "value") if node.op_type == "Constant" and node.output else None
        if isinstance(value, onnx.TensorProto):
            found[node.output[0]] = value
    return found


def reads(graph: onnx.GraphProto) -> Counter[str]:
    """How often each value is read: by nodes, as a graph output, and inside nested subgraphs
    (an ``If`` or ``Loop`` body reads outer values without listing them as the node's inputs)."""
    counts: Counter[str] = Counter(o.name for o in graph.output)
    for node in graph.node:
        counts.update(name for name in node.input if name)
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                counts.update(reads(sub))
    return counts


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``...: the first name not in ``taken`` (which it joins)."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def splice(
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


def topological_order(
    nodes: Sequence[onnx.NodeProto], *, available: Collection[str] | None = None, by_level: bool = False
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """``nodes`` in an order where each reads only values already there, and the nodes that never can.

    A value is there from the start when it is in ``available`` (graph inputs and initializers), or,
    with ``available`` None, when no node in ``nodes`` computes it (a graph input, an initializer, a
    subgraph's outer value); otherwise once the first node that computes it has run. An empty name
    (an optional input left out) is always there.

    Of the nodes ready to run, the one given first runs first, so a graph already in order keeps its
    order. ``by_level`` orders by depth instead: every node that can run at the start, in the given
    order, then every node that reads only those, and so on.

    Returns ``(ordered, stuck)``: ``stuck`` holds, in the given order, the nodes that wait for a value
    that never comes (a cycle, or a value nothing computes that ``available`` lacks).
    """
    computed = {name for node in nodes for name in node.output if name}
    if available is None:
        there = {name for node in nodes for name in node.input if name not in computed}
    else:
        there = set(available)
    there.add("")
    missing = [{name for name in node.input if name not in there} for node in nodes]
    waiting: dict[str, list[int]] = {}
    for i, names in enumerate(missing):
        for name in names:
            waiting.setdefault(name, []).append(i)
    # (level, index): level stays 0 unless by_level; a node becomes ready one level past the node
    # whose output was the last it waited for, and the heap hands nodes out by level, then index.
    ready = [(0, i) for i, names in enumerate(missing) if not names]
    heapq.heapify(ready)
    placed = [False] * len(nodes)
    ordered: list[onnx.NodeProto] = []
    while ready:
        level, i = heapq.heappop(ready)
        ordered.append(nodes[i])
        placed[i] = True
        for name in nodes[i].output:
            for j in waiting.pop(name, []):  # popped: a second node computing it changes nothing
                missing[j].discard(name)
                if not missing[j]:
                    heapq.heappush(ready, (level + 1 if by_level else 0, j))
    return ordered, [node for i, node in enumerate(nodes) if not placed[i]]


def constants_to_initializers(graph: onnx.GraphProto, *, min_bytes: int = 0) -> int:
    """Replace each top-level ``Constant`` node whose ``value`` is a tensor of at least ``min_bytes``
    bytes of raw data by an initializer named like its output (the same value under the same name:
    the graph computes the same); return how many were replaced.

    The initializers follow the graph's own, in node order. With ``min_bytes`` above 0, a tensor that
    holds its values in a typed field (``float_data``...) rather than raw data stays a node.
    """
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1  # a Constant holds one value attribute; anything else is left
            and value is not None
            and len(value.raw_data) >= min_bytes
        ):
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            continue
        kept.append(node)
    replaced = len(graph.node) - len(kept)
    if replaced:
        del graph.node[:]
        graph.node.extend(kept)
    return replaced
