"""The Concat rewrite: the same values with fewer layout nodes, and no change where it must not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnexport.graph.tidy import tidy, tidy_graph

RNG = np.random.default_rng(0)


def _model(
    nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], extra_outputs: tuple[str, ...] = ()
) -> onnx.ModelProto:
    axes = [numpy_helper.from_array(np.array([1], np.int64), "axes1")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", *extra_outputs)],
        axes,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feeds)]


def _branches(count: int, concat_axis: int) -> onnx.ModelProto:
    """Branch outputs [seq, 1, batch, hidden] -> Squeeze(1) -> Transpose(1, 0, 2) -> Concat."""
    nodes = []
    for k in range(count):
        nodes += [
            helper.make_node("Squeeze", [f"b{k}", "axes1"], [f"s{k}"]),
            helper.make_node("Transpose", [f"s{k}"], [f"t{k}"], perm=[1, 0, 2]),
        ]
    nodes.append(helper.make_node("Concat", [f"t{k}" for k in range(count)], ["y"], axis=concat_axis))
    return _model(nodes, {f"b{k}": [5, 1, 3, 4 + k] for k in range(count)})


@pytest.mark.parametrize("concat_axis", [2, -1])
def test_parallel_branches_share_one_squeeze_and_one_transpose(concat_axis: int) -> None:
    model = _branches(3, concat_axis)
    feeds = {f"b{k}": RNG.standard_normal((5, 1, 3, 4 + k)).astype(np.float32) for k in range(3)}
    # Expected values from numpy, not from the graph under test.
    expected = np.concatenate([feeds[f"b{k}"][:, 0].transpose(1, 0, 2) for k in range(3)], axis=2)
    assert tidy_graph(model) == 4
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Concat", "Squeeze", "Transpose"]
    (y,) = _run(model, feeds)
    np.testing.assert_array_equal(y, expected)


def test_the_report_counts_each_rule_and_says_why_the_rest_stayed() -> None:
    # Three branches of Squeeze -> Transpose -> Concat: the Transposes move after the Concat, then
    # the Squeezes, two rewrites. Left: a Concat of graph inputs (nothing to move before it), and a
    # Squeeze of a Concat that joins graph inputs, not recurrent outputs. No Split, no ConstantOfShape.
    report = tidy(_branches(3, 2))
    assert report.nodes_saved == 4
    assert report.to_json()["rules"] == {
        "drop_empty_concat_inputs": {"applied": 0, "misses": {}},
        "hoist_layout_after_concat": {
            "applied": 2,
            "misses": {"an input not computed here, or read elsewhere too": 1},
        },
        "sink_layout_before_split": {"applied": 0, "misses": {}},
        "squeeze_before_join": {
            "applied": 0,
            "misses": {"the Concat joins more than recurrent outputs Y": 1},
        },
    }


def test_a_layout_node_with_another_reader_stays() -> None:
    model = _branches(2, 2)
    # t0 is also a graph output: moving its Transpose would change that output.
    model.graph.output.append(helper.make_tensor_value_info("t0", TensorProto.FLOAT, None))
    before = [n.op_type for n in model.graph.node]
    assert tidy_graph(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def test_different_permutations_stay() -> None:
    nodes = [
        helper.make_node("Transpose", ["a"], ["ta"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["b"], ["tb"], perm=[0, 2, 1]),
        helper.make_node("Concat", ["ta", "tb"], ["y"], axis=0),
    ]
    model = _model(nodes, {"a": [3, 3, 3], "b": [3, 3, 3]})
    assert tidy_graph(model) == 0
    assert len(model.graph.node) == 3


def test_squeeze_axis_maps_past_the_squeezed_axis() -> None:
    nodes = [
        helper.make_node("Squeeze", ["a", "axes1"], ["sa"]),
        helper.make_node("Squeeze", ["b", "axes1"], ["sb"]),
        helper.make_node("Concat", ["sa", "sb"], ["y"], axis=1),
    ]
    model = _model(nodes, {"a": [2, 1, 3, 4], "b": [2, 1, 5, 4]})
    feeds = {
        "a": RNG.standard_normal((2, 1, 3, 4)).astype(np.float32),
        "b": RNG.standard_normal((2, 1, 5, 4)).astype(np.float32),
    }
    expected = np.concatenate([feeds["a"][:, 0], feeds["b"][:, 0]], axis=1)
    assert tidy_graph(model) == 1
    assert model.graph.node[0].op_type == "Concat"
    assert helper.get_attribute_value(model.graph.node[0].attribute[0]) == 2
    (y,) = _run(model, feeds)
    np.testing.assert_array_equal(y, expected)


def test_parallel_architectures_ship_one_transpose_after_the_branches() -> None:
    import tempfile
    from pathlib import Path

    from rnnexport.builder.pipeline import build

    with tempfile.TemporaryDirectory() as out:
        build("parallel-gru", out=out, device="cpu")
        model = onnx.load(str(Path(out) / "parallel-gru" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GRU") == 3
    # One Transpose into the shared time-major input, one out of the joined branches; each branch
    # squeezes its own output before the join (the form OpenVINO computes right).
    assert ops.count("Transpose") == 2
    assert ops.count("Squeeze") == 3
    (concat,) = [n for n in model.graph.node if n.op_type == "Concat" and n.input[0].endswith("/squeezed")]
    assert helper.get_attribute_value(concat.attribute[0]) == 2


def _recurrent_branches(op: str, count: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``count`` recurrences over x, their Ys joined on axis 3, then Squeeze(1) and Transpose."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    hidden, features = 3, 2
    nodes, weights = [], []
    for k in range(count):
        w = RNG.standard_normal((1, gates * hidden, features)).astype(np.float32)
        r = RNG.standard_normal((1, gates * hidden, hidden)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(r, f"r{k}")]
        nodes.append(helper.make_node(op, ["x", f"w{k}", f"r{k}"], [f"y{k}"], hidden_size=hidden))
    nodes += [
        helper.make_node("Concat", [f"y{k}" for k in range(count)], ["joined"], axis=3),
        helper.make_node("Squeeze", ["joined", "axes1"], ["squeezed"]),
        helper.make_node("Transpose", ["squeezed"], ["y"], perm=[1, 0, 2]),
    ]
    model = _model(nodes, {"x": [4, 3, features]})
    model.graph.initializer.extend(weights)
    return model, {"x": RNG.standard_normal((4, 3, features)).astype(np.float32)}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_branches_squeeze_before_the_join(op: str) -> None:
    model, feeds = _recurrent_branches(op, 3)
    (expected,) = _run(model, feeds)  # the graph as exported, before any rewrite
    tidy_graph(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == [op, op, op, "Squeeze", "Squeeze", "Squeeze", "Concat", "Transpose"]
    concat = model.graph.node[6]
    assert list(concat.input) == [n.output[0] for n in model.graph.node[3:6]]
    assert helper.get_attribute_value(concat.attribute[0]) == 2  # axis 3 of [seq, 1, batch, h]
    (y,) = _run(model, feeds)
    np.testing.assert_array_equal(y, expected)
    assert y.shape == (3, 4, 9)


def _padded(zero_at: int, concat_axis: int) -> onnx.ModelProto:
    """Concat(a, zeros) where the zeros' shape is [.., 0 at ``zero_at`` ..] built from a's shape."""
    pieces = [numpy_helper.from_array(np.array([v], np.int64), f"p{i}") for i, v in enumerate([7, 7, 4])]
    pieces[zero_at] = numpy_helper.from_array(np.array([0], np.int64), f"p{zero_at}")
    nodes = [
        helper.make_node("Shape", ["a"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero"], ["batch1"]),
        helper.make_node(
            "Concat", ["p0", "batch1", "p2"] if zero_at != 1 else ["p0", "p1", "p2"], ["zshape"], axis=0
        ),
        helper.make_node("ConstantOfShape", ["zshape"], ["zeros"]),
        helper.make_node("Concat", ["a", "zeros"], ["y"], axis=concat_axis),
    ]
    model = _model(nodes, {"a": [5, 3, 4]})
    model.graph.initializer.extend(
        [
            *pieces,
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
        ]
    )
    return model


def test_an_empty_padding_input_and_what_built_it_go() -> None:
    model = _padded(zero_at=0, concat_axis=0)
    feeds = {"a": RNG.standard_normal((5, 3, 4)).astype(np.float32)}
    (before,) = _run(model, feeds)
    assert tidy_graph(model) == 5
    assert [n.op_type for n in model.graph.node] == ["Identity"]
    (after,) = _run(model, feeds)
    np.testing.assert_array_equal(after, feeds["a"])
    np.testing.assert_array_equal(after, before)


def test_zeros_empty_on_another_axis_stay() -> None:
    # [0, batch, 4] concatenated on axis 2 is not "nothing": it is refused by the shapes, or empty
    # output; either way the rewrite must not decide it.
    model = _padded(zero_at=0, concat_axis=2)
    assert tidy_graph(model) == 0
    assert len(model.graph.node) == 6


def test_a_value_read_only_inside_a_subgraph_is_kept() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["hidden"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["out2"])],
        "else",
        [],
        [helper.make_tensor_value_info("out2", TensorProto.FLOAT, None)],
    )
    model = _padded(zero_at=0, concat_axis=0)
    graph = model.graph
    graph.node.extend(
        [
            helper.make_node("Neg", ["a"], ["hidden"]),
            helper.make_node("ReduceMax", ["a"], ["m"], keepdims=0),
            helper.make_node("Greater", ["m", "fzero"], ["cond"]),
            helper.make_node("If", ["cond"], ["z"], then_branch=then_branch, else_branch=else_branch),
        ]
    )
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "fzero"))
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    tidy_graph(model)
    assert "Neg" in [n.op_type for n in model.graph.node]  # read by the If's then-branch only
    feeds = {"a": np.abs(RNG.standard_normal((5, 3, 4))).astype(np.float32) + 0.1}
    _, z = _run(model, feeds)
    np.testing.assert_array_equal(z, -feeds["a"])


def test_streaming_graphs_keep_the_output_layer_a_matmul(tmp_path: Path) -> None:
    """onnxsim's batched Gemm rewrite is skipped for streaming builds (four more nodes every call)."""
    from rnnexport.builder.pipeline import build

    build("many-to-many", out=tmp_path / "stream", device="cpu", streaming=True)
    build("many-to-many", out=tmp_path / "plain", device="cpu")
    stream = [
        n.op_type for n in onnx.load(str(tmp_path / "stream" / "many-to-many" / "model.onnx")).graph.node
    ]
    plain = [n.op_type for n in onnx.load(str(tmp_path / "plain" / "many-to-many" / "model.onnx")).graph.node]
    assert "MatMul" in stream
    assert "Gemm" not in stream
    assert "Reshape" not in stream
    # Stateless builds keep it: their float16 variant of the unfused graph crashes ONNX Runtime 1.32.
    assert "Gemm" in plain


def test_a_model_too_large_to_infer_still_loses_its_empty_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 2 GiB shape inference cannot serialize the model; a 0 at the start of the shape needs none."""
    from google.protobuf.message import EncodeError

    def refuse(*args: object, **kwargs: object) -> None:
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    model = _padded(zero_at=0, concat_axis=0)
    assert tidy_graph(model) == 5
    assert [n.op_type for n in model.graph.node] == ["Identity"]


@pytest.mark.parametrize("arch", ["parallel-lstm", "attention"])
def test_external_data_builds_are_tidied_and_verify(arch: str, tmp_path: Path) -> None:
    """The rewrites run on a model whose weights go to model.onnx.data, and the result verifies."""
    import dataclasses

    from rnnexport.artifact import EXTERNAL_DATA, verify_artifact
    from rnnexport.builder.pipeline import build
    from rnnexport.limits import DEFAULT_LIMITS

    tiny = dataclasses.replace(DEFAULT_LIMITS, inline_model_bytes=1000)
    build(arch, out=tmp_path, device="cpu", limits=tiny)
    folder = tmp_path / arch
    assert (folder / EXTERNAL_DATA).is_file()
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]
    assert "ConstantOfShape" not in ops  # the empty padding is gone (attention) or never was
    if arch == "parallel-lstm":
        assert ops.count("Transpose") == 2
    assert verify_artifact(folder, device="cpu").passed
