"""`rnnexport build` end to end: the artifacts run everywhere they claim to, and prove it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rnnexport.artifact import read_test_data
from rnnexport.builder.eager import TorchRunner, build_model
from rnnexport.builder.export import AUTO_ORDER
from rnnexport.builder.golden import load_golden
from rnnexport.builder.pipeline import build
from rnnexport.registry import get_arch
from rnnexport.runtime import probe_provider
from rnnexport.spec import ArchConfig, Contract

from ..helpers import ARCH_NAMES, build_every_architecture, run_cli

CUDA_HERE = probe_provider("cuda").available


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_every_architecture(tmp_path_factory.mktemp("dist"), "auto")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_artifact_runs_at_any_batch_and_length(artifacts: Path, arch: str) -> None:
    spec = get_arch(arch)
    golden = load_golden(spec)
    model = build_model(
        spec, ArchConfig(), state_dict={k: torch.from_numpy(v) for k, v in golden.weights.items()}
    )
    reference = TorchRunner(spec, model)
    session = _session(artifacts / arch / "model.onnx")
    rng = np.random.default_rng(5)
    for batch in (1, 2, 5, 16):
        for seq in (1, 2, 3, 50, 500):
            feeds = {"x": rng.standard_normal((batch, seq, 10), dtype=np.float32)}
            if spec.masked:
                feeds["lengths"] = rng.integers(1, seq + 1, size=batch).astype(np.int64)
            [y] = session.run(["y"], feeds)
            width = 20 if arch.startswith("parallel") else 5
            assert y.shape == ((batch, seq, width) if spec.per_step else (batch, width))
            np.testing.assert_allclose(y, reference.infer(feeds)["y"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_test_data_reproduced_within_recorded_tolerance(artifacts: Path, arch: str) -> None:
    folder = artifacts / arch
    manifest = json.loads((folder / "manifest.json").read_text())
    tol = manifest["verification"]["tolerance"]["cpu"]
    contract = Contract.from_json(manifest)
    cases = read_test_data(folder, contract)
    seqs = {c.inputs["x"].shape[1] for c in cases}
    assert 1 in seqs
    assert max(seqs) > 100
    session = _session(folder / "model.onnx")
    for case in cases:
        [y] = session.run(["y"], case.inputs)
        np.testing.assert_allclose(y, case.outputs["y"], atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_manifest_hashes_and_contents(artifacts: Path, arch: str) -> None:
    folder = artifacts / arch
    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert manifest["arch"] == arch
    assert {"rnnexport", "torch", "onnx", "onnxruntime", "onnxsim"} <= set(manifest["versions"])
    export = manifest["export"]
    assert (export["requested"], export["tried_first"]) == ("auto", AUTO_ORDER[0])
    # The measured first choice made it, or its failure is recorded (which fails on which torch is
    # not this test's business).
    assert export["exporter"] == AUTO_ORDER[0] or export["fallback"]["from"] == AUTO_ORDER[0]
    assert manifest["export"]["opset"] == 17
    shipped_nodes = len(onnx.load(str(folder / "model.onnx")).graph.node)
    assert manifest["simplification"]["nodes_after"] == shipped_nodes
    assert manifest["simplification"]["nodes_before"] > 0
    assert manifest["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10]}
    cpu = manifest["verification"]["providers"]["CPUExecutionProvider"]
    assert cpu["status"] == "passed"
    assert cpu["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert cpu["max_abs_error"] <= 1e-5
    assert cpu["worst"]["output"] == "y"
    assert len(cpu["worst"]["index"]) == (3 if get_arch(arch).per_step else 2)
    shapes = {tuple(s["x"][:2]) for s in cpu["shapes"]}
    assert {(b, s) for b in (1, 3, 16) for s in (1, 7, 64, 257)} <= shapes
    assert (2, 3) not in shapes  # never the trace shape
    cuda = manifest["verification"]["providers"]["CUDAExecutionProvider"]
    if CUDA_HERE:
        assert cuda["status"] == "passed"
    else:
        assert cuda["status"] == "unavailable"
        assert cuda["reason"]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_model_is_single_file_self_describing_and_dynamic(artifacts: Path, arch: str) -> None:
    model = onnx.load(str(artifacts / arch / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rnnexport.arch"] == arch
    assert json.loads(props["rnnexport.contract"])["inputs"][0]["shape"] == ["batch", "seq", 10]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    x = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in x[:2]] == ["batch", "seq"]


def test_cli_build_json_and_exit_codes(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    [entry] = summary["artifacts"]
    assert entry["providers"]["CPUExecutionProvider"]["status"] == "passed"
    auto = run_cli("build", "--arch", "attention", "--out", str(tmp_path / "b"), "--device", "auto")
    assert auto.exit_code == 0, auto.output
    usage = run_cli("build", "--out", str(tmp_path))
    assert usage.exit_code == 2
    assert "exactly one of --arch NAME, --all or --model" in " ".join(usage.output.split())


@pytest.mark.skipif(CUDA_HERE, reason="this machine has a working CUDA provider")
def test_device_cuda_without_cuda_exits_1(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path), "--device", "cuda")
    assert result.exit_code == 1
    assert "CUDA is unavailable here" in result.output
    assert "--device cpu" in result.output
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_ships_nothing(tmp_path: Path) -> None:
    # A zero tolerance cannot be met by float32 arithmetic in a different order: a real failure. (The
    # oracle rule would still allow 4x PyTorch float32's own error, so the plain rule is asked for.)
    result = run_cli(
        "build",
        "--arch",
        "many-to-many",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--atol",
        "0",
        "--rtol",
        "0",
        "--rule",
        "tolerance",
    )
    assert result.exit_code == 1
    assert "did not pass, so nothing was shipped" in result.output
    assert "values outside atol 0" in result.output
    assert list(tmp_path.iterdir()) == []


def test_same_build_from_two_folders_is_byte_identical(tmp_path: Path) -> None:
    digests = []
    for where in ("1", "2"):
        cwd = tmp_path / where
        cwd.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rnnexport",
                "build",
                "--arch",
                "parallel-gru",
                "--device",
                "cpu",
                "--out",
                "o",
            ],
            cwd=cwd,
            check=True,
            capture_output=True,
            env=os.environ | {"PYTHONHASHSEED": where},
        )
        manifest = json.loads((cwd / "o" / "parallel-gru" / "manifest.json").read_text())
        model = (cwd / "o/parallel-gru/model.onnx").read_bytes()
        for leak in (str(cwd).encode(), str(tmp_path).encode(), b"site-packages", b"Traceback", b'File "'):
            assert leak not in model
        digests.append((model, manifest["files"]))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("arch", ["many-to-many-masked", "attention"])
def test_nan_padding_cannot_reach_valid_outputs(artifacts: Path, arch: str) -> None:
    # Straight into ONNX Runtime, bypassing rnnexport's own input checks, as a deployed model is used.
    session = _session(artifacts / arch / "model.onnx")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 30, 10), dtype=np.float32)
    lengths = np.array([30, 12, 1, 29], np.int64)
    poisoned = x.copy()
    for row, length in enumerate(lengths):
        poisoned[row, length:] = np.nan
    [clean] = session.run(["y"], {"x": x, "lengths": lengths})
    [dirty] = session.run(["y"], {"x": poisoned, "lengths": lengths})
    assert np.isfinite(dirty).all()
    np.testing.assert_array_equal(dirty, clean)
    if get_arch(arch).per_step:
        for row, length in enumerate(lengths):
            assert (dirty[row, length:] == 0).all()


@pytest.mark.parametrize("opset", [9, 13, 18, 21])
@pytest.mark.parametrize("arch", ["attention", "parallel-gru"])
def test_other_opsets_build_and_verify(tmp_path: Path, arch: str, opset: int) -> None:
    # The export-time formulations (sequence_lens LSTM, fused branches) emit opset-aware nodes.
    manifest = build(arch, out=tmp_path, device="cpu", opset=opset)
    assert manifest.export["opset"] == opset
    assert manifest.verification["providers"]["CPUExecutionProvider"]["status"] == "passed"
    model = onnx.load(str(tmp_path / arch / "model.onnx"))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}


@pytest.mark.parametrize(
    ("arch", "sizes", "streaming"),
    [
        ("parallel-lstm", {"hidden_size": 64, "branches": 5}, False),  # 68% zeros if block-diagonal
        ("parallel-gru", {"hidden_size": 48, "branches": 4}, False),
        ("parallel-lstm-attention", {"hidden_size": 32, "branches": 3}, False),
        ("attention", {"hidden_size": 64}, False),
        # Streaming builds merge the branches into one node: its block-diagonal weights must be
        # built at load, not stored.
        ("parallel-lstm-attention", {"hidden_size": 32, "branches": 3}, True),
        ("parallel-gru", {"hidden_size": 40, "branches": 3}, True),
    ],
)
def test_model_file_holds_each_weight_once(
    tmp_path: Path, arch: str, sizes: dict[str, int], streaming: bool
) -> None:
    manifest = build(arch, out=tmp_path, device="cpu", config=sizes, streaming=streaming)
    model = build_model(get_arch(arch), ArchConfig(**{**ArchConfig().to_dict(), **sizes}), seed=0)
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    size = (tmp_path / arch / "model.onnx").stat().st_size
    assert size <= 1.5 * weight_bytes, (size, weight_bytes)
    ops = [n.op_type for n in onnx.load(str(tmp_path / arch / "model.onnx")).graph.node]
    assert ops.count("LSTM") + ops.count("GRU") == (1 if streaming else sizes.get("branches", 1))
    assert manifest.verification["providers"]["CPUExecutionProvider"]["status"] == "passed"
