"""Models past the inline limit: model.onnx plus one external-data file, built, hashed and re-verified.

The threshold is a :class:`~rnnexport.limits.Limits` field, so a tiny value sends a small
architecture down the same path a model past 2 GiB takes, in seconds. The expected facts (which
tensors are large, what the files hash to, what the model computes) are worked out here with onnx,
hashlib and ONNX Runtime directly, never with the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from rnnexport import safeio
from rnnexport.artifact import files, verify_artifact
from rnnexport.builder.pipeline import build, build_model_artifact
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.limits import DEFAULT_LIMITS

from ..helpers import cli_in_child, flat, rehash, run_cli

DATA = "model.onnx.data"
# Far below the smallest architecture's weights: every build with it takes the external-data path.
TINY = dataclasses.replace(DEFAULT_LIMITS, inline_model_bytes=1000)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("external")
    build("many-to-many", out=out, device="cpu", limits=TINY)
    return out / "many-to-many"


def _structure(folder: Path) -> onnx.ModelProto:
    return onnx.load_from_string((folder / "model.onnx").read_bytes())  # references, not the data


def _edit_references(folder: Path, edit: Callable[[TensorProto], object]) -> str:
    """Apply ``edit`` to the first external initializer of model.onnx, rehash; return its name."""
    model = _structure(folder)
    tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    edit(tensor)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)
    return str(tensor.name)


def _set(tensor: TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value


def _refused(folder: Path, *expected: str) -> str:
    result = run_cli("verify", str(folder), "--device", "cpu")
    output = flat(result.output)
    assert result.exit_code == 1, output
    for text in expected:
        assert text in output
    return output


def _values_bytes(tensor: TensorProto) -> int:
    return int(math.prod(tensor.dims)) * int(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)


# -- building ----------------------------------------------------------------------------------------


def test_a_build_past_the_threshold_ships_model_onnx_and_one_data_file(shipped: Path) -> None:
    assert sorted(p.name for p in shipped.iterdir() if p.is_file()) == ["manifest.json", "model.onnx", DATA]
    manifest = json.loads((shipped / "manifest.json").read_text())
    for name in ("model.onnx", DATA):
        assert manifest["files"][name] == hashlib.sha256((shipped / name).read_bytes()).hexdigest()
    layout = manifest["export"]["external_data"]
    assert layout["file"] == DATA
    assert layout["inline_limit_bytes"] == 1000
    assert layout["bytes"] == (shipped / DATA).stat().st_size
    model = _structure(shipped)
    # Every tensor of 1 KiB or more is in the data file, at a region inside it; nothing else is.
    assert not [
        n.op_type for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].t.ByteSize() >= 1024
    ]
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    inline = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    assert len(external) == layout["tensors"] >= 2  # the LSTM's W and R at least
    assert all(_values_bytes(t) < 1024 for t in inline)
    size = (shipped / DATA).stat().st_size
    for tensor in external:
        entry = {e.key: e.value for e in tensor.external_data}
        assert entry["location"] == DATA
        assert int(entry["length"]) == _values_bytes(tensor) >= 1024
        assert int(entry["offset"]) + int(entry["length"]) <= size
        assert not tensor.raw_data


def test_the_two_files_compute_the_shipped_test_data_in_onnx_runtime(shipped: Path) -> None:
    # Loaded by path, as the README says; the data file is found beside it.
    session = ort.InferenceSession(str(shipped / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in range(4):
        x = numpy_helper.to_array(onnx.load_tensor(str(shipped / f"test_data_set_{n}" / "input_0.pb")))
        y = numpy_helper.to_array(onnx.load_tensor(str(shipped / f"test_data_set_{n}" / "output_0.pb")))
        (got,) = session.run(None, {"x": x})
        np.testing.assert_allclose(got, y, atol=1e-5, rtol=1e-4)


def test_an_external_data_artifact_verifies_and_says_so(folder: Path) -> None:
    result = run_cli("verify", str(folder), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert f"weights in {DATA}" in output
    assert verify_artifact(folder, device="cpu").passed


def test_an_external_data_artifact_verifies_without_torch(folder: Path) -> None:
    result = cli_in_child("verify", str(folder), "--device", "cpu", "--json", torch_free=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True


def test_below_the_threshold_the_artifact_stays_one_file(tmp_path: Path) -> None:
    manifest = build("many-to-many", out=tmp_path, device="cpu")
    assert "external_data" not in manifest.export
    assert DATA not in manifest.files
    assert not (tmp_path / "many-to-many" / DATA).exists()
    model = onnx.load_from_string((tmp_path / "many-to-many" / "model.onnx").read_bytes())
    assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)


@pytest.mark.parametrize("arch", ["many-to-many-masked", "parallel-lstm-attention"])
def test_a_streaming_build_with_external_data_builds_and_verifies(arch: str, tmp_path: Path) -> None:
    """Also with the parallel branches merged: the per-branch weights the merge builds from go to
    the data file like any other."""
    manifest = build(arch, out=tmp_path, device="cpu", streaming=True, limits=TINY)
    folder = tmp_path / arch
    assert manifest.streaming is not None
    assert manifest.streaming["chains"]
    assert DATA in manifest.files
    assert (folder / DATA).stat().st_size > 0
    report = verify_artifact(folder, device="cpu")
    assert report.passed
    [cpu] = report.results.values()
    assert len(cpu.cases) == len(manifest.test_data)  # the chains replayed too


class _Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 24, batch_first=True)
        self.out = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(x)[0])  # type: ignore[no-any-return]


def test_a_user_model_past_the_threshold_ships_external_data(tmp_path: Path) -> None:
    io = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 6]}],
        "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
    }
    torch.manual_seed(0)
    model = _Tagger().eval()
    manifest = build_model_artifact(model, io=io, name="tagger", out=tmp_path, device="cpu", limits=TINY)
    folder = tmp_path / "tagger"
    assert manifest.export["external_data"]["file"] == DATA
    assert verify_artifact(folder, device="cpu").passed
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 11, 6)
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("precisions", "formats"), [("fp32,fp16", None), ("int8", None), (None, "onnx,ort")])
def test_variants_of_an_external_data_model_are_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precisions: str | None, formats: str | None
) -> None:
    from rnnexport.builder import request as builder_request

    monkeypatch.setattr(builder_request, "model_and_references", pytest.fail)
    with pytest.raises(UsageError) as caught:
        build(
            "many-to-many",
            out=tmp_path / "out",
            device="cpu",
            limits=TINY,
            precisions=precisions,
            formats=formats,
        )
    message = flat(str(caught.value))
    assert f"its weights in {DATA}" in message
    assert "Nothing was built" in message
    assert not (tmp_path / "out").exists()


# -- verifying a tampered artifact ---------------------------------------------------------------------


def test_a_data_file_changed_by_one_byte_fails_naming_its_hash(folder: Path) -> None:
    data = bytearray((folder / DATA).read_bytes())
    data[len(data) // 2] ^= 1
    (folder / DATA).write_bytes(bytes(data))
    _refused(folder, f"'{DATA}' was modified: its sha256 does not match the manifest")


def test_a_missing_data_file_is_a_clear_failure(folder: Path) -> None:
    (folder / DATA).unlink()
    _refused(folder, f"'{DATA}' is listed in the manifest but missing")


def test_a_data_file_replaced_by_a_symbolic_link_is_refused(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "same-bytes.data"
    shutil.copyfile(folder / DATA, elsewhere)  # identical bytes: only the link itself is wrong
    (folder / DATA).unlink()
    (folder / DATA).symlink_to(elsewhere)
    _refused(folder, f"'{DATA}' is a symbolic link (refused")


def test_a_data_file_past_the_size_limit_is_refused_before_reading(folder: Path) -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, external_data_bytes=100)
    with pytest.raises(ArtifactError, match=f"'{DATA}' is [0-9,]+ bytes, over the limit of 100 bytes"):
        verify_artifact(folder, device="cpu", limits=limits)


@pytest.mark.parametrize(
    "location", ["../outside.bin", "ABSOLUTE", "other.bin", "./model.onnx.data", "sub/model.onnx.data"]
)
def test_a_reference_to_any_other_file_is_refused_and_never_opened(
    folder: Path, tmp_path: Path, location: str
) -> None:
    # FIFOs where the reference points: opening one would block, so a test that finishes with the
    # refusal proves it was never opened.
    os.mkfifo(tmp_path / "outside.bin")
    absolute = tmp_path / "absolute.bin"
    os.mkfifo(absolute)
    location = str(absolute) if location == "ABSOLUTE" else location
    _edit_references(folder, lambda t: _set(t, "location", location))
    result = cli_in_child("verify", str(folder), "--device", "cpu", timeout=60)
    output = flat(result.stderr)
    assert result.returncode == 1, output
    assert f"points at external data '{location}'" in output
    assert f"the only external data an artifact may hold is '{DATA}'" in output
    assert "Traceback" not in output


def test_a_basepath_key_is_refused(folder: Path) -> None:
    _edit_references(folder, lambda t: t.external_data.add(key="basepath", value=str(folder.parent)))
    _refused(folder, "refers to external data with the keys", "'basepath'", "it was not read")


def test_a_duplicated_location_key_is_refused(folder: Path) -> None:
    _edit_references(folder, lambda t: t.external_data.add(key="location", value="../outside.bin"))
    _refused(folder, "refers to external data with the keys", "each once")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("offset", "HUGE", "which holds"),  # a region that ends past the file
        ("length", "4", "its dims and type call for"),  # fewer bytes than the dims say
        ("offset", "-4", "expected whole numbers"),
        ("length", "1e3", "expected whole numbers"),
    ],
)
def test_an_offset_or_length_outside_the_file_or_the_tensor_is_refused(
    folder: Path, key: str, value: str, expected: str
) -> None:
    size = (folder / DATA).stat().st_size
    value = str(size) if value == "HUGE" else value
    _edit_references(folder, lambda t: _set(t, key, value))
    _refused(folder, expected)


def test_a_reference_in_a_node_attribute_is_refused_even_to_the_data_file(folder: Path) -> None:
    def hide_in_constant(model: onnx.ModelProto) -> None:
        tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
        constant = onnx.helper.make_node("Constant", [], ["unused_constant"], value=tensor)
        model.graph.node.insert(0, constant)

    model = _structure(folder)
    hide_in_constant(model)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)
    _refused(folder, f"points at external data '{DATA}' (a side file); it was not read")


def test_a_manifest_listing_a_data_file_the_model_does_not_use_is_refused(folder: Path) -> None:
    model = onnx.load(str(folder / "model.onnx"))  # the data pulled back inline
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)
    _refused(folder, f"lists {DATA}, but no tensor of model.onnx refers to it")


def test_an_external_reference_without_a_listed_data_file_is_refused(folder: Path) -> None:
    (folder / DATA).unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"][DATA]
    del manifest["export"]["external_data"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _refused(folder, f"points at external data '{DATA}' (a side file); it was not read")


def test_onnx_runtime_runs_the_verified_copy_not_the_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The data file is overwritten right after it was hashed: what runs must be what was hashed.
    real = safeio.copy_bounded

    def then_tamper(path: Path, destination: Path | None, **options: Any) -> tuple[str, int]:
        result = real(path, destination, **options)
        path.write_bytes(b"\x7f" * path.stat().st_size)  # NaN-like garbage of the same size
        return result

    monkeypatch.setattr(files, "copy_bounded", then_tamper)
    report = verify_artifact(folder, device="cpu")
    assert report.passed


def test_bench_times_an_external_data_artifact_by_path(folder: Path) -> None:
    from rnnexport.bench import run_bench

    report = run_bench(
        folder, shapes=[(1, 2)], runtimes=["onnxruntime"], settings=False, ragged=False, rounds=1, repeats=2
    )
    data = report.to_json()
    assert data["runtimes"]["onnxruntime"]["available"]
    [node] = data["runtimes"]["onnxruntime"]["recurrent_nodes"]  # its R read from model.onnx.data
    assert node["recurrence_bytes"] == 4 * 20 * 20 * 4
    assert [(r["runtime"], r["batch"], r["seq"]) for r in report.rows()] == [("onnxruntime", 1, 2)]


def test_the_two_files_are_byte_identical_between_builds(shipped: Path, tmp_path: Path) -> None:
    build("many-to-many", out=tmp_path / "elsewhere", device="cpu", limits=TINY)
    again = tmp_path / "elsewhere" / "many-to-many"
    for name in ("model.onnx", DATA):
        assert (again / name).read_bytes() == (shipped / name).read_bytes(), name


def test_the_dynamo_path_to_external_data_ships_and_verifies(tmp_path: Path) -> None:
    """The file export of dynamo (weights beside it) goes through the same checks and ships alike."""
    manifest = build("many-to-many", out=tmp_path / "out", device="cpu", exporter="dynamo", limits=TINY)
    assert manifest.export["exporter"] == "dynamo"
    assert manifest.export["external_data"]["tensors"] > 0
    assert (tmp_path / "out" / "many-to-many" / DATA).is_file()
