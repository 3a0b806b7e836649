"""The dynamo exporter's path: the rnnexport:: recurrent ops, exports of every recurrent form, and the
graph guards against known exporter bugs (checked on hand-written graphs that must be refused).

Expected values come from PyTorch's own modules (packed through torch's pack_padded_sequence) or
from ONNX text written here, never from the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rnnexport.builder.dynamo_rnn import dynamo_patches
from rnnexport.builder.export import export_onnx
from rnnexport.builder.pipeline import build
from rnnexport.errors import ContractError, ExportError
from rnnexport.graph.contract import check_contract, graph_problems
from rnnexport.spec import Contract, TensorSpec

from ..helpers import REPO

# -- the graph guards, on hand-written graphs ------------------------------------------------------

H = 2  # hidden size of the hand-written recurrent nodes


def _gru_graph(*, linear_before_reset: int | None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", H])
    weights = [
        numpy_helper.from_array(np.zeros((1, 3 * H, 3), np.float32), "w"),
        numpy_helper.from_array(np.zeros((1, 3 * H, H), np.float32), "r"),
    ]
    node = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=H)
    if linear_before_reset is not None:
        node.attribute.append(helper.make_attribute("linear_before_reset", linear_before_reset))
    graph = helper.make_graph([node], "g", [x], [y], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


GRU_CONTRACT = Contract(
    inputs=(TensorSpec("x", "float32", ("seq", "batch", 3)),),
    outputs=(TensorSpec("y", "float32", ("seq", 1, "batch", H)),),
)


def test_a_gru_with_linear_before_reset_1_passes() -> None:
    model = _gru_graph(linear_before_reset=1)
    assert graph_problems(model) == []
    check_contract(model, GRU_CONTRACT, stage="in test")


@pytest.mark.parametrize("value", [0, None])  # None: the attribute left out, which means 0
def test_a_gru_without_linear_before_reset_1_is_refused(value: int | None) -> None:
    with pytest.raises(ContractError, match=r"has linear_before_reset=0; PyTorch's nn.GRU needs 1"):
        check_contract(_gru_graph(linear_before_reset=value), GRU_CONTRACT, stage="after export")


def _parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def test_a_reshape_that_bakes_the_example_length_is_refused() -> None:
    model = _parse(
        HEADER
        + """
        g (float[batch, seq, 4] x) => (float[batch, seq, 2, 2] y) {
            shape = Constant <value = int64[4] {2, 3, 2, 2}> ()
            y = Reshape (x, shape)
        }
        """
    )
    problems = graph_problems(model)
    assert len(problems) == 1, problems
    assert "reshapes to the constant shape [2, 3, 2, 2]" in problems[0]
    assert "its input has the dynamic axes ['batch', 'seq']" in problems[0]


def test_a_reshape_that_fixes_one_dynamic_axis_is_refused() -> None:
    model = _parse(
        HEADER
        + """
        g (float[batch, seq, 4] x) => (float[batch, 3, 4] y) {
            shape = Constant <value = int64[3] {-1, 3, 4}> ()
            y = Reshape (x, shape)
        }
        """
    )
    problems = graph_problems(model)
    assert len(problems) == 1, problems
    assert "fixes axis 1, the dynamic axis 'seq' of its input, to the constant 3" in problems[0]


def test_a_reshape_that_copies_or_infers_the_dynamic_axes_passes() -> None:
    model = _parse(
        HEADER
        + """
        g (float[batch, seq, 4] x) => (float[batch, seq, 4] y) {
            shape = Constant <value = int64[3] {0, -1, 4}> ()
            y = Reshape (x, shape)
        }
        """
    )
    assert graph_problems(model) == []


def test_an_expand_that_bakes_the_batch_is_refused() -> None:
    model = _parse(
        HEADER
        + """
        g (float[batch, 1, 4] x) => (float[batch, 5, 4] y) {
            shape = Constant <value = int64[3] {2, 5, 4}> ()
            y = Expand (x, shape)
        }
        """
    )
    problems = graph_problems(model)
    assert len(problems) == 1, problems
    assert "Expand node" in problems[0]
    assert "dynamic axis 'batch' of its input, to the constant 2" in problems[0]


def test_a_constant_initial_state_with_a_dynamic_batch_is_refused() -> None:
    zeros = ", ".join(["0.0"] * (2 * H))
    model = _parse(
        HEADER
        + f"""
        g (float[seq, batch, 3] x) => (float[seq, 1, batch, {H}] y) {{
            w = Constant <value = float[1, {H}, 3] {{{", ".join(["0.0"] * (H * 3))}}}> ()
            r = Constant <value = float[1, {H}, {H}] {{{", ".join(["0.0"] * (H * H))}}}> ()
            h0 = Constant <value = float[1, 2, {H}] {{{zeros}}}> ()
            y = RNN <hidden_size = {H}> (x, w, r, , , h0)
        }}
        """
    )
    problems = graph_problems(model)
    assert len(problems) == 1, problems
    assert "starts from a constant initial state 'h0' of shape [1, 2, 2]" in problems[0]


# -- the recurrent ops: eager, and exported -------------------------------------------------------


class Packed(nn.Module):
    """A recurrent module run packed (unsorted lengths) or plain, with or without initial states."""

    def __init__(self, rnn: nn.RNNBase, *, packed: bool, states: bool) -> None:
        super().__init__()
        self.rnn, self.packed, self.states = rnn, packed, states

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hx = ((h0, c0) if isinstance(self.rnn, nn.LSTM) else h0) if self.states else None
        if not self.packed:
            y, final = self.rnn(x, hx)
        else:
            p = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, final = self.rnn(p, hx)
            y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        h = final[0] if isinstance(final, tuple) else final
        return y, h


def _case(name: str) -> tuple[nn.RNNBase, int, int]:
    """(module, rows of h, width of h); LSTM with proj_size has h of width proj_size."""
    torch.manual_seed(0)
    makers: dict[str, Callable[[], nn.RNNBase]] = {
        "lstm-2-layer-bidir": lambda: nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True),
        "lstm-proj": lambda: nn.LSTM(5, 6, num_layers=2, proj_size=3, batch_first=True),
        "gru-bidir": lambda: nn.GRU(5, 4, bidirectional=True, batch_first=True),
        "gru-2-layer": lambda: nn.GRU(5, 4, num_layers=2, batch_first=True),
        "rnn-relu": lambda: nn.RNN(5, 4, nonlinearity="relu", batch_first=True),
    }
    rnn = makers[name]()
    rows = int(rnn.num_layers) * (2 if rnn.bidirectional else 1)
    width = int(rnn.proj_size or rnn.hidden_size)
    return rnn, rows, width


CASES = ["lstm-2-layer-bidir", "lstm-proj", "gru-bidir", "gru-2-layer", "rnn-relu"]


def _feeds(batch: int, seq: int, rnn: nn.RNNBase, rows: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch * 100 + seq)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    return {
        "x": torch.randn(batch, seq, 5, generator=g),
        "lengths": lengths[torch.randperm(batch, generator=g)],
        "h0": torch.randn(rows, batch, width, generator=g),
        "c0": torch.randn(rows, batch, rnn.hidden_size, generator=g),
    }


def _contract(rows: int, width: int, hidden: int, y_width: int) -> Contract:
    return Contract(
        inputs=(
            TensorSpec("x", "float32", ("batch", "seq", 5)),
            TensorSpec("lengths", "int64", ("batch",)),
            TensorSpec("h0", "float32", (rows, "batch", width)),
            TensorSpec("c0", "float32", (rows, "batch", hidden)),
        ),
        outputs=(
            TensorSpec("y", "float32", ("batch", "seq", y_width)),
            TensorSpec("h", "float32", (rows, "batch", width)),
        ),
    )


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_the_ops_run_eagerly_as_the_module_does(name: str, packed: bool) -> None:
    rnn, rows, width = _case(name)
    model = Packed(rnn, packed=packed, states=True).eval()
    feeds = _feeds(4, 9, rnn, rows, width)
    with torch.no_grad():
        want = model(**feeds)
        with dynamo_patches(model):
            got = model(**feeds)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert not any("_rnnexport_onnx" in n for n, _ in model.named_buffers())  # the buffers are gone


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_a_dynamo_export_computes_what_the_module_does_at_other_shapes(name: str) -> None:
    rnn, rows, width = _case(name)
    model = Packed(rnn, packed=True, states=True).eval()
    y_width = width * (2 if rnn.bidirectional else 1)
    contract = _contract(rows, width, int(rnn.hidden_size), y_width)
    proto = export_onnx(model, contract, exporter="dynamo")
    check_contract(proto, contract, stage="after export")
    kinds = [n.op_type for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert kinds == [type(rnn).__name__] * rnn.num_layers
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in ((5, 11), (1, 2), (3, 40)):
        feeds = _feeds(batch, seq, rnn, rows, width)
        used = {i.name for i in session.get_inputs()}
        got = session.run(None, {k: v.numpy() for k, v in feeds.items() if k in used})
        with torch.no_grad():
            want = model(**feeds)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-4)


class DataDependentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(5, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.rnn(x)[0]
        return y if bool(x.sum() > 0) else -y  # a Python branch on a tensor's value


def test_a_failed_dynamo_export_names_the_torch_version_and_the_measured_cause() -> None:
    contract = Contract(
        inputs=(TensorSpec("x", "float32", ("batch", "seq", 5)),),
        outputs=(TensorSpec("y", "float32", ("batch", "seq", 4)),),
    )
    with pytest.raises(ExportError) as caught:
        export_onnx(DataDependentBranch().eval(), contract, exporter="dynamo")
    message = str(caught.value)
    assert f"with the dynamo exporter (torch {torch.__version__.split('+')[0]})" in message
    # The exception torch.export raised, by name, not the wrapper's generic "step 1/3" text alone.
    cause = caught.value.__cause__
    assert cause is not None
    innermost: BaseException = cause
    while innermost.__cause__ is not None:
        innermost = innermost.__cause__
    assert f"{type(innermost).__name__}: " in message
    assert "known not to keep" not in message


# -- builds ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_packed_architecture_builds_with_dynamo_and_says_so(tmp_path: Path) -> None:
    import onnxscript

    manifest = build("many-to-many-masked", out=tmp_path, device="cpu", exporter="dynamo")
    assert manifest.export["exporter"] == "dynamo"
    assert manifest.versions["onnxscript"] == onnxscript.__version__
    assert manifest.versions["torch"] == torch.__version__
    model = onnx.load(str(tmp_path / "many-to-many-masked" / "model.onnx"))
    lstm = [n for n in model.graph.node if n.op_type == "LSTM"]
    assert len(lstm) == 1
    assert lstm[0].input[4]
    assert not [o for o in model.opset_import if o.domain == "rnnexport"]  # no custom domain ships


@pytest.mark.slow
def test_a_dynamo_build_on_the_command_line_prints_no_exporter_noise(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rnnexport", "build", "--arch", "parallel-gru", "--exporter", "dynamo",
         "--streaming", "--out", str(tmp_path), "--device", "cpu"],
        capture_output=True, text=True, check=False, cwd=REPO, env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    for noise in ("[torch.onnx]", "Warning", "[W:onnxruntime", "torchvision", "Traceback"):
        assert noise not in both, noise
    manifest = json.loads((tmp_path / "parallel-gru" / "manifest.json").read_text())
    assert manifest["export"]["exporter"] == "dynamo"
    assert manifest["streaming"]["states"]
