"""Learned initial states: a model that passes its own input-independent ``hx`` streams from it.

The expected values come from the model itself: the initial state is its ``nn.Parameter``, and a
stream fed chunk by chunk must equal the plain module run eagerly over the whole sequence.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import rnnexport
from rnnexport.artifact import MANIFEST, verify_artifact
from rnnexport.builder.stateful import make_streaming
from rnnexport.builder.usermodel import instantiate, load_factory
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.spec import Contract, TensorSpec

from ..helpers import flat, readme_example, run_cli, run_without_torch

# Written to a file, so that the CLI imports it as a user would (--model FILE.py:NAME).
MODELS = '''
import torch
from torch import nn


class LearnedLSTM(nn.Module):
    """Masked two-layer LSTM whose h0 and c0 are parameters, expanded over the batch."""

    def __init__(self, hidden_size: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(6, hidden_size, num_layers=2, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(2, 1, hidden_size))
        self.c0 = nn.Parameter(torch.randn(2, 1, hidden_size))
        self.head = nn.Linear(hidden_size, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h0 = self.h0.expand(-1, x.size(0), -1).contiguous()
        c0 = self.c0.expand(-1, x.size(0), -1).contiguous()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed, (h0, c0))
        y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return self.head(y)


class LearnedGRU(nn.Module):
    """x [batch, seq, 10] -> y [batch, seq, 8]: a GRU from a learned h0 (the README loop's shapes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.gru = nn.GRU(10, 8, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x, self.h0.expand(-1, x.size(0), -1).contiguous())
        return y


class EncodedH0(nn.Module):
    """h0 computed from the input: no stream can start from one value."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(10, 8)
        self.gru = nn.GRU(10, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = torch.tanh(self.encoder(x.mean(dim=1))).unsqueeze(0)
        y, _ = self.gru(x, h0)
        return y


class ZeroH0(nn.Module):
    """Passes an explicit all-zero h0: that is a stream starting from zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(10, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x, x.new_zeros(1, x.size(0), 8))
        return y
'''

LSTM_IO = {
    "inputs": [
        {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 6]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
    ],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
}
GRU_IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10]}],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 8]}],
}
GRU_CONTRACT = Contract(
    (TensorSpec("x", "float32", ("batch", "seq", 10)),), (TensorSpec("y", "float32", ("batch", "seq", 8)),)
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("source")
    (folder / "models.py").write_text(MODELS)
    (folder / "lstm_io.json").write_text(json.dumps(LSTM_IO))
    (folder / "gru_io.json").write_text(json.dumps(GRU_IO))
    return folder


def _model(source: Path, name: str) -> torch.nn.Module:
    factory, _ = load_factory(f"{source / 'models.py'}:{name}")
    return instantiate(factory, {}, what=name)


@pytest.fixture(scope="module")
def lstm_artifact(source: Path) -> Path:
    out = source / "dist"
    result = run_cli(
        "build",
        "--model",
        f"{source / 'models.py'}:LearnedLSTM",
        "--io",
        str(source / "lstm_io.json"),
        "--out",
        str(out),
        "--streaming",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    # The terminal says where a new stream starts: the model's own state, not zeros.
    assert (
        "2 start from the model's own learned initial state (shipped in initial_state/: "
        "state_in.lstm.c, state_in.lstm.h)" in flat(result.output)
    )
    return out / "learnedlstm"


def _initial(folder: Path, state: dict[str, Any]) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(folder / state["initial"]["file"])))


def test_the_artifact_ships_the_models_own_initial_state(lstm_artifact: Path, source: Path) -> None:
    manifest = json.loads((lstm_artifact / MANIFEST).read_text())
    states = {s["input"]: s for s in manifest["streaming"]["states"]}
    assert set(states) == {"state_in.lstm.h", "state_in.lstm.c"}
    model: Any = _model(source, "LearnedLSTM")
    for key, parameter in (("h", model.h0), ("c", model.c0)):
        state = states[f"state_in.lstm.{key}"]
        assert state["initial"]["file"] == f"initial_state/state_in.lstm.{key}.pb"
        assert state["initial"]["shape"] == [1, 2, 12]
        digest = hashlib.sha256((lstm_artifact / state["initial"]["file"]).read_bytes()).hexdigest()
        assert state["initial"]["sha256"] == digest == manifest["files"][state["initial"]["file"]]
        # [layers, 1, hidden] as the model holds it; batch-major [1, layers, hidden] as shipped.
        want = parameter.detach().numpy().transpose(1, 0, 2)
        np.testing.assert_array_equal(_initial(lstm_artifact, state), want)
    # The model's own metadata names the same files and digests (everything but the chains).
    props = {p.key: p.value for p in onnx.load(str(lstm_artifact / "model.onnx")).metadata_props}
    assert json.loads(props["rnnexport.streaming"]) == {
        k: v for k, v in manifest["streaming"].items() if k != "chains"
    }


def test_verify_replays_the_chains_from_the_shipped_state_without_torch(lstm_artifact: Path) -> None:
    manifest = json.loads((lstm_artifact / MANIFEST).read_text())
    report = verify_artifact(lstm_artifact, device="cpu")
    assert report.passed
    ran = {c.case for c in report.results["cpu"].cases}
    assert {d for chain in manifest["streaming"]["chains"] for d in chain} <= ran
    code = (
        "from rnnexport.artifact import verify_artifact\n"
        f"assert verify_artifact({str(lstm_artifact)!r}, device='cpu').passed\n"
    )
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr


def _stream(folder: Path, x: np.ndarray, lengths: np.ndarray, chunk: int) -> list[np.ndarray]:
    """The artifact fed ``chunk`` steps per call from the shipped initial state; each row's valid
    outputs, concatenated. A row whose steps are used up gets length 0 (it keeps its state)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    states = manifest["streaming"]["states"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    batch, steps = x.shape[:2]
    state = {s["input"]: np.repeat(_initial(folder, s), batch, axis=0) for s in states}
    rows: list[list[np.ndarray]] = [[] for _ in range(batch)]
    for position in range(0, steps, chunk):
        count = np.clip(lengths - position, 0, chunk)
        feeds = {"x": np.ascontiguousarray(x[:, position : position + chunk]), "lengths": count, **state}
        result = dict(zip(names, session.run(None, feeds), strict=True))
        state = {s["input"]: result[s["output"]] for s in states}
        for b in range(batch):
            rows[b].append(result["y"][b, : count[b]])
    return [np.concatenate(r) for r in rows]


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("lengths", [[11], [11, 11, 11], [11, 7, 1]], ids=["b1", "b3-full", "b3-ragged"])
def test_streaming_from_the_shipped_state_equals_the_whole_sequence(
    lstm_artifact: Path, source: Path, chunk: int, lengths: list[int]
) -> None:
    rows = np.array(lengths, np.int64)
    x = np.random.default_rng(chunk).standard_normal((len(rows), 11, 6), dtype=np.float32)
    model: Any = _model(source, "LearnedLSTM")
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(rows)).numpy()
    for b, got in enumerate(_stream(lstm_artifact, x, rows, chunk)):
        np.testing.assert_allclose(got, want[b, : rows[b]], atol=2e-5, rtol=1e-4)
    # Not a vacuous match: from zeros the same stream computes something else.
    with torch.no_grad():
        model.h0.zero_()
        model.c0.zero_()
        from_zeros = model(torch.from_numpy(x), torch.from_numpy(rows)).numpy()
    assert np.abs(from_zeros[0, :1] - want[0, :1]).max() > 1e-3


def _tamper_values(folder: Path) -> tuple[str, bytes]:
    manifest = json.loads((folder / MANIFEST).read_text())
    state = manifest["streaming"]["states"][0]
    path = folder / state["initial"]["file"]
    tensor = numpy_helper.from_array(_initial(folder, state) + 0.5, state["input"])
    path.write_bytes(tensor.SerializeToString())
    return state["initial"]["file"], path.read_bytes()


def _rehash(folder: Path, manifest: dict[str, Any], *names: str) -> None:
    for name in names:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("file", "was modified"),
        ("files-entry", "record different sha256"),
        ("manifest", "does not describe its model"),
        ("manifest-and-model", "does not start its streams"),
    ],
)
def test_a_tampered_initial_state_is_refused(
    lstm_artifact: Path, tmp_path: Path, how: str, message: str
) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(lstm_artifact, copy)
    file, data = _tamper_values(copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    if how != "file":
        _rehash(copy, manifest, file)
    if how in ("manifest", "manifest-and-model"):
        manifest["streaming"]["states"][0]["initial"]["sha256"] = hashlib.sha256(data).hexdigest()
        _rehash(copy, manifest)
    if how == "manifest-and-model":  # the whole artifact made consistent again around new values
        model = onnx.load(str(copy / "model.onnx"))
        section = {k: v for k, v in manifest["streaming"].items() if k != "chains"}
        for prop in model.metadata_props:
            if prop.key == "rnnexport.streaming":
                prop.value = json.dumps(section, sort_keys=True)
        onnx.save(model, str(copy / "model.onnx"))
        _rehash(copy, manifest, "model.onnx")
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(copy, device="cpu")
    result = run_cli("verify", str(copy), "--device", "cpu")
    assert result.exit_code == 1
    assert message in flat(result.output)


def test_an_input_dependent_initial_state_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="passes its own \\(hx\\) to it, and that hx depends on the inputs"):
        rnnexport.build_model_artifact(
            _model(source, "EncodedH0"), io=GRU_IO, name="encoded", out=tmp_path, streaming=True
        )
    assert list(tmp_path.iterdir()) == []


def test_an_explicit_zero_state_starts_from_zeros(source: Path) -> None:
    stream = make_streaming(_model(source, "ZeroH0"), GRU_CONTRACT)
    assert [s.to_json()["initial"] for s in stream.streaming.states] == ["zeros"]
    assert stream.files == {}


def test_the_readme_loop_starts_from_the_shipped_state(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(source, "LearnedGRU")
    rnnexport.build_model_artifact(model, io=GRU_IO, name="gru", out=tmp_path, streaming=True, device="cpu")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    code = readme_example("streaming").replace('"dist/many-to-many"', f'"{tmp_path / "gru"}"')
    exec(compile(code, "README.md", "exec"), namespace)
    whole = np.concatenate(list(namespace["steps"]), axis=1)  # [1, 100, 10]
    with torch.no_grad():
        want = model(torch.from_numpy(whole)).numpy()
    np.testing.assert_allclose(np.concatenate(namespace["ys"], axis=1), want, atol=2e-5, rtol=1e-4)
    exec(compile(readme_example("streaming-bound"), "README.md", "exec"), namespace)
    np.testing.assert_allclose(np.concatenate(namespace["fast"], axis=1), want, atol=2e-5, rtol=1e-4)


def test_a_dead_builds_staging_folder_with_initial_states_is_recognised(tmp_path: Path) -> None:
    """What a killed streaming build leaves is its own output (and cleaned up); a stranger file is not."""
    from rnnexport.artifact import publishing

    staging = tmp_path / ".learnedlstm.partial-1-1-x"
    (staging / "test_data_set_0").mkdir(parents=True)
    (staging / "test_data_set_0" / "input_0.pb").write_bytes(b"partial")
    (staging / "initial_state").mkdir()
    (staging / "initial_state" / "state_in.lstm.h.pb").write_bytes(b"partial")
    assert publishing._holds_only_build_output(staging)
    (staging / "initial_state" / "notes.txt").write_text("the user's")
    assert not publishing._holds_only_build_output(staging)
