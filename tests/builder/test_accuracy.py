"""The oracle rule on real exports: a broken export fails at every length, a trained GRU whose float32
drift exceeds atol at 1000 steps passes, and the long sequence is part of every build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from rnnexport.builder.eager import Float64Runner, TorchRunner, build_model
from rnnexport.builder.golden import load_golden
from rnnexport.builder.pipeline import build
from rnnexport.feeds import Case, make_feeds
from rnnexport.registry import get_arch
from rnnexport.runtime.compare import Criterion, Tolerance, verify_on_device
from rnnexport.runtime.oracle import seq_axes
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import ArchConfig

LENGTHS = (1, 7, 64, 257, 1000)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _swap_first_two_gates(model: onnx.ModelProto, op: str) -> onnx.ModelProto:
    """The same model with the first two gate blocks of the RNN's W, R and B exchanged (ONNX order:
    LSTM i,o,f,c; GRU z,r,h): the classic gate-order mistake of a hand-written converter."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    node = next(n for n in broken.graph.node if n.op_type == op)
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    tensors = {t.name: t for t in broken.graph.initializer}
    tensors |= {
        n.output[0]: a.t
        for n in broken.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.HasField("t")
    }
    for name in node.input[1:4]:
        tensor = tensors[name]
        array = numpy_helper.to_array(tensor).copy()
        blocks = 2 if name == node.input[3] else 1  # B holds the input and the recurrent biases
        for half in range(blocks):
            size = array.shape[1] // blocks
            first = slice(half * size, half * size + hidden)
            second = slice(half * size + hidden, half * size + 2 * hidden)
            array[:, first], array[:, second] = array[:, second].copy(), array[:, first].copy()
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return broken


@pytest.mark.parametrize(("arch", "op"), [("many-to-many", "LSTM"), ("parallel-gru", "GRU")])
def test_swapped_gate_order_fails_at_every_length(tmp_path: Path, arch: str, op: str) -> None:
    build(arch, out=tmp_path, device="cpu")
    model = onnx.load(str(tmp_path / arch / "model.onnx"))
    spec = get_arch(arch)
    golden = load_golden(spec)
    torch_model = build_model(
        spec, ArchConfig(), state_dict={k: torch.from_numpy(v) for k, v in golden.weights.items()}
    )
    float32, float64 = TorchRunner(spec, torch_model), Float64Runner.for_arch(spec, torch_model)
    rng = np.random.default_rng(11)
    contract = spec.contract(ArchConfig())
    cases, exact = [], {}
    for length in LENGTHS:
        feeds = make_feeds(contract, batch=3, seq=length, rng=rng)
        cases.append(Case(f"s{length}", feeds, float32.infer(feeds)))
        exact[f"s{length}"] = float64.infer(feeds)
    plan = VerificationPlan(
        tuple(cases), Criterion("oracle"), {"cpu": Tolerance()}, float64=exact, seq_axes=seq_axes(contract)
    )
    good = verify_on_device(model.SerializeToString(), plan, device="cpu")
    assert good.status == "passed", good.failures
    bad = verify_on_device(_swap_first_two_gates(model, op).SerializeToString(), plan, device="cpu")
    assert bad.status == "failed"
    assert [c.passed for c in bad.cases] == [False] * len(LENGTHS)
    # It fails from the very first steps, far beyond anything rounding explains.
    assert all(c.outputs[0].oracle is not None and "1-10" in c.outputs[0].oracle.by_steps for c in bad.cases)
    assert min(c.outputs[0].max_ratio for c in bad.cases) > 10


def test_trained_parallel_gru_at_1000_steps_passes_under_the_oracle(tmp_path: Path) -> None:
    # parallel-gru, input 7, hidden 24, 2 branches, trained 30 steps, checked at batch 33 x seq 1000:
    # its float32 drift from float64 can exceed atol 1e-5 + rtol 1e-4 there, PyTorch's own included.
    spec = get_arch("parallel-gru")
    config = ArchConfig(input_size=7, hidden_size=24, branches=2)
    torch.manual_seed(0)
    model = spec.build_model(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        x = torch.randn(16, 50, 7)
        target = torch.cumsum(x[:, :, :1], dim=1).tanh().expand(-1, -1, 24)
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    torch.save(model.state_dict(), tmp_path / "gru.pt")
    long_x = np.random.default_rng(1).standard_normal((33, 1000, 7), dtype=np.float32)
    np.savez(tmp_path / "long.npz", x=long_x)
    manifest = build(
        "parallel-gru", out=tmp_path / "dist", weights=tmp_path / "gru.pt", inputs=tmp_path / "long.npz"
    )
    cpu = manifest.verification["providers"]["CPUExecutionProvider"]
    assert cpu["status"] == "passed"
    assert cpu["rule"] == "oracle"
    [long_case] = [c for c in cpu["per_case"] if c["case"] == "user:long.npz"]
    assert long_case["passed"]
    assert long_case["pytorch_float32_vs_float64"] > 0
    assert long_case["err_allowed"] <= 1
    by_steps = [b["steps"] for b in cpu["errors"]["by_steps"]]
    assert by_steps == ["1-10", "11-100", "101-1000"]


def test_every_build_has_a_long_case_and_ships_float64_references(tmp_path: Path) -> None:
    manifest = build("many-to-many", out=tmp_path, device="cpu")
    cpu = manifest.verification["providers"]["CPUExecutionProvider"]
    assert [3, 1000, 10] in [s["x"] for s in cpu["shapes"]]
    assert manifest.verification["rule"]["name"] == "oracle"
    assert manifest.verification["rule"]["factor"] == 4.0
    assert all("artifact_vs_float64" in c and "pytorch_float32_vs_float64" in c for c in cpu["per_case"])
    folder = tmp_path / "many-to-many"
    shipped = {tuple(e["shapes"]["x"][:2]) for e in manifest.test_data}
    assert (3, 1000) in shipped
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert all(f"{e['dir']}/float64_output_0.pb" in on_disk["files"] for e in on_disk["test_data"])
    tensor = onnx.TensorProto()
    tensor.ParseFromString((folder / "test_data_set_0" / "float64_output_0.pb").read_bytes())
    assert tensor.data_type == onnx.TensorProto.DOUBLE
    # The plain rule stays available and says so.
    plain = build("many-to-many", out=tmp_path / "plain", device="cpu", rule="tolerance")
    assert plain.verification["rule"]["name"] == "tolerance"
    assert plain.verification["providers"]["CPUExecutionProvider"]["rule"] == "tolerance"
