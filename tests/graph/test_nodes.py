"""The shared graph helpers: one topological sort and one Constant-to-initializer rewrite.

Every expected order and value here is worked out by hand from the graph drawn in the test."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnexport.graph.nodes import constants_to_initializers, topological_order


def _node(name: str, inputs: list[str], output: str) -> onnx.NodeProto:
    return helper.make_node("Add" if len(inputs) == 2 else "Identity", inputs, [output], name=name)


def _names(nodes: list[onnx.NodeProto]) -> list[str]:
    return [n.name for n in nodes]


def test_a_graph_in_order_keeps_its_order_and_by_level_goes_breadth_first() -> None:
    # A(x) -> a, B(a) -> b, C(x) -> c: already in order. By level, A and C read only x (level 0),
    # B reads a (level 1).
    nodes = [_node("A", ["x"], "a"), _node("B", ["a"], "b"), _node("C", ["x"], "c")]
    assert _names(topological_order(nodes)[0]) == ["A", "B", "C"]
    assert _names(topological_order(nodes, by_level=True)[0]) == ["A", "C", "B"]
    assert topological_order(nodes)[1] == []


def test_a_graph_out_of_order_is_put_in_order() -> None:
    # Given D(b, c), B(a), C(x), A(x): C and A can run first (C given first), A lets B run, B then D.
    nodes = [
        _node("D", ["b", "c"], "d"),
        _node("B", ["a"], "b"),
        _node("C", ["x"], "c"),
        _node("A", ["x"], "a"),
    ]
    ordered, stuck = topological_order(nodes)
    assert _names(ordered) == ["C", "A", "B", "D"]
    assert stuck == []
    # By level: C, A (level 0); B (reads a: level 1); D (reads b: level 2).
    assert _names(topological_order(nodes, by_level=True)[0]) == ["C", "A", "B", "D"]


def test_an_appended_cast_moves_before_its_readers() -> None:
    # The float16 converter's shape: M reads the Cast's output, the Cast comes last.
    nodes = [_node("M", ["x16", "w"], "m"), _node("N", ["m"], "y"), _node("Cast", ["x"], "x16")]
    ordered, stuck = topological_order(nodes, available={"x", "w"}, by_level=True)
    assert _names(ordered) == ["Cast", "M", "N"]
    assert stuck == []


def test_nodes_that_can_never_run_come_back_apart_in_the_given_order() -> None:
    # G and H form a cycle; E reads y, which nothing computes; F reads E's output; K is fine.
    nodes = [
        _node("G", ["h"], "g"),
        _node("E", ["y"], "e"),
        _node("K", ["x", ""], "k"),
        _node("H", ["g"], "h"),
        _node("F", ["e"], "f"),
    ]
    ordered, stuck = topological_order(nodes, available={"x"})
    assert _names(ordered) == ["K"]
    assert _names(stuck) == ["G", "E", "H", "F"]
    # Without a list of what is there, y (computed by no node) counts as a graph input.
    ordered, stuck = topological_order(nodes)
    assert _names(ordered) == ["E", "K", "F"]
    assert _names(stuck) == ["G", "H"]


def test_every_node_follows_the_producers_of_its_inputs_in_random_graphs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        count = 12
        # Node k reads x or earlier nodes' outputs: a DAG; then shuffled.
        nodes = [
            _node(f"n{k}", [f"v{j}" if j >= 0 else "x" for j in rng.integers(-1, k, size=2)], f"v{k}")
            for k in range(count)
        ]
        shuffled = [nodes[i] for i in rng.permutation(count)]
        for by_level in (False, True):
            ordered, stuck = topological_order(shuffled, available={"x"}, by_level=by_level)
            assert stuck == []
            assert sorted(_names(ordered)) == sorted(_names(nodes))
            seen = {"x"}
            for node in ordered:
                assert set(node.input) <= seen, node.name
                seen.update(node.output)


def _constant(name: str, tensor: TensorProto, **extra: float) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [name], name=name, value=tensor)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in extra.items())
    return node


def _graph() -> onnx.GraphProto:
    big = numpy_helper.from_array(np.arange(3, dtype=np.float32), "t")  # raw_data, 12 bytes
    small = numpy_helper.from_array(np.array([7], np.int64), "t")  # raw_data, 8 bytes
    typed = helper.make_tensor("t", TensorProto.FLOAT, [2], [1.5, 2.5])  # float_data: no raw bytes
    odd = helper.make_node("Constant", [], ["custom"], domain="com.example", value=big)
    return helper.make_graph(
        [
            _constant("big", big),
            helper.make_node("Identity", ["big"], ["y"]),
            _constant("typed", typed),
            _constant("two", big, value_float=1.0),  # a second value attribute: not a plain Constant
            odd,
            _constant("small", small),
        ],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "given")],
    )


def test_constants_become_initializers_named_like_their_outputs() -> None:
    graph = _graph()
    assert constants_to_initializers(graph) == 3
    assert [n.output[0] for n in graph.node] == ["y", "two", "custom"]
    assert [t.name for t in graph.initializer] == ["given", "big", "typed", "small"]
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    np.testing.assert_array_equal(values["big"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(values["typed"], [1.5, 2.5])
    np.testing.assert_array_equal(values["small"], [7])


def test_only_constants_of_at_least_min_bytes_move() -> None:
    graph = _graph()
    # big holds 12 raw bytes, small 8, typed none (its values are in float_data).
    assert constants_to_initializers(graph, min_bytes=9) == 1
    assert [n.output[0] for n in graph.node] == ["y", "typed", "two", "custom", "small"]
    assert [t.name for t in graph.initializer] == ["given", "big"]
    graph = _graph()
    assert constants_to_initializers(graph, min_bytes=8) == 2
    assert [t.name for t in graph.initializer] == ["given", "big", "small"]


def test_a_graph_without_constants_is_left_alone() -> None:
    graph = helper.make_graph([_node("A", ["x"], "y")], "g", [], [])
    assert constants_to_initializers(graph) == 0
    assert _names(list(graph.node)) == ["A"]
    assert len(graph.initializer) == 0
