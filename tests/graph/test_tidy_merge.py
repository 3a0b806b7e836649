"""Parallel recurrences merged into one node: checked against a numpy LSTM/GRU, and left alone
where the merge would not keep the values or the order of the graph."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnexport.graph.merge import MAX_MERGED_HIDDEN
from rnnexport.graph.tidy import tidy_graph

RNG = np.random.default_rng(7)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT = 5, 3, 4


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-v)))


def _reference(
    op: str,
    x: np.ndarray,
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    lengths: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX's forward LSTM (gates i, o, f, c), GRU (z, r, h; linear_before_reset=1) or tanh RNN,
    in float64.

    Steps past a row's length leave its state alone and give zeros in Y, as ONNX specifies.
    """
    hidden = r.shape[1]
    wb, rb = b[: len(b) // 2], b[len(b) // 2 :]
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    ys = []
    for t in range(x.shape[0]):
        gx, gh = x[t] @ w.T + wb, h @ r.T + rb
        if op == "RNN":
            h_new, c_new = np.tanh(gx + gh), c
        elif op == "LSTM":
            i, o, f, g = (gx + gh).reshape(len(h), 4, hidden).transpose(1, 0, 2)
            c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h_new = _sigmoid(o) * np.tanh(c_new)
        else:
            (zx, rx, nx), (zh, rh, nh) = (g.reshape(len(h), 3, hidden).transpose(1, 0, 2) for g in (gx, gh))
            z, reset = _sigmoid(zx + zh), _sigmoid(rx + rh)
            h_new = (1 - z) * np.tanh(nx + reset * nh) + z * h
            c_new = c
        live = (t < lengths)[:, None]
        h, c = np.where(live, h_new, h), np.where(live, c_new, c)
        ys.append(np.where(live, h, 0.0))
    return np.stack(ys)[:, None], h[None], c[None]


class Branch:
    """One recurrent node's weights and initial state, drawn at random."""

    def __init__(self, op: str, hidden: int) -> None:
        gates = GATES[op]
        self.hidden = hidden
        self.w = RNG.standard_normal((gates * hidden, INPUT)).astype(np.float32) * 0.5
        self.r = RNG.standard_normal((gates * hidden, hidden)).astype(np.float32) * 0.5
        self.b = RNG.standard_normal(2 * gates * hidden).astype(np.float32) * 0.5
        self.h0 = RNG.standard_normal((BATCH, hidden)).astype(np.float32)
        self.c0 = RNG.standard_normal((BATCH, hidden)).astype(np.float32)


def _parallel(
    op: str, hidden: list[int], *, join: bool = True, lengths: bool = True
) -> tuple[onnx.ModelProto, list[Branch]]:
    """``len(hidden)`` recurrences on one input, each from its own initial state; their Y joined by
    a Concat on the hidden axis (or each a graph output), their final states graph outputs."""
    branches = [Branch(op, h) for h in hidden]
    nodes, inits, inputs = (
        [],
        [],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, INPUT])],
    )
    outputs = []
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, [BATCH]))
    for k, br in enumerate(branches):
        inits += [
            numpy_helper.from_array(br.w[None], f"w{k}"),
            numpy_helper.from_array(br.r[None], f"r{k}"),
            numpy_helper.from_array(br.b[None], f"b{k}"),
        ]
        states = ["h", "c"] if op == "LSTM" else ["h"]
        for s in states:
            inputs.append(
                helper.make_tensor_value_info(f"{s}0_{k}", TensorProto.FLOAT, [1, BATCH, br.hidden])
            )
        node_outputs = [f"y{k}", *(f"{s}n_{k}" for s in states)]
        nodes.append(
            helper.make_node(
                op,
                [
                    "x",
                    f"w{k}",
                    f"r{k}",
                    f"b{k}",
                    "lengths" if lengths else "",
                    *(f"{s}0_{k}" for s in states),
                ],
                node_outputs,
                name=f"rnn{k}",
                hidden_size=br.hidden,
            )
        )
        if op == "GRU":  # PyTorch's GRU
            nodes[-1].attribute.append(helper.make_attribute("linear_before_reset", 1))
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node_outputs[1:]]
        if not join:
            outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None))
    if join:
        nodes.append(helper.make_node("Concat", [f"y{k}" for k in range(len(branches))], ["y"], axis=3))
        outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "parallel", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), branches


def _feeds(op: str, branches: list[Branch], lengths: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {"x": RNG.standard_normal((SEQ, BATCH, INPUT)).astype(np.float32)}
    if lengths is not None:
        feeds["lengths"] = lengths
    for k, br in enumerate(branches):
        feeds[f"h0_{k}"] = br.h0[None]
        if op == "LSTM":
            feeds[f"c0_{k}"] = br.c0[None]
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in session.run(None, feeds)), strict=True))


def _expected(op: str, branches: list[Branch], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    lengths = feeds.get("lengths", np.full(BATCH, SEQ))
    out = {}
    for k, br in enumerate(branches):
        y, h, c = _reference(op, feeds["x"], br.w, br.r, br.b, br.h0, br.c0, lengths)
        out[f"y{k}"], out[f"hn_{k}"] = y, h
        if op == "LSTM":
            out[f"cn_{k}"] = c
    out["y"] = np.concatenate([out[f"y{k}"] for k in range(len(branches))], axis=3)
    return out


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _per_call_ops(model: onnx.ModelProto) -> list[str]:
    """The ops left once constant folding (ONNX Runtime's, at load) has run: nodes that read a
    graph input, directly or not."""
    live = {i.name for i in model.graph.input}
    ops = []
    for node in model.graph.node:
        if live.intersection(node.input):
            live.update(node.output)
            ops.append(node.op_type)
    return ops


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_three_branches_become_one_node_with_the_same_values(op: str) -> None:
    model, branches = _parallel(op, [3, 4, 5])
    # Rows end at different steps. (Not at 0: ONNX Runtime returns a zero state for a row of
    # length 0, merged or not; streaming graphs keep that row's state themselves.)
    feeds = _feeds(op, branches, np.array([5, 2, 1], np.int32))
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count(op) == 1
    assert "Concat" in _ops(model)  # of the initial states; the Concat of Y is the merged node's Y
    (merged,) = (n for n in model.graph.node if n.op_type == op)
    assert helper.get_attribute_value(next(a for a in merged.attribute if a.name == "hidden_size")) == 12
    got, expected = _run(model, feeds), _expected(op, branches, feeds)
    assert set(got) == {o.name for o in model.graph.output}
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_branch_outputs_read_one_by_one_come_from_a_split() -> None:
    model, branches = _parallel("LSTM", [2, 6], join=False, lengths=False)
    feeds = _feeds("LSTM", branches, None)
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count("LSTM") == 1
    assert _ops(model).count("Split") == 3  # Y, Y_h, Y_c
    got, expected = _run(model, feeds), _expected("LSTM", branches, feeds)
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_merged_states_keep_one_squeeze_and_one_split() -> None:
    """Batch-major state (the streaming layout): Unsqueeze before and Squeeze after every branch
    become one Concat + Unsqueeze and one Squeeze + Split per state."""
    model, branches = _parallel("GRU", [3, 4], lengths=False)
    graph = model.graph
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    graph.initializer.append(axes)
    old_inputs = {i.name for i in graph.input if i.name.startswith("h0_")}
    for name in sorted(old_inputs):
        graph.node.insert(0, helper.make_node("Unsqueeze", [f"{name}_bm", "axes0"], [name]))
    graph.node.extend(
        helper.make_node("Squeeze", [f"hn_{k}", "axes0"], [f"hn_{k}_bm"]) for k in range(len(branches))
    )
    kept = [i for i in graph.input if i.name not in old_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.extend(
        helper.make_tensor_value_info(f"{n}_bm", TensorProto.FLOAT, [BATCH, None]) for n in sorted(old_inputs)
    )
    outputs = [o for o in graph.output if not o.name.startswith("hn_")]
    del graph.output[:]
    graph.output.extend(outputs)
    graph.output.extend(
        helper.make_tensor_value_info(f"hn_{k}_bm", TensorProto.FLOAT, None) for k in range(len(branches))
    )
    feeds = _feeds("GRU", branches, None)
    feeds = {
        (f"{k}_bm" if k.startswith("h0_") else k): (v[0] if k.startswith("h0_") else v)
        for k, v in feeds.items()
    }
    tidy_graph(model, merge_recurrences=True)
    assert sorted(_per_call_ops(model)) == sorted(["Concat", "Unsqueeze", "GRU", "Squeeze", "Split"])
    got, expected = _run(model, feeds), _expected("GRU", branches, {**feeds, "lengths": np.full(BATCH, SEQ)})
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-5, atol=1e-5)
    for k in range(len(branches)):
        np.testing.assert_allclose(got[f"hn_{k}_bm"], expected[f"hn_{k}"][0], rtol=1e-5, atol=1e-5)


def test_branches_past_the_size_bound_stay_apart() -> None:
    third = MAX_MERGED_HIDDEN // 3 + 1
    model, _ = _parallel("GRU", [third, third, third], lengths=False)
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count("GRU") == 3


def test_a_branch_fed_by_another_branch_stays_apart() -> None:
    """Merging would make the node read its own output: the order check refuses it."""
    model, branches = _parallel("GRU", [3, 3], lengths=False)
    graph = model.graph
    # Branch 1 starts from branch 0's final state instead of its own input.
    graph.node[1].input[5] = "hn_0"
    kept = [i for i in graph.input if i.name != "h0_1"]
    del graph.input[:]
    graph.input.extend(kept)
    feeds = _feeds("GRU", branches, None)
    del feeds["h0_1"]
    before = _run(model, feeds)
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count("GRU") == 2
    after = _run(model, feeds)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def _ignore_lengths(model: onnx.ModelProto) -> None:
    model.graph.node[1].input[4] = ""


def _other_input(model: onnx.ModelProto) -> None:
    model.graph.node.insert(0, helper.make_node("Neg", ["x"], ["x_neg"]))
    model.graph.node[2].input[0] = "x_neg"


def _clip(model: onnx.ModelProto) -> None:
    model.graph.node[1].attribute.append(helper.make_attribute("clip", 3.0))


def _computed_weight(model: onnx.ModelProto) -> None:
    model.graph.node.insert(0, helper.make_node("Identity", ["w0"], ["w0_computed"]))
    model.graph.node[1].input[1] = "w0_computed"


@pytest.mark.parametrize("differ", [_ignore_lengths, _other_input, _clip, _computed_weight])
def test_branches_that_differ_stay_apart(differ: Callable[[onnx.ModelProto], None]) -> None:
    """Not the same lengths, not the same input, not the same attributes, or weights the graph
    computes: two nodes stay two."""
    model, _ = _parallel("LSTM", [3, 4])
    differ(model)
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count("LSTM") == 2


def test_without_the_flag_or_before_opset_13_nothing_merges() -> None:
    model, _ = _parallel("LSTM", [3, 4], lengths=False)
    tidy_graph(model)
    assert _ops(model).count("LSTM") == 2
    model, _ = _parallel("LSTM", [3, 4], lengths=False)
    model.opset_import[0].version = 12
    tidy_graph(model, merge_recurrences=True)
    assert _ops(model).count("LSTM") == 2


def test_the_file_keeps_each_weight_once() -> None:
    """The block-diagonal R is built by constant nodes at load, not stored with its zeros."""
    model, _ = _parallel("LSTM", [20, 20, 20], lengths=False)
    before = sum(t.ByteSize() for t in model.graph.initializer)
    tidy_graph(model, merge_recurrences=True)
    after = sum(t.ByteSize() for t in model.graph.initializer)
    assert _ops(model).count("LSTM") == 1
    assert after < 1.05 * before  # plus pads, shapes and names; storing the merged R: 2.5x
    assert "Pad" in _ops(model)


@pytest.mark.parametrize("streaming", [False, True])
def test_parallel_architectures_merge_only_when_streaming(streaming: bool, tmp_path: Path) -> None:
    """Streaming builds (one step a call) get one recurrent node; stateless builds keep a node per
    branch (int8 quantization and long sequences)."""
    from rnnexport.builder.pipeline import build

    for arch, op in [("parallel-lstm", "LSTM"), ("parallel-gru", "GRU"), ("parallel-lstm-attention", "LSTM")]:
        build(arch, out=tmp_path, device="cpu", streaming=streaming)  # verified, or it raises
        ops = _ops(onnx.load(str(tmp_path / arch / "model.onnx")))
        assert ops.count(op) == (1 if streaming else 3), arch
        assert ops.count("Transpose") == 2, arch  # into the shared time-major input, out of the join


class _TwinGRU(torch.nn.Module):
    """A user's model: two GRUs of different sizes reading the same features, joined per step."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = torch.nn.GRU(6, 16, batch_first=True)
        self.slow = torch.nn.GRU(6, 8, batch_first=True)
        self.head = torch.nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.fast(x)[0], self.slow(x)[0]], dim=2))  # type: ignore[no-any-return]


def test_a_user_models_parallel_branches_stream_as_one_node(tmp_path: Path) -> None:
    """--model streaming builds merge too; each branch keeps its own state pair, and the build's
    chained test data (each call's state fed to the next) verify against the whole sequence."""
    import rnnexport
    from rnnexport.artifact import verify_artifact

    torch.manual_seed(0)
    io = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 6]}],
        "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
    }
    manifest = rnnexport.build_model_artifact(_TwinGRU(), io=io, name="twin", out=tmp_path, streaming=True)
    assert manifest.streaming is not None
    assert {s["input"] for s in manifest.streaming["states"]} == {"state_in.fast.h", "state_in.slow.h"}
    assert _per_call_ops(onnx.load(str(tmp_path / "twin" / "model.onnx"))).count("GRU") == 1
    assert verify_artifact(tmp_path / "twin", device="cpu").passed
