"""The rules that move layout nodes (``Transpose``, ``Squeeze``, ``Unsqueeze``) across a ``Concat`` or
``Split`` (:mod:`rnnexport.graph.tidy` says why and when).

- :class:`HoistLayoutAfterConcat`: ``Concat(T(a), T(b), ...)`` -> ``T(Concat(a, b, ...))``;
- :class:`SinkLayoutBeforeSplit`: ``Split`` whose parts each go through one ``T`` -> ``Split(T(x))``;
- :class:`SqueezeBeforeJoin`: ``Squeeze(Concat(Y1, Y2, ...))`` of recurrent outputs ->
  ``Concat(Squeeze(Y1), Squeeze(Y2), ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper

from rnnexport.graph import onnx_slots
from rnnexport.graph.nodes import attribute, fresh_name, splice
from rnnexport.graph.rules import GraphView, Miss, Rule

__all__ = ["HoistLayoutAfterConcat", "SinkLayoutBeforeSplit", "SqueezeBeforeJoin"]

#: What two layout nodes must share to move together: op and permutation or axes.
LayoutKey = tuple[str, tuple[int, ...]]


def _squeeze_axes(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> tuple[int, ...] | None:
    """A Squeeze's axes when they are explicit and non-negative (else it is left alone)."""
    if len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        axes = None if tensor is None else [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
    else:
        value = attribute(node, "axes")  # before opset 13
        axes = None if value is None else [int(v) for v in value]
    if not axes or min(axes) < 0:
        return None
    return tuple(sorted(axes))


def layout_key(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> LayoutKey | None:
    """What two layout nodes must share to move together; None for a node that cannot move (not a
    layout node, or its permutation or axes not known here)."""
    if node.op_type == "Transpose":
        perm = attribute(node, "perm")
        return None if perm is None else ("Transpose", tuple(perm))
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = _squeeze_axes(node, constants)
        return None if axes is None else (node.op_type, axes)
    return None


def inner_axis(key: LayoutKey, axis: int) -> int | None:
    """The axis on a layout node's input that becomes ``axis`` on its output (None: no such axis,
    or not known without the rank)."""
    op, detail = key
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


def outer_axis(key: LayoutKey, axis: int) -> int | None:
    """The axis on a layout node's output that ``axis`` of its input becomes (the inverse)."""
    op, detail = key
    if axis < 0:
        return None
    if op == "Transpose":
        return list(detail).index(axis) if axis in detail else None
    if op == "Squeeze":
        return None if axis in detail else axis - sum(1 for u in detail if int(u) < axis)
    for inserted in detail:  # Unsqueeze: sorted, as in inner_axis for Squeeze
        if int(inserted) <= axis:
            axis += 1
    return axis


@dataclass(frozen=True)
class _Hoist:
    concat: int  # the Concat's index
    parts: list[int]  # the layout node before each of its inputs, in its order
    axis: int  # the Concat's axis mapped to the layout nodes' inputs


class HoistLayoutAfterConcat(Rule[int, _Hoist]):
    """A ``Concat`` of alike layout nodes' outputs, each read there alone, becomes one layout node
    after a ``Concat`` of their inputs."""

    name = "hoist_layout_after_concat"

    def candidates(self, view: GraphView) -> list[int]:
        """Every ``Concat``."""
        return [i for i, node in enumerate(view.nodes) if node.op_type == "Concat"]

    def match(self, view: GraphView, candidate: int) -> _Hoist | Miss:
        """The layout nodes to move and the new axis, or why not."""
        concat = view.nodes[candidate]
        if len(concat.input) < 2:
            return Miss("fewer than two inputs")
        parts = [view.producer.get(name) for name in concat.input]
        if any(i is None or view.uses[name] != 1 for i, name in zip(parts, concat.input, strict=True)):
            return Miss("an input not computed here, or read elsewhere too")
        drop = {i for i in parts if i is not None}
        keys = {layout_key(view.nodes[i], view.constants) for i in sorted(drop)}
        if len(drop) != len(parts) or len(keys) != 1 or None in keys:
            return Miss("inputs not from one alike layout node each")
        (key,) = keys
        assert key is not None
        axis = inner_axis(key, int(attribute(concat, "axis")))
        if axis is None:
            return Miss("axis not known before the layout node")
        return _Hoist(candidate, [i for i in parts if i is not None], axis)

    def rewrite(self, view: GraphView, match: _Hoist) -> None:
        """``Concat`` of the layout nodes' inputs, then the first layout node's copy."""
        nodes, concat = view.nodes, view.nodes[match.concat]
        taken = {n.name for n in nodes} | set(view.producer) | {i.name for i in view.graph.input}
        joined = fresh_name(f"{concat.output[0]}/joined", taken)
        inputs = [nodes[i].input[0] for i in match.parts]  # in the Concat's order
        new_concat = helper.make_node(
            "Concat", inputs, [joined], name=fresh_name(joined, taken), axis=match.axis
        )
        first = nodes[min(match.parts)]
        moved = helper.make_node(
            first.op_type,
            [joined, *first.input[1:]],
            list(concat.output),
            name=fresh_name(f"{first.name or first.output[0]}/after_concat", taken),
        )
        moved.attribute.extend(first.attribute)
        splice(view.graph, nodes, at=match.concat, new=[new_concat, moved], drop=set(match.parts))


@dataclass(frozen=True)
class _Sink:
    split: int  # the Split's index
    movers: list[int]  # the layout node after each of its outputs, in its order
    axis: int  # the Split's axis mapped to the layout nodes' outputs


class SinkLayoutBeforeSplit(Rule[int, _Sink]):
    """The mirror of :class:`HoistLayoutAfterConcat`: a ``Split`` each of whose parts goes to its own
    layout node, all alike, becomes that layout node once and then the ``Split`` (axis mapped)."""

    name = "sink_layout_before_split"

    def candidates(self, view: GraphView) -> list[int]:
        """Every ``Split``."""
        return [i for i, node in enumerate(view.nodes) if node.op_type == "Split"]

    def match(self, view: GraphView, candidate: int) -> _Sink | Miss:
        """The layout nodes to move and the new axis, or why not."""
        split = view.nodes[candidate]
        if len(split.output) < 2 or not all(split.output):
            return Miss("fewer than two parts, or one unnamed")
        layout = [view.readers.get(name, []) for name in split.output]
        if any(len(r) != 1 or view.uses[name] != 1 for r, name in zip(layout, split.output, strict=True)):
            return Miss("a part not read by one node alone")
        movers = [view.nodes[r[0]] for r in layout]
        keys = {layout_key(n, view.constants) for n in movers}
        if len({r[0] for r in layout}) != len(movers) or len(keys) != 1 or None in keys:
            return Miss("parts not read by one alike layout node each")
        if any(n.input[0] != name for n, name in zip(movers, split.output, strict=True)):
            return Miss("a part is not its layout node's data input")
        (key,) = keys
        assert key is not None
        axis = outer_axis(key, int(attribute(split, "axis") or 0))
        if axis is None:
            return Miss("axis not known after the layout node")
        return _Sink(candidate, [r[0] for r in layout], axis)

    def rewrite(self, view: GraphView, match: _Sink) -> None:
        """The first layout node's copy on the ``Split``'s input, then a ``Split`` of its output."""
        nodes, split = view.nodes, view.nodes[match.split]
        movers = [nodes[i] for i in match.movers]
        taken = (
            {n.name for n in nodes}
            | {o for n in nodes for o in n.output}
            | {i.name for i in view.graph.input}
        )
        first = movers[0]
        laid = fresh_name(f"{split.input[0]}/{first.op_type.lower()}", taken)
        moved = helper.make_node(
            first.op_type, [split.input[0], *first.input[1:]], [laid], name=fresh_name(laid, taken)
        )
        moved.attribute.extend(first.attribute)
        new_split = helper.make_node(
            "Split",
            [laid, *split.input[1:]],
            [n.output[0] for n in movers],
            name=fresh_name(f"{split.name or split.output[0]}/after_{first.op_type.lower()}", taken),
        )
        new_split.attribute.extend(a for a in split.attribute if a.name != "axis")
        new_split.attribute.append(helper.make_attribute("axis", match.axis))
        splice(view.graph, nodes, at=match.split, new=[moved, new_split], drop=set(match.movers))


@dataclass(frozen=True)
class _SqueezeFirst:
    squeeze: int  # the Squeeze's index
    concat: int  # the index of the Concat it reads
    axis: int  # the Concat's axis mapped to the squeezed parts


class SqueezeBeforeJoin(Rule[int, _SqueezeFirst]):
    """``Squeeze(Concat(Y1, Y2, ...))`` of recurrent outputs becomes ``Concat(Squeeze(Y1), ...)``
    (:mod:`rnnexport.graph.tidy`: the form every runtime computes right)."""

    name = "squeeze_before_join"

    def candidates(self, view: GraphView) -> list[int]:
        """Every ``Squeeze``."""
        return [i for i, node in enumerate(view.nodes) if node.op_type == "Squeeze"]

    def match(self, view: GraphView, candidate: int) -> _SqueezeFirst | Miss:
        """The ``Concat`` to rewrite and the new axis, or why not."""
        squeeze = view.nodes[candidate]
        key = layout_key(squeeze, view.constants)
        if key is None:
            return Miss("axes not known")
        if squeeze.input[0] not in view.producer:
            return Miss("input not computed here")
        c = view.producer[squeeze.input[0]]
        concat = view.nodes[c]
        if concat.op_type != "Concat" or view.uses[concat.output[0]] != 1 or len(concat.input) < 2:
            return Miss("input not a Concat of two or more read here alone")
        parts = [view.producer.get(name) for name in concat.input]
        recurrent = all(
            i is not None
            and view.nodes[i].op_type in onnx_slots.RECURRENT_OPS
            and view.nodes[i].output[onnx_slots.Y] == name
            for i, name in zip(parts, concat.input, strict=True)
        )
        axis = outer_axis(key, int(attribute(concat, "axis")))
        if not recurrent:
            return Miss("the Concat joins more than recurrent outputs Y")
        if axis is None:
            return Miss("axis not known after the Squeeze")
        return _SqueezeFirst(candidate, c, axis)

    def rewrite(self, view: GraphView, match: _SqueezeFirst) -> None:
        """A ``Squeeze`` per part, then the ``Concat``, where the old ``Concat`` was."""
        nodes, squeeze = view.nodes, view.nodes[match.squeeze]
        concat = nodes[match.concat]
        taken = {n.name for n in nodes} | set(view.producer) | {i.name for i in view.graph.input}
        taken |= {t.name for t in view.graph.initializer}
        squeezed = []
        for name in concat.input:
            out = fresh_name(f"{name}/squeezed", taken)
            node = helper.make_node("Squeeze", [name, *squeeze.input[1:]], [out], name=out)
            node.attribute.extend(squeeze.attribute)
            squeezed.append(node)
        joined = helper.make_node(
            "Concat",
            [n.output[0] for n in squeezed],
            list(squeeze.output),
            name=fresh_name(f"{squeeze.output[0]}/joined", taken),
            axis=match.axis,
        )
        # The new nodes read the recurrent outputs, all computed before the Concat: put them there.
        splice(view.graph, nodes, at=match.concat, new=[*squeezed, joined], drop={match.squeeze})
