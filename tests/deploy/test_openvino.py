"""OpenVINO: `verify --runtime openvino`, the measured sequence_lens cause, and `deploy openvino`.

Skipped, with the reason, where the openvino wheel is not installed (it is an extra, published for
x86-64 and ARM64). Expected values come from the artifacts' own test data (eager PyTorch).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rnnexport.artifact import verify_artifact

from ..helpers import cli_in_child, import_or_skip, run_cli

ov = import_or_skip(
    "openvino",
    reason="openvino is not installed (the 'openvino' extra; wheels exist for x86-64 and ARM64 only)",
)

from rnnexport.builder.pipeline import build  # noqa: E402
from rnnexport.deploy.openvino import OpenVinoRunner, sequence_lens_state_problem  # noqa: E402

SMALL = {"input_size": 4, "hidden_size": 6, "output_size": 3, "branches": 2}
SMALL_M2M = {"input_size": 4, "hidden_size": 6, "output_size": 3}


def _build(out: Path, arch: str, *, streaming: bool = False, runtimes: str | None = None) -> Path:
    from rnnexport.registry import get_arch

    sizes = {k: v for k, v in SMALL.items() if k in get_arch(arch).sizes}
    build(arch, out=out, device="cpu", config=sizes, streaming=streaming, runtimes=runtimes)
    return out / arch


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def parallel(dist: Path) -> Path:
    return _build(dist / "plain", "parallel-lstm")


@pytest.fixture(scope="module")
def stream(dist: Path) -> Path:
    return _build(dist / "stream", "many-to-many", streaming=True)


@pytest.fixture(scope="module")
def masked_stream(dist: Path) -> Path:
    return _build(dist / "masked", "many-to-many-masked", streaming=True, runtimes="onnxruntime,openvino")


def test_parallel_branches_verify_on_openvino_at_batch_above_one(parallel: Path) -> None:
    report = verify_artifact(parallel, device="cpu", runtime="openvino")
    [result] = report.results.values()
    assert result.provider == "OpenVINO-CPU"
    assert result.status == "passed", result.failures
    assert max(shape["x"][0] for shape in result.to_json()["shapes"]) > 1
    assert any("INFERENCE_PRECISION_HINT f32" in note for note in report.notes)


def test_the_runner_computes_the_shipped_outputs_at_f32(parallel: Path) -> None:
    runner = OpenVinoRunner(parallel / "model.onnx")
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    folder = parallel / "test_data_set_1"
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(folder / "output_0.pb")))
    assert x.shape[0] == 3
    np.testing.assert_allclose(runner.infer({"x": x})["y"], want, atol=1e-5, rtol=1e-4)


def test_the_sequence_lens_state_error_is_measured_on_a_one_node_model() -> None:
    cause = sequence_lens_state_problem("LSTM")
    if cause is None:  # an OpenVINO that honours sequence_lens for the states: nothing to name
        pytest.skip("this OpenVINO computes the final states of a masked LSTM right")
    assert "ignores the run-time sequence_lens of an ONNX LSTM" in cause
    assert "Y_h/Y_c" in cause


def test_a_masked_stream_fails_on_openvino_with_the_cause_or_passes(masked_stream: Path) -> None:
    result = run_cli("verify", str(masked_stream), "--runtime", "openvino", "--json")
    data = json.loads(result.stdout)
    entry = data["providers"]["OpenVINO-CPU"]
    if sequence_lens_state_problem("LSTM") is None:
        assert result.exit_code == 0, result.output
        assert entry["status"] == "passed"
    else:  # never a silent wrong answer: failed, with the measured cause
        assert result.exit_code == 1
        assert entry["status"] == "failed"
        assert "ignores the run-time sequence_lens" in entry["reason"]


def test_openvino_with_cuda_is_a_usage_error(stream: Path) -> None:
    result = run_cli("verify", str(stream), "--runtime", "openvino", "--device", "cuda")
    assert result.exit_code == 2
    assert "OpenVINO's CPU plugin" in result.output


def test_deploy_writes_a_stateful_ir_proven_on_the_chains(stream: Path, tmp_path: Path) -> None:
    out = tmp_path / "ir"
    result = run_cli("deploy", "openvino", str(stream), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "deploy.json", "model.bin", "model.xml"]
    record = json.loads((out / "deploy.json").read_text())
    assert record["stateful"] is True
    assert record["precision"] == "f32"
    assert record["proof"]["status"] == "passed"
    manifest = json.loads((stream / "manifest.json").read_text())
    chained = {d for chain in manifest["streaming"]["chains"] for d in chain}
    assert record["proof"]["cases"] == len(manifest["test_data"]) >= len(chained) > 0
    assert "reset_state()" in (out / "README.md").read_text()

    # The IR itself: no state inputs, states start at zeros at any batch (never empty), and chunks
    # carried in the request equal the whole sequence from the artifact's test data.
    core = ov.Core()
    compiled = core.compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [i.get_any_name() for i in compiled.inputs] == ["x"]
    request = compiled.create_infer_request()
    for batch in (3, 1):
        request.reset_state()  # a dynamic batch after a reset: the states take the call's batch
        x = np.random.default_rng(batch).standard_normal((batch, 5, 4)).astype(np.float32)
        whole = np.array(request.infer({"x": x})["y"], copy=True)
        assert whole.shape == (batch, 5, 3)
        states = {s.name: s.state.data.shape for s in request.query_state()}
        assert states == {"state_in.lstm.h": (batch, 6), "state_in.lstm.c": (batch, 6)}
        request.reset_state()
        parts = [np.array(request.infer({"x": x[:, t : t + 2]})["y"], copy=True) for t in (0, 2, 4)]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5, rtol=1e-4)


def test_deploy_refuses_an_existing_folder_and_leaves_nothing_on_failure(
    stream: Path, masked_stream: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    result = run_cli("deploy", "openvino", str(stream), "--out", str(taken))
    assert result.exit_code == 2
    assert (taken / "mine.txt").read_text() == "keep"
    if sequence_lens_state_problem("LSTM") is not None:
        out = tmp_path / "masked"
        failed = run_cli("deploy", "openvino", str(masked_stream), "--out", str(out))
        assert failed.exit_code == 1
        assert "ignores the run-time sequence_lens" in failed.output
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no partial folder left


def test_a_tampered_artifact_is_not_deployed(stream: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(stream, copy)
    (copy / "test_data_set_0" / "output_0.pb").write_bytes(b"\x00")
    result = run_cli("deploy", "openvino", str(copy), "--out", str(tmp_path / "ir"))
    assert result.exit_code == 1
    assert "was modified" in result.output
    assert not (tmp_path / "ir").exists()


def test_verify_on_openvino_needs_no_torch(stream: Path) -> None:
    result = cli_in_child("verify", str(stream), "--runtime", "openvino", torch_free=True)
    assert result.returncode == 0, result.stderr
    assert "OpenVINO-CPU" in result.stderr


def test_a_build_asked_to_check_openvino_records_it(masked_stream: Path, parallel: Path) -> None:
    record = json.loads((masked_stream / "manifest.json").read_text())["verification"]["runtimes"]
    entry = record["openvino"]
    assert entry["precision"] == "f32"
    assert "INFERENCE_PRECISION_HINT f32" in entry["ran_on"]
    if sequence_lens_state_problem("LSTM") is None:
        assert entry["status"] == "passed"
    else:
        assert entry["status"] == "failed"
        assert "ignores the run-time sequence_lens" in entry["reason"]
    # Not asked: no record.
    assert "runtimes" not in json.loads((parallel / "manifest.json").read_text())["verification"]


def test_an_unknown_runtime_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path), "--runtimes", "tvm")
    assert result.exit_code == 2
    assert "--runtimes takes onnxruntime, openvino" in result.output


def test_a_float16_variant_verifies_under_its_own_output_names(dist: Path) -> None:
    # The float16 file ends in a Cast whose tensor OpenVINO also knows by the Cast's own name.
    build("many-to-many", out=dist / "fp16", device="cpu", config=SMALL_M2M, precisions="fp32,fp16")
    report = verify_artifact(dist / "fp16" / "many-to-many", device="cpu", runtime="openvino")
    variant = report.variants["model.fp16.onnx"].results["cpu"]
    assert variant.status == "passed", variant.failures
    assert [o.name for o in variant.cases[0].outputs] == ["y"]
