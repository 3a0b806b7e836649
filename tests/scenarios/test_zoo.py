"""The model zoo: user-style recurrent models built with ``--model`` (CLI) or the API, each artifact
verified, and each checked against the module run eagerly in PyTorch at shapes the build never saw.

The expected outputs come from torch alone (the module's own forward, packed where it packs); the
inputs are generated here, not by rnnexport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

import rnnexport
from rnnexport.artifact import verify_artifact
from rnnexport.runtime import probe_provider

from ..helpers import REPO, run_cli
from ..zoo import models

ZOO_FILE = REPO / "tests" / "zoo" / "models.py"
# Shapes no build uses: the trace is batch 2 x seq 3, the sweep batch 1/3/16 x seq 1/7/64/257.
NEW_SHAPES = ((5, 11), (4, 40), (1, 2))
ATOL, RTOL = 1e-5, 1e-4


def _t(name: str, dtype: str, shape: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, **extra}


def _lengths(name: str = "lengths", dtype: str = "int64") -> dict[str, Any]:
    return _t(name, dtype, ["batch"], role="lengths")


@dataclass(frozen=True)
class Entry:
    """One zoo model: how to make it, its I/O description, and how the test builds it."""

    target: str  # for --model, relative to the repository: FILE.py:NAME or package.module:NAME
    io: dict[str, Any]
    via: str  # "cli" or "api"
    config: dict[str, Any] = field(default_factory=dict)
    recurrent_nodes: tuple[str, ...] = ()  # op types of the ONNX recurrent nodes, in graph order
    packed: bool = False

    def make(self) -> torch.nn.Module:
        torch.manual_seed(0)
        factory = getattr(models, self.target.rpartition(":")[2])
        module: torch.nn.Module = factory(**self.config)
        return module.eval()


ZOO: dict[str, Entry] = {
    "article-variable-length": Entry(
        target="tests/zoo/models.py:VariableLengthManyToManyLSTM",
        config={"input_size": 10, "hidden_size": 20, "output_size": 5},
        io={
            "inputs": [_t("x", "float32", ["batch", "seq", 10]), _lengths("seq_lengths")],
            # pad_packed_sequence without total_length: max(lengths) steps, a dim of its own.
            "outputs": [{"name": "output", "shape": ["batch", "steps", 5]}],
        },
        via="cli",
        recurrent_nodes=("LSTM",),
        packed=True,
    ),
    "tagger": Entry(
        target="tests.zoo.models:Tagger",
        io={
            "inputs": [_t("tokens", "int64", ["batch", "seq"], range=[0, 1000]), _lengths()],
            "outputs": [{"name": "logits", "shape": ["batch", "seq", 9]}],
        },
        via="cli",
        recurrent_nodes=("GRU", "GRU"),
        packed=True,
    ),
    "forecaster": Entry(
        target="tests/zoo/models.py:Forecaster",
        io={
            "inputs": [_t("series", "float32", ["batch", "seq", 4]), _lengths(dtype="int32")],
            "outputs": [
                {"name": "forecast", "shape": ["batch", 1]},
                {"name": "h_n", "shape": [3, "batch", 32]},
                {"name": "c_n", "shape": [3, "batch", 32]},
            ],
        },
        via="api",
        recurrent_nodes=("LSTM", "LSTM", "LSTM"),
        packed=True,
    ),
    "stateful-lstm": Entry(
        target="tests/zoo/models.py:stateful_lstm",
        config={"input_size": 6, "hidden_size": 24},
        io={
            "inputs": [
                _t("x", "float32", ["batch", "seq", 6]),
                _t("h0", "float32", [2, "batch", 24]),
                _t("c0", "float32", [2, "batch", 24]),
            ],
            "outputs": [
                {"name": "y", "shape": ["batch", "seq", 24]},
                {"name": "h_n", "shape": [2, "batch", 24]},
                {"name": "c_n", "shape": [2, "batch", 24]},
            ],
        },
        via="cli",
        recurrent_nodes=("LSTM", "LSTM"),
    ),
    "conv-gru-time-major": Entry(
        target="tests.zoo.models:ConvGRU",
        io={
            "inputs": [_t("x", "float32", ["seq", "batch", 6])],
            "outputs": [{"name": "y", "shape": ["seq", "batch", 4]}],
        },
        via="api",
        recurrent_nodes=("GRU",),
    ),
    "dropout-rnn": Entry(
        target="tests.zoo.models:DropoutRNN",
        io={
            "inputs": [_t("x", "float32", ["batch", "seq", 8])],
            "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
        },
        via="api",
        recurrent_nodes=("RNN", "RNN"),
    ),
    "pooled-classifier": Entry(
        target="tests/zoo/models.py:PooledClassifier",
        io={
            "inputs": [
                _t("x", "float32", ["batch", "seq", 8]),
                _lengths(),
                _t("extra", "float32", ["batch", 3]),
            ],
            "outputs": [
                {"name": "logits", "shape": ["batch", 4]},
                {"name": "encoded", "shape": ["batch", "seq", 12]},
            ],
        },
        via="api",
        recurrent_nodes=("LSTM",),
        packed=True,
    ),
}


def _build(entry: Entry, name: str, out: Path, work: Path) -> None:
    module = entry.make()
    if entry.via == "api":
        manifest = rnnexport.build_model_artifact(module, io=entry.io, name=name, out=out, device="cpu")
        assert manifest.verification["providers"]["CPUExecutionProvider"]["status"] == "passed"
        return
    # The CLI builds its own instance: give it this one's weights, so that eager runs here compare.
    io_path, config_path, weights = (
        work / f"{name}.io.json",
        work / f"{name}.config.json",
        work / f"{name}.safetensors",
    )
    io_path.write_text(json.dumps(entry.io))
    config_path.write_text(json.dumps(entry.config))
    save_file(module.state_dict(), str(weights))
    where, _, attr = entry.target.rpartition(":")
    target = f"{REPO / where}:{attr}" if where.endswith(".py") else entry.target
    args = ["build", "--model", target, "--io", str(io_path), "--weights", str(weights)]
    args += ["--config", str(config_path), "--name", name, "--out", str(out), "--device", "cpu"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, work = tmp_path_factory.mktemp("zoo"), tmp_path_factory.mktemp("zoo-inputs")
    for name, entry in ZOO.items():
        _build(entry, name, out, work)
    return out


def _inputs(io: dict[str, Any], batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in io["inputs"]:
        shape = [
            int({"batch": batch, "seq": seq}[d]) if isinstance(d, str) else int(d) for d in spec["shape"]
        ]
        if spec.get("role") == "lengths":
            lengths = rng.integers(1, seq + 1, size=batch)
            lengths[0], lengths[-1] = (seq, 1) if batch > 1 else (seq, seq)
            rng.shuffle(lengths)  # unsorted: enforce_sorted=False must not matter
            feeds[spec["name"]] = lengths.astype(spec["dtype"])
        elif spec["dtype"] == "float32":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
        else:
            low, high = spec["range"]
            feeds[spec["name"]] = rng.integers(low, high, size=shape).astype(spec["dtype"])
    return feeds


def _eager(module: torch.nn.Module, io: dict[str, Any], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    args = [torch.from_numpy(feeds[spec["name"]]) for spec in io["inputs"]]
    with torch.no_grad():
        result = module(*args)
    flat: list[torch.Tensor] = []
    stack = [result]
    while stack:  # flatten nested tuples, in order
        item = stack.pop(0)
        if isinstance(item, tuple):
            stack = list(item) + stack
        else:
            flat.append(item)
    return [t.numpy() for t in flat]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_artifact_passes_verify(zoo: Path, name: str) -> None:
    result = run_cli("verify", str(zoo / name), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    manifest = json.loads((zoo / name / "manifest.json").read_text())
    assert manifest["arch"] == name
    assert manifest["source"]["config"] == ZOO[name].config
    assert manifest["inputs"] == [
        {k: v for k, v in spec.items() if k != "doc"} for spec in ZOO[name].io["inputs"]
    ]
    shapes = manifest["verification"]["providers"]["CPUExecutionProvider"]["shapes"]
    first = ZOO[name].io["inputs"][0]["name"]
    assert len(shapes) >= 12  # the batch x seq sweep, and the long case
    assert all(2 not in s[first][:2] or 3 not in s[first][:2] for s in shapes)  # never the trace shape


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_matches_eager_pytorch_at_new_shapes(zoo: Path, name: str) -> None:
    entry = ZOO[name]
    module = entry.make()
    session = ort.InferenceSession(str(zoo / name / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(42)
    for batch, seq in NEW_SHAPES:
        feeds = _inputs(entry.io, batch, seq, rng)
        got = session.run(None, feeds)
        want = _eager(module, entry.io, feeds)
        assert len(got) == len(want)
        for out, g, w in zip(entry.io["outputs"], got, want, strict=True):
            assert g.shape == w.shape, (out["name"], batch, seq)
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=RTOL, err_msg=f"{out['name']} b{batch} s{seq}")


@pytest.mark.parametrize("name", [n for n, e in ZOO.items() if e.packed])
def test_packed_models_ignore_padding_and_keep_pytorchs_final_states(zoo: Path, name: str) -> None:
    # Valid steps and final states equal the packed eager run; padding content changes nothing.
    entry = ZOO[name]
    module = entry.make()
    session = ort.InferenceSession(str(zoo / name / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    feeds = _inputs(entry.io, 6, 25, rng)
    lengths_name = next(s["name"] for s in entry.io["inputs"] if s.get("role") == "lengths")
    lengths = feeds[lengths_name]
    poisoned = {k: v.copy() for k, v in feeds.items()}
    data = next(s["name"] for s in entry.io["inputs"] if "seq" in s["shape"])
    for row, length in enumerate(lengths):
        if poisoned[data].dtype == np.float32:
            poisoned[data][row, length:] = 1e6
        else:
            poisoned[data][row, length:] = 999
    clean, dirty = session.run(None, feeds), session.run(None, poisoned)
    for out, c, d, w in zip(entry.io["outputs"], clean, dirty, _eager(module, entry.io, feeds), strict=True):
        np.testing.assert_allclose(c, w, atol=ATOL, rtol=RTOL, err_msg=out["name"])
        if "seq" in out["shape"] or "steps" in out["shape"]:
            for row, length in enumerate(lengths):  # valid steps ignore the padding
                np.testing.assert_allclose(d[row, :length], c[row, :length], atol=ATOL, rtol=RTOL)
        else:
            np.testing.assert_allclose(d, c, atol=ATOL, rtol=RTOL, err_msg=out["name"])
    if name == "pooled-classifier":  # the encoder's output, straight from pad_packed_sequence
        encoded = clean[1]
        for row, length in enumerate(lengths):
            assert (encoded[row, length:] == 0).all()
    if name == "article-variable-length":
        assert clean[0].shape[1] == lengths.max()  # max(lengths) steps, as PyTorch returns


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_graphs_are_recurrent_nodes_without_sorting(zoo: Path, name: str) -> None:
    entry = ZOO[name]
    graph = onnx.load(str(zoo / name / "model.onnx")).graph
    recurrent = [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert tuple(n.op_type for n in recurrent) == entry.recurrent_nodes
    # Nothing sorts rows: no index order from the trace can reach the graph.
    assert not {n.op_type for n in graph.node} & {"TopK", "ArgMax", "ArgMin"}
    for node in recurrent:
        has_lengths = len(node.input) > 4 and node.input[4] != ""
        assert has_lengths == entry.packed
        if "bidirectional" in str(node.attribute):
            assert any(a.name == "direction" and a.s == b"bidirectional" for a in node.attribute)


def test_model_size_stays_near_the_parameters(zoo: Path) -> None:
    # model.onnx holds each weight once: at most 1.5x the float32 bytes of the parameters.
    for name in ("tagger", "forecaster", "stateful-lstm"):
        params = sum(p.numel() for p in ZOO[name].make().parameters())
        assert (zoo / name / "model.onnx").stat().st_size <= 1.5 * 4 * params, name


def test_lstmcell_loop_is_refused_with_cause_and_fix(tmp_path: Path) -> None:
    io = tmp_path / "io.json"
    io.write_text(
        json.dumps(
            {
                "inputs": [_t("x", "float32", ["batch", "seq", 5])],
                "outputs": [{"name": "h", "shape": ["batch", "seq", 16]}],
            }
        )
    )
    out = tmp_path / "out"
    result = run_cli(
        "build", "--model", f"{ZOO_FILE}:CellLoop", "--io", str(io), "--out", str(out), "--device", "cpu"
    )
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "cannot keep a dynamic sequence axis" in message
    assert "nn.LSTMCell" in message
    assert "Use nn.LSTM" in message
    assert not out.exists()


def test_a_loop_without_cells_is_caught_by_the_contract_check(tmp_path: Path) -> None:
    io = {
        "inputs": [_t("x", "float32", ["batch", "seq", 5])],
        "outputs": [{"name": "h", "shape": ["batch", "seq", 16]}],
    }
    with pytest.raises(rnnexport.RnnExportError) as info:
        rnnexport.build_model_artifact(models.ManualLoop(), io=io, out=tmp_path, device="cpu")
    message = str(info.value)
    assert "should be the dynamic axis 'seq' but is the fixed size 3" in message
    assert "Python loop over the time steps" in message
    assert "Use nn.LSTM" in message
    assert list(tmp_path.iterdir()) == []


def test_data_dependent_branch_is_refused(tmp_path: Path) -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.gru(x)[0]
            return y * 2 if x.sum() > 0 else y

    io = {
        "inputs": [_t("x", "float32", ["batch", "seq", 3])],
        "outputs": [{"name": "y", "shape": ["batch", "seq", 4]}],
    }
    with pytest.raises(rnnexport.RnnExportError, match="Python boolean") as info:
        rnnexport.build_model_artifact(Branchy(), io=io, out=tmp_path, device="cpu")
    assert "torch.where" in str(info.value)
    assert list(tmp_path.iterdir()) == []


_CUDA = probe_provider("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA.available, reason=f"no working CUDA provider here: {_CUDA.reason}")
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_artifact_verifies_on_cuda(zoo: Path, name: str) -> None:
    # sequence_lens, bidirectional and stacked nodes on the CUDA provider, against the CPU references.
    report = verify_artifact(zoo / name, device="cuda")
    [result] = report.results.values()
    assert result.provider == "CUDAExecutionProvider"
    assert report.passed, result.failures


def test_a_user_model_builds_every_variant(tmp_path: Path) -> None:
    entry = ZOO["stateful-lstm"]
    manifest = rnnexport.build_model_artifact(
        entry.make(),
        io=entry.io,
        name="variants",
        out=tmp_path,
        device="cpu",
        precisions="fp32,fp16,int8",
        formats="onnx,ort",
    )
    shipped = {v["file"]: v["status"] for v in manifest.variants}
    assert set(shipped) == {
        "model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.ort", "model.fp16.ort", "model.int8.ort",
    }  # fmt: skip
    for file, status in shipped.items():
        assert (tmp_path / "variants" / file).is_file() == (status == "passed"), file
    result = run_cli("verify", str(tmp_path / "variants"), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["variants"]) == {f for f, s in shipped.items() if s == "passed"} - {
        "model.onnx"
    }


def test_user_weights_that_do_not_fit_are_listed_by_key(tmp_path: Path) -> None:
    from rnnexport.errors import WeightsError

    entry = ZOO["stateful-lstm"]
    state = {f"\x1b[2J{k}": v for k, v in entry.make().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError) as info:
        rnnexport.build_model_artifact(
            entry.make(), io=entry.io, weights=tmp_path / "w.safetensors", out=tmp_path / "out", device="cpu"
        )
    message = str(info.value)
    assert "do not fit the model: missing (" in message
    assert "unexpected (" in message
    assert "'\\x1b[2J" in message  # keys quoted with repr: no raw escape reaches a terminal
    assert not (tmp_path / "out").exists()
