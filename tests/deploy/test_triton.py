"""`deploy triton`: every generated config parses as Triton's own ModelConfig and matches the manifest.

No Triton server runs here; the protobuf comes from the `tritonclient` package (the 'triton' extra).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from rnnexport.deploy.triton import triton_config
from rnnexport.errors import UsageError
from rnnexport.spec import Contract, TensorSpec
from rnnexport.streaming import InitialTensor, StateSpec, Streaming

from ..helpers import import_or_skip, run_cli

model_config_pb2 = import_or_skip(
    "tritonclient.grpc.model_config_pb2", reason="the 'triton' extra (tritonclient[grpc]) is not installed"
)
from google.protobuf import text_format  # noqa: E402

SMALL = {"input_size": 4, "hidden_size": 6, "output_size": 3}
FP32 = model_config_pb2.DataType.Value("TYPE_FP32")
INT64 = model_config_pb2.DataType.Value("TYPE_INT64")


def _parse(text: str) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)  # raises on any field Triton does not know
    return config


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rnnexport.builder.pipeline import build

    out = tmp_path_factory.mktemp("dist")
    build("many-to-many-masked", out=out / "plain", device="cpu", config=SMALL)
    build("many-to-many-masked", out=out / "stream", device="cpu", config=SMALL, streaming=True)
    return out


def _deploy(artifact: Path, out: Path, *args: str) -> Any:
    result = run_cli("deploy", "triton", str(artifact), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result


def test_a_stateless_artifact_gets_dynamic_batching_and_lengths_reshaped(dist: Path, tmp_path: Path) -> None:
    artifact = dist / "plain" / "many-to-many-masked"
    _deploy(artifact, tmp_path / "repo", "--max-batch-size", "16")
    folder = tmp_path / "repo" / "many-to-many-masked"
    config = _parse((folder / "config.pbtxt").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert config.name == "many-to-many-masked"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert config.HasField("dynamic_batching")
    assert not config.HasField("sequence_batching")
    # Each manifest input and output, its batch axis removed, seq as -1.
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [-1, 4]), ("lengths", [1])]
    assert [t.data_type for t in config.input] == [FP32, INT64]
    assert [i["name"] for i in manifest["inputs"]] == ["x", "lengths"]
    lengths = config.input[1]
    assert lengths.HasField("reshape")
    assert list(lengths.reshape.shape) == []
    assert not config.input[0].HasField("reshape")
    assert [(t.name, list(t.dims), t.data_type) for t in config.output] == [("y", [-1, 3], FP32)]
    # The model file is the verified artifact's, byte for byte.
    shipped = (folder / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == manifest["files"]["model.onnx"]
    assert "no Triton server ran" in (tmp_path / "repo" / "README.md").read_text()


def test_a_streaming_artifact_gets_implicit_state_from_the_manifest_pairs(dist: Path, tmp_path: Path) -> None:
    artifact = dist / "stream" / "many-to-many-masked"
    _deploy(artifact, tmp_path / "repo", "--max-batch-size", "8", "--name", "tagger")
    config = _parse((tmp_path / "repo" / "tagger" / "config.pbtxt").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())
    states = manifest["streaming"]["states"]
    assert config.name == "tagger"
    assert config.HasField("sequence_batching")
    assert not config.HasField("dynamic_batching")
    # The state tensors are Triton's: they leave input/output.
    assert [t.name for t in config.input] == ["x", "lengths"]
    assert [t.name for t in config.output] == ["y"]
    got = [
        (s.input_name, s.output_name, s.data_type, list(s.dims), [i.zero_data for i in s.initial_state])
        for s in config.sequence_batching.state
    ]
    want = [(s["input"], s["output"], FP32, s["shape"][1:], [True]) for s in states]
    assert got == want
    assert all(list(s.initial_state[0].dims) == list(s.dims) for s in config.sequence_batching.state)


def test_a_shipped_initial_state_becomes_a_data_file() -> None:
    initial = InitialTensor("initial_state/state_in.lstm.h.pb", "0" * 64, (1, 2, 5))
    streaming = Streaming((StateSpec("lstm.h", ("batch", 2, 5), initial=initial),))
    contract = streaming.contract(
        Contract(
            (TensorSpec("x", "float32", ("batch", "seq", 3)),),
            (TensorSpec("y", "float32", ("batch", "seq", 5)),),
        )
    )
    text = triton_config(
        "m", contract, streaming, max_batch_size=4, data_files={"state_in.lstm.h": "state_in.lstm.h.bin"}
    )
    (state,) = _parse(text).sequence_batching.state
    (start,) = state.initial_state
    assert start.data_file == "state_in.lstm.h.bin"
    assert list(state.dims) == [2, 5]


def test_no_batching_keeps_every_axis() -> None:
    contract = Contract(
        (TensorSpec("x", "float32", ("batch", "seq", 3)),), (TensorSpec("y", "float32", ("batch", 5)),)
    )
    config = _parse(triton_config("m", contract, None, max_batch_size=0))
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, -1, 3]
    assert list(config.output[0].dims) == [-1, 5]
    assert not config.HasField("dynamic_batching")


def test_a_streaming_artifact_needs_a_batch_size() -> None:
    streaming = Streaming((StateSpec("lstm.h", ("batch", 5)),))
    contract = streaming.contract(Contract((TensorSpec("x", "float32", ("batch", "seq", 3)),), ()))
    with pytest.raises(UsageError, match="--max-batch-size 1 or more"):
        triton_config("m", contract, streaming, max_batch_size=0)


def test_bad_names_and_existing_folders_are_refused(dist: Path, tmp_path: Path) -> None:
    artifact = dist / "plain" / "many-to-many-masked"
    bad = run_cli("deploy", "triton", str(artifact), "--out", str(tmp_path / "r"), "--name", "../x")
    assert bad.exit_code == 2
    assert "cannot name a Triton model folder" in bad.output
    assert not (tmp_path / "r").exists()
    (tmp_path / "taken").mkdir()
    taken = run_cli("deploy", "triton", str(artifact), "--out", str(tmp_path / "taken"))
    assert taken.exit_code == 2
    assert "never overwrites" in taken.output
