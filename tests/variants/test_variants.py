"""fp16 / int8 / ORT-format variants: made, verified against float64, gated, shipped, re-verified."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from rnnexport.artifact import verify_artifact
from rnnexport.builder.accuracy import one_torch_thread
from rnnexport.builder.eager import Float64Runner, build_model
from rnnexport.builder.golden import load_golden
from rnnexport.builder.pipeline import build
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.feeds import make_feeds
from rnnexport.registry import get_arch
from rnnexport.runtime.compare import Tolerance
from rnnexport.spec import ArchConfig
from rnnexport.variants import (
    VARIANT_TOLERANCES,
    ReduceRange,
    choose_reduce_range,
    parse_choices,
    to_int8,
)

from ..helpers import run_cli

# One LSTM and one GRU architecture, each with every variant.
ARCHS = {"many-to-many": "LSTM", "parallel-gru": "GRU"}
FILES = [
    "model.onnx",
    "model.ort",
    "model.fp16.onnx",
    "model.fp16.ort",
    "model.int8.onnx",
    "model.int8.ort",
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variants")
    with one_torch_thread():
        for arch in ARCHS:
            build(arch, out=out, device="cpu", precisions="fp32,fp16,int8", formats="onnx,ort")
    return out


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_ships_with_its_evidence(artifacts: Path, arch: str) -> None:
    folder = artifacts / arch
    manifest = _manifest(folder)
    entries = {v["file"]: v for v in manifest["variants"]}
    assert list(entries) == FILES
    assert (folder / "required_operators.config").is_file()
    for name, entry in entries.items():
        assert entry["status"] == "passed", entry
        assert entry["shipped"]
        assert entry["bytes"] == (folder / name).stat().st_size
        assert manifest["files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert entry["precision"] in name or (entry["precision"] == "fp32" and name.count(".") == 1)
        assert name.endswith("." + entry["format"])
        errors = entry["errors"]
        assert {"max", "mean", "p99"} <= set(errors["artifact_vs_float64"])
        assert [b["steps"] for b in errors["by_steps"]] == ["1-10", "11-100", "101-1000"]
        assert errors["err_allowed"] <= 1
        assert entry["tolerance"]["rule"] == "oracle"
        tolerance = VARIANT_TOLERANCES[entry["precision"]] or Tolerance()
        assert entry["tolerance"]["cpu"] == tolerance.to_json()
        assert set(entry["runs_on"]) == {"CPU", "CUDA", "TensorRT", "XNNPACK", "CoreML", "NNAPI"}
        cpu = entry["runs_on"]["CPU"]
        assert cpu["status"] == "checked"
        assert cpu["taken"] == cpu["nodes"] > 0
        for mobile in ("CoreML", "NNAPI"):
            assert entry["runs_on"][mobile]["status"] == "checked"
            assert entry["runs_on"][mobile]["nodes"] > 0
        for provider, support in entry["runs_on"].items():
            assert support["status"] in ("checked", "unavailable"), provider
            if support["status"] == "unavailable":
                assert support["reason"]
    # Precision costs accuracy in the expected order, against the same float64 reference.
    worst = {e["precision"]: e["errors"]["artifact_vs_float64"]["max"] for e in entries.values()}
    assert worst["fp32"] < worst["fp16"] < worst["int8"]


@pytest.mark.parametrize("arch", ARCHS)
def test_variants_compute_the_model_at_new_shapes(artifacts: Path, arch: str) -> None:
    spec = get_arch(arch)
    golden = load_golden(spec)
    model = build_model(
        spec, ArchConfig(), state_dict={k: torch.from_numpy(v) for k, v in golden.weights.items()}
    )
    exact = Float64Runner.for_arch(spec, model)
    feeds = make_feeds(spec.contract(ArchConfig()), batch=5, seq=300, rng=np.random.default_rng(9))
    want = exact.infer(feeds)["y"]
    manifest = _manifest(artifacts / arch)
    for entry in manifest["variants"]:
        session = ort.InferenceSession(
            str(artifacts / arch / entry["file"]), providers=["CPUExecutionProvider"]
        )
        [got] = session.run(["y"], feeds)
        assert got.dtype == np.float32  # the I/O contract is float32 for every precision
        tol = entry["tolerance"]["cpu"]
        # The recorded tolerance, and nothing tighter than what float32 itself needs here.
        np.testing.assert_allclose(got, want, atol=max(tol["atol"], 1e-5), rtol=tol["rtol"])


@pytest.mark.parametrize(("arch", "op"), ARCHS.items())
def test_int8_quantizes_what_onnx_runtime_can(artifacts: Path, arch: str, op: str) -> None:
    folder = artifacts / arch
    model = onnx.load(str(folder / "model.int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    [entry] = [v for v in _manifest(folder)["variants"] if v["file"] == "model.int8.onnx"]
    details = entry["details"]
    assert isinstance(details["reduce_range"], bool)
    assert details["reason"]
    config = (folder / "required_operators.config").read_text()
    assert str(folder) not in config
    assert "/tmp" not in config
    if op == "LSTM":
        assert "DynamicQuantizeLSTM" in ops
        assert "LSTM" not in ops
        assert details["quantized"]["LSTM -> DynamicQuantizeLSTM"] == 1
        assert "DynamicQuantizeLSTM" in config
    else:
        assert "GRU" in ops  # no quantized GRU kernel exists: it stays float32, and the report says so
        assert details["left_in_float32"] == {"GRU": 3}  # one node per branch (3 by default)
        assert "no quantized GRU kernel" in details["note"]
        assert details["quantized"]["MatMul/Gemm -> MatMulInteger"] >= 1


def test_fp16_has_half_weights_and_float_io(artifacts: Path) -> None:
    [entry] = [v for v in _manifest(artifacts / "many-to-many")["variants"] if v["file"] == "model.fp16.onnx"]
    assert isinstance(entry["details"]["cpu_inserted_casts"], int)  # measured, not assumed
    assert "Cast nodes it inserts" in entry["details"]["note"]
    model = onnx.load(str(artifacts / "many-to-many" / "model.fp16.onnx"))
    onnx.checker.check_model(model)  # topologically sorted, valid
    floats = [
        t
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    assert floats
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_verify_checks_every_variant(artifacts: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(artifacts / "parallel-gru", folder)
    report = verify_artifact(folder, device="cpu")
    assert report.passed
    assert sorted(report.variants) == sorted(FILES[1:])
    assert all(v.passed for v in report.variants.values())
    # A variant replaced by another model (hashes updated, as an attacker or a bad copy would) fails
    # on its outputs, and only it fails.
    wrong = onnx.load(str(folder / "model.fp16.onnx"))
    for tensor in wrong.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT16:  # every weight, its elements reversed
            array = numpy_helper.to_array(tensor)
            reversed_ = array.reshape(-1)[::-1].reshape(array.shape).copy()
            tensor.CopyFrom(numpy_helper.from_array(reversed_, tensor.name))
    (folder / "model.fp16.onnx").write_bytes(wrong.SerializeToString())
    manifest = _manifest(folder)
    manifest["files"]["model.fp16.onnx"] = hashlib.sha256(
        (folder / "model.fp16.onnx").read_bytes()
    ).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify_artifact(folder, device="cpu")
    assert not report.passed
    assert [n for n, v in report.variants.items() if not v.passed] == ["model.fp16.onnx"]
    assert report.results["cpu"].status == "passed"
    result = run_cli("verify", str(folder), "--device", "cpu")
    assert result.exit_code == 1
    assert "model.fp16.onnx failed" in result.output
    # Tampering without rehashing is caught before anything runs.
    (folder / "model.int8.ort").write_bytes(b"\x00" * 10)
    with pytest.raises(ArtifactError, match=r"'model\.int8\.ort' was modified"):
        verify_artifact(folder, device="cpu")


def test_a_variant_failing_its_gate_is_not_shipped_while_the_others_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An int8 gate no quantized model can meet: exact agreement with float64.
    monkeypatch.setitem(VARIANT_TOLERANCES, "int8", Tolerance(atol=0.0, rtol=0.0))
    result = run_cli(
        "build",
        "--arch",
        "parallel-gru",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--precision",
        "fp16,int8",
        "--format",
        "onnx,ort",
        "--json",
    )
    assert result.exit_code == 1, result.output
    assert "model.int8.onnx, model.int8.ort failed verification and were not shipped" in result.output
    assert "oracle rule" in result.output  # the summary says which rule decided
    folder = tmp_path / "parallel-gru"
    shipped = sorted(p.name for p in folder.iterdir() if p.name.startswith("model"))
    assert shipped == ["model.fp16.onnx", "model.fp16.ort", "model.onnx"]
    entries = {v["file"]: v for v in _manifest(folder)["variants"]}
    assert entries["model.int8.onnx"]["status"] == "failed"
    assert not entries["model.int8.onnx"]["shipped"]
    assert entries["model.fp16.ort"]["status"] == "passed"
    assert "model.int8.onnx" not in _manifest(folder)["files"]
    assert "model.int8.ort" not in (folder / "required_operators.config").read_text()
    summary = json.loads(result.stdout)
    assert summary["passed"] is False
    assert verify_artifact(folder, device="cpu").passed  # what shipped re-verifies


def test_reduce_range_follows_the_cpu_it_is_told_about() -> None:
    assert choose_reduce_range({"avx2", "fma"}, "x86_64").reduce_range is True
    assert choose_reduce_range({"avx2", "avx512_vnni"}, "x86_64").reduce_range is False
    assert choose_reduce_range({"avx_vnni"}, "AMD64").reduce_range is False
    assert choose_reduce_range(set(), "aarch64").reduce_range is False
    assert "VNNI" in choose_reduce_range({"avx2"}, "x86_64").reason


@pytest.mark.parametrize("reduce", [True, False])
def test_reduce_range_choice_reaches_the_weights(artifacts: Path, reduce: bool) -> None:
    model = onnx.load(str(artifacts / "many-to-many" / "model.onnx"))
    quantized, details = to_int8(model, reduce_range=ReduceRange(reduce, "given"))
    assert details["reduce_range"] is reduce
    int8 = [
        numpy_helper.to_array(t) for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in int8)
    assert widest <= 64 if reduce else widest == 127


def test_precision_and_format_choices_are_validated(tmp_path: Path) -> None:
    assert parse_choices("int8, fp16", ("fp32", "fp16", "int8"), option="--precision") == ["fp16", "int8"]
    with pytest.raises(UsageError, match="--precision takes a comma-separated list of fp32, fp16, int8"):
        parse_choices("fp64", ("fp32", "fp16", "int8"), option="--precision")
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path), "--format", "tflite")
    assert result.exit_code == 2
    assert "'tflite' unknown" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda v: v.update(file="../model.int8.onnx"),
        lambda v: v.update(file="notes.txt", format="onnx"),
        lambda v: v.update(precision="int4"),
        lambda v: v.update(tolerance="loose"),
        lambda v: v["tolerance"].update(cpu={"atol": "tiny", "rtol": 0.1}),
        lambda v: v.update(shipped=False),  # present and listed, so it must be verified
    ],
)
def test_a_malformed_variant_entry_is_an_artifact_error(
    artifacts: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    folder = tmp_path / "a"
    shutil.copytree(artifacts / "many-to-many", folder)
    manifest = _manifest(folder)
    edit(next(v for v in manifest["variants"] if v["file"] == "model.int8.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="malformed 'variants' entry"):
        verify_artifact(folder, device="cpu")


def test_an_artifact_from_before_the_oracle_verifies_by_its_tolerance(
    artifacts: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "a"
    shutil.copytree(artifacts / "many-to-many", folder)
    manifest = _manifest(folder)
    manifest["verification"]["rule"] = "|ort - ref| <= atol + rtol*|ref|, all values finite"
    for name in [n for n in manifest["files"] if "float64_output_" in n]:
        (folder / name).unlink()
        del manifest["files"][name]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify_artifact(folder, device="cpu")
    assert report.passed
    assert report.results["cpu"].criterion.rule == "tolerance"
    # Asked for the oracle without float64 references, it says what is missing.
    manifest["verification"]["rule"] = {"name": "oracle", "factor": 4.0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify_artifact(folder, device="cpu")
    assert not report.passed
    assert "no float64 reference" in report.results["cpu"].failures[0]
