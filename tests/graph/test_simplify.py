"""rnnexport.graph.simplify: onnxsim run on a graph, its failures turned into one message, and the
node counts it reports. Graphs are written here with onnx.helper; expected values are worked out by
hand."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnexport.errors import SimplifyError
from rnnexport.graph.simplify import SimplifyStats, native_stderr_discarded, simplify_onnx


def _constant(name: str, values: list[float]) -> onnx.NodeProto:
    tensor = numpy_helper.from_array(np.array(values, np.float32), name=name)
    return helper.make_node("Constant", [], [name], value=tensor)


def _folding_model() -> onnx.ModelProto:
    """y = x + (a + b), with a and b Constant nodes: a graph whose constant part folds away."""
    nodes = [
        _constant("a", [1.0, 2.0]),
        _constant("b", [3.0, 4.0]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "folding",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constants_fold_and_the_stats_say_what_changed() -> None:
    model = _folding_model()
    feeds = {"x": np.array([[0.5, -1.0], [10.0, 20.0]], np.float32)}
    simplified, stats = simplify_onnx(model, check_feeds=feeds)
    # a + b is computed once, here, and left as one constant [4, 6] for the one Add that remains.
    assert [node.op_type for node in simplified.graph.node] == ["Constant", "Add"]
    folded = numpy_helper.to_array(simplified.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(folded, [4.0, 6.0])
    session = ort.InferenceSession(simplified.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, feeds)[0], [[4.5, 5.0], [14.0, 26.0]])
    assert stats == SimplifyStats(4, 2, {"Add": 1, "Constant": 1}, {})
    assert stats.describe() == "4 -> 2 nodes (removed 1 Add, 1 Constant)"
    assert stats.to_json() == {
        "nodes_before": 4,
        "nodes_after": 2,
        "removed_by_op": {"Add": 1, "Constant": 1},
        "added_by_op": {},
    }


def test_stats_list_what_was_added_and_an_unchanged_graph_says_only_the_counts() -> None:
    before = _folding_model()
    after = _folding_model()
    after.graph.node.append(helper.make_node("Identity", ["y"], ["z"]))
    stats = SimplifyStats.between(before, after)
    assert stats.describe() == "4 -> 5 nodes (added 1 Identity)"
    assert SimplifyStats.between(before, before).describe() == "4 -> 4 nodes"


def test_an_onnxsim_exception_is_one_simplify_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("shape inference broke\nstack trace lines")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    with pytest.raises(SimplifyError) as caught:
        simplify_onnx(_folding_model(), check_feeds={"x": np.zeros((1, 2), np.float32)})
    assert str(caught.value).startswith(
        "onnxsim failed to simplify the exported graph: RuntimeError: shape inference broke. "
    )


def test_a_failed_onnxsim_check_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxsim, "simplify", lambda model, **kwargs: (_folding_model(), False))
    with pytest.raises(SimplifyError, match="its own check found that the simplified graph computes"):
        simplify_onnx(_folding_model(), check_feeds={"x": np.zeros((1, 2), np.float32)})


def test_native_stderr_is_discarded_only_inside_the_block(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_discarded():
        os.write(2, b"native noise\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
