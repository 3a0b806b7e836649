"""Every model file in an artifact is verified for what it claims to be, or refused.

A variant file is a fact to check three ways besides its accuracy: that something verifies it at all
(its ``variants`` entry), that it stands alone (no external data, anywhere in it), and that it is
what its entry says (the precision its graph computes with, the format its bytes carry). Each
attack edits a real artifact the way someone who controls the folder would, re-hashing the
manifest, so only these checks can catch it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnexport.artifact import MANIFEST
from rnnexport.builder.accuracy import one_torch_thread
from rnnexport.builder.pipeline import build
from rnnexport.variants import ModelFacts, file_problems

from ..helpers import flat, rehash, run_cli

SIZES = {"input_size": 3, "hidden_size": 8, "output_size": 2}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variant-trust")
    with one_torch_thread():
        build(
            "many-to-many",
            out=out,
            config=SIZES,
            device="cpu",
            precisions="fp32,fp16,int8",
            formats="onnx,ort",
        )
    return out / "many-to-many"


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    rehash(folder)  # and the hashes agree with the folder again


def _verify(folder: Path, *, cwd: Path | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    if cwd is not None and monkeypatch is not None:
        monkeypatch.chdir(cwd)
    result = run_cli("verify", str(folder), "--device", "cpu")
    return f"{result.exit_code} {flat(result.output)}"


def test_the_artifact_verifies_as_built(folder: Path) -> None:
    assert _verify(folder).startswith("0 ")


# -- A1. a model file nothing verifies -----------------------------------------------------------


@pytest.mark.parametrize("variant", ["model.int8.onnx", "model.fp16.ort", "model.ort"])
def test_a_variant_whose_entry_was_deleted_is_refused(folder: Path, variant: str) -> None:
    # The file stays listed and hashed; with its entry gone, nothing would verify it.
    _edit_manifest(folder, lambda m: m.update(variants=[v for v in m["variants"] if v["file"] != variant]))
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert (
        f"lists '{variant}', which no shipped variant entry or other part of an rnnexport artifact" in output
    )
    assert "nothing would verify it" in output


UNACCOUNTED = "which no shipped variant entry or other part of an rnnexport artifact accounts for"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.extra.onnx", UNACCOUNTED),
        ("model.int8.onnx.data", UNACCOUNTED),
        ("weights.bin", UNACCOUNTED),
        ("sub/model.onnx", UNACCOUNTED),
        ("model.onnx.data", "lists model.onnx.data, but no tensor of model.onnx refers to it"),
        ("test_data_set_0/x.onnx", "lists 'test_data_set_0/x.onnx', which no test-data set holds"),
    ],
)
def test_a_listed_file_no_part_of_an_artifact_accounts_for_is_refused(
    folder: Path, name: str, expected: str
) -> None:
    target = folder / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(folder / "model.onnx", target)
    _edit_manifest(folder, lambda m: m["files"].update({name: ""}))
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert expected in output


def test_the_same_file_with_its_entry_is_verified_and_refused_when_wrong(folder: Path) -> None:
    # The float32 model as model.int8.onnx, entry kept: refused for what it is, not waved through.
    shutil.copy(folder / "model.onnx", folder / "model.int8.onnx")
    _edit_manifest(folder, lambda m: None)
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert "model.int8.onnx claims int8 but has no operator that computes on 8-bit integers" in output


# -- A2. external data in a variant ----------------------------------------------------------------


def _constant_from_file(model: onnx.ModelProto, location: str) -> np.ndarray:
    """Move the model's largest float initializer into a Constant node whose value is external data
    at ``location``; return the values, which the caller plants where a loader would look."""
    init = max(
        (t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT),
        key=lambda t: int(np.prod(t.dims)),
    )
    values = numpy_helper.to_array(init)
    model.graph.initializer.remove(init)
    value = TensorProto(name="value", data_type=init.data_type, dims=list(init.dims))
    value.data_location = TensorProto.EXTERNAL
    for key, text in (("location", location), ("offset", "0"), ("length", str(values.nbytes))):
        value.external_data.add(key=key, value=text)
    model.graph.node.insert(0, helper.make_node("Constant", [], [init.name], value=value))
    return values


@pytest.mark.parametrize("where", ["constant", "initializer", "loop body"])
def test_a_variant_never_reads_external_data_from_the_current_folder(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    model = onnx.load_from_string((folder / "model.int8.onnx").read_bytes())
    planted = tmp_path / "cwd"
    planted.mkdir()
    if where == "constant":
        values = _constant_from_file(model, "weights.bin")
    else:
        tensor = next(t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.raw_data)
        values = numpy_helper.to_array(tensor)
        if where == "loop body":  # a Constant inside an If's branch: still a tensor of the model
            tensor = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
            branch = helper.make_graph(
                [helper.make_node("Constant", [], ["c"], value=tensor)],
                "branch",
                [],
                [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
            )
            flag = helper.make_tensor("flag_value", TensorProto.BOOL, [], [True])
            model.graph.node.extend(
                [
                    helper.make_node("Constant", [], ["flag"], value=flag),
                    helper.make_node("If", ["flag"], ["unused"], then_branch=branch, else_branch=branch),
                ]
            )
            # The model holds copies of the branches: edit the one it holds first.
            tensor = model.graph.node[-1].attribute[0].g.node[0].attribute[0].t
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, text in (("location", "weights.bin"), ("offset", "0"), ("length", str(values.nbytes))):
            tensor.external_data.add(key=key, value=text)
    (planted / "weights.bin").write_bytes(values.tobytes())
    (folder / "model.int8.onnx").write_bytes(model.SerializeToString())
    _edit_manifest(folder, lambda m: None)
    # Run from the folder holding the weights, where ONNX Runtime would find them.
    output = _verify(folder, cwd=planted, monkeypatch=monkeypatch)
    assert output.startswith("1 "), output
    assert "model.int8.onnx refers to data outside itself" in output
    assert "'weights.bin' (a side file); it was not read" in output


# -- A3. precision is a fact -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claimed", "actual", "expected"),
    [
        ("model.int8.onnx", "model.onnx", "claims int8 but has no operator that computes on 8-bit integers"),
        ("model.int8.onnx", "model.fp16.onnx", "claims int8 but has no operator"),
        ("model.int8.ort", "model.ort", "claims int8 but has no operator"),
        ("model.fp16.onnx", "model.onnx", "claims fp16 but has no float16 tensor at all"),
        ("model.fp16.onnx", "model.int8.onnx", "claims fp16 but has quantized operators"),
        ("model.fp16.ort", "model.ort", "claims fp16 but has no float16 tensor at all"),
        ("model.ort", "model.int8.ort", "claims fp32 but has quantized operators"),
    ],
)
def test_a_variant_replaced_by_another_precision_is_refused(
    folder: Path, claimed: str, actual: str, expected: str
) -> None:
    shutil.copy(folder / actual, folder / claimed)
    _edit_manifest(folder, lambda m: None)
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert f"{claimed}: {claimed} {expected}" in output or f"{claimed} {expected}" in output


def _graph(nodes: list[onnx.NodeProto], inits: list[TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=inits,
    )
    return helper.make_model(graph)


def test_facts_of_handmade_graphs() -> None:
    weight8 = numpy_helper.from_array(np.ones(2, np.int8), "w")
    half = numpy_helper.from_array(np.ones(2, np.float16), "h")
    plain = _graph([helper.make_node("Identity", ["x"], ["y"])], [])
    quantized = _graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], [weight8])
    qlinear = _graph([helper.make_node("QLinearMatMul", ["x", "w"], ["y"])], [weight8])
    fp16 = _graph([helper.make_node("Identity", ["x"], ["y"])], [half])
    cast = _graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], [])
    assert ModelFacts.of_onnx(plain).quantized == []
    assert not ModelFacts.of_onnx(plain).float16
    assert ModelFacts.of_onnx(quantized).quantized == ["MatMulInteger"]
    assert ModelFacts.of_onnx(quantized).int8_weights
    assert ModelFacts.of_onnx(qlinear).quantized == ["QLinearMatMul"]
    assert ModelFacts.of_onnx(fp16).float16
    assert ModelFacts.of_onnx(cast).float16
    assert not ModelFacts.of_onnx(cast).int8_weights


def test_facts_of_the_shipped_ort_files(shipped: Path) -> None:
    int8 = ModelFacts.of_ort((shipped / "model.int8.ort").read_bytes())
    fp16 = ModelFacts.of_ort((shipped / "model.fp16.ort").read_bytes())
    fp32 = ModelFacts.of_ort((shipped / "model.ort").read_bytes())
    assert "DynamicQuantizeLSTM" in int8.quantized
    assert int8.int8_weights
    assert fp16.float16  # its weights are folded back to float32, its compute is Cast to float16
    assert not fp16.quantized
    assert not fp32.quantized
    assert not fp32.float16
    assert int8.external == fp16.external == fp32.external == ()


# -- A4. the format is the file's identifier -------------------------------------------------------


@pytest.mark.parametrize(
    ("claimed", "actual", "expected"),
    [
        ("model.int8.ort", "model.int8.onnx", "model.int8.ort is not an ORT-format file: bytes 4..8 are"),
        ("model.ort", "model.onnx", "model.ort is not an ORT-format file"),
        ("model.int8.onnx", "model.int8.ort", "model.int8.onnx is an ORT-format file (identifier 'ORTM'"),
        ("model.fp16.onnx", "model.fp16.ort", "model.fp16.onnx is an ORT-format file"),
    ],
)
def test_a_variant_in_the_other_format_is_refused(
    folder: Path, claimed: str, actual: str, expected: str
) -> None:
    shutil.copy(folder / actual, folder / claimed)
    _edit_manifest(folder, lambda m: None)
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert expected in output


def test_format_identifier_rule() -> None:
    ort_bytes = b"\x14\x00\x00\x00ORTM" + bytes(8)
    onnx_bytes = _graph([helper.make_node("Identity", ["x"], ["y"])], []).SerializeToString()
    assert file_problems("m.ort", "ort", ort_bytes) == []
    assert file_problems("m.onnx", "onnx", onnx_bytes) == []
    assert "not an ORT-format file" in file_problems("m.ort", "ort", onnx_bytes)[0]
    assert "not an ORT-format file" in file_problems("m.ort", "ort", b"")[0]
    assert "is an ORT-format file" in file_problems("m.onnx", "onnx", ort_bytes)[0]


@pytest.mark.parametrize("cut", ["half", "header only"])
def test_an_ort_file_that_is_not_whole_is_refused_without_a_traceback(folder: Path, cut: str) -> None:
    data = (folder / "model.int8.ort").read_bytes()
    (folder / "model.int8.ort").write_bytes(data[: len(data) // 2] if cut == "half" else data[:8])
    _edit_manifest(folder, lambda m: None)
    output = _verify(folder)
    assert output.startswith("1 "), output
    assert "model.int8.ort cannot be read as an ORT model" in output
