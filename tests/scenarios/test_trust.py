"""`verify` against hostile artifacts: it cannot be fooled into passing, read outside the folder, or hang.

Every attack edits a good artifact the way an attacker who controls the folder would (rewriting the
model, the test data and the manifest's hashes alike), so only content checks can catch it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import Result

from rnnexport.artifact import MANIFEST, files, untrusted, verify_artifact
from rnnexport.builder.pipeline import build
from rnnexport.errors import ArtifactError
from rnnexport.limits import Limits
from rnnexport.safeio import read_bounded

from ..helpers import (
    cli_in_child,
    flat,
    make_external,
    plant_endless_model,
    rehash,
    run_cli,
    sigterm_while_the_model_runs,
)


def _flat(result: Result | subprocess.CompletedProcess[str]) -> str:
    return flat(result.output if isinstance(result, Result) else result.stderr)


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _edit_model(folder: Path, edit: Callable[[onnx.ModelProto], object]) -> None:
    model = onnx.load_from_string((folder / "model.onnx").read_bytes())
    edit(model)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value


def _refused(folder: Path, *expected: str, code: int = 1) -> str:
    result = run_cli("verify", str(folder), "--device", "cpu")
    output = _flat(result)
    assert result.exit_code == code, output
    for text in expected:
        assert text in output
    return output


# -- 1. external data, anywhere ------------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["planted.bin", "missing.bin", "fifo", "../outside.bin", "/etc/hostname"]
)
@pytest.mark.parametrize("target", ["test_data_set_0/output_0.pb", "test_data_set_1/input_0.pb"])
def test_external_data_in_test_data_is_never_followed(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, target: str
) -> None:
    # The planted values sit in the current directory, where onnx's own loader would look.
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "planted.bin").write_bytes(np.zeros(4096, np.float32).tobytes())
    os.mkfifo(work / "fifo")  # opening it would block forever
    tensor = TensorProto()
    tensor.ParseFromString((folder / target).read_bytes())
    make_external(tensor, location)
    (folder / target).write_bytes(tensor.SerializeToString())
    rehash(folder)
    result = cli_in_child("verify", str(folder), "--device", "cpu", timeout=60)
    assert result.returncode == 1
    output = _flat(result)
    assert f"refers to external data '{location}' instead of holding its values" in output
    assert "the reference was not followed" in output
    assert "Traceback" not in output


def test_external_data_inside_a_loop_body_is_refused(folder: Path) -> None:
    def hide_in_subgraph(model: onnx.ModelProto) -> None:
        constant = numpy_helper.from_array(np.zeros(16, np.float32), name="hidden")
        make_external(constant, "../secret.bin")
        body = helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=constant)],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        )  # fmt: skip
        model.graph.node.append(
            helper.make_node("If", ["cond_never"], ["unused"], then_branch=body, else_branch=body)
        )

    _edit_model(folder, hide_in_subgraph)
    _refused(folder, "tensor 'hidden' points at external data '../secret.bin' (outside the artifact folder)")


# -- 1. tolerance bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "key", "value", "shown"),
    [
        ("cpu", "atol", 1e308, "1e+308"),
        ("cpu", "rtol", 1.0, "1.0"),
        ("cpu", "atol", -1e-5, "-1e-05"),
        ("cuda", "atol", 5.0, "5.0"),
        ("cpu", "atol", True, "True"),
        ("cpu", "rtol", "1e-4", "'1e-4'"),
        ("cpu", "atol", None, "None"),
    ],
)
def test_tolerance_is_bounded_exactly_as_build_bounds_it(
    folder: Path, device: str, key: str, value: object, shown: str
) -> None:
    _edit_manifest(folder, lambda m: m["verification"]["tolerance"][device].update({key: value}))
    _refused(folder, "is not a valid rnnexport manifest", f"{key} must be a number in [0, 1), got {shown}")


def test_loose_tolerance_cannot_hide_a_negated_bias(folder: Path) -> None:
    _edit_manifest(folder, lambda m: m["verification"]["tolerance"]["cpu"].update(atol=1e308))

    def negate_a_bias(model: onnx.ModelProto) -> None:
        tensor = next(t for t in model.graph.initializer if t.dims and len(t.dims) == 1 and t.dims[0] == 5)
        tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), name=tensor.name))

    _edit_model(folder, negate_a_bias)
    _refused(folder, "atol must be a number in [0, 1), got 1e+308")
    # With a sane tolerance restored, the changed model itself fails on its test data.
    _edit_manifest(folder, lambda m: m["verification"]["tolerance"]["cpu"].update(atol=1e-5))
    _refused(folder, "verification did not pass", "CPUExecutionProvider failed")


def test_the_tolerance_used_is_reported(folder: Path) -> None:
    _edit_manifest(folder, lambda m: m["verification"]["tolerance"]["cpu"].update(atol=0.5))
    result = run_cli("verify", str(folder), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tolerance"] == {"cpu": {"atol": 0.5, "rtol": 1e-4}}
    assert "atol 0.5 + rtol 0.0001" in _flat(result)  # the tolerance in the rule the manifest names


# -- 1. everything the manifest claims must agree with the model -----------------------------------


@pytest.mark.parametrize(
    ("edit_manifest", "edit_model", "expected"),
    [
        (  # the example: a model built for another input size under a manifest saying 10
            lambda m: m["config"].update(input_size=7),
            None,
            "metadata 'rnnexport.config' is {'hidden_size': 20, 'input_size': 10, 'output_size': 5}, "
            "the manifest says {'input_size': 7, 'hidden_size': 20, 'output_size': 5}",
        ),
        (
            None,
            lambda m: _set_metadata(
                m, "rnnexport.config", '{"hidden_size": 20, "input_size": 7, "output_size": 5}'
            ),
            "metadata 'rnnexport.config' is",
        ),
        (
            None,
            lambda m: _set_metadata(m, "rnnexport.contract", '{"inputs": [], "outputs": []}'),
            "metadata 'rnnexport.contract' is {'inputs': [], 'outputs': []}",
        ),
        (
            None,
            lambda m: _set_metadata(m, "rnnexport.config", "{"),
            "metadata 'rnnexport.config' is not valid JSON",
        ),
        (None, lambda m: _set_metadata(m, "rnnexport.arch", "many-to-many"), "metadata 'rnnexport.arch' is"),
        (None, lambda m: m.metadata_props.pop(), "the model has no 'rnnexport.contract' metadata"),
        (  # config and metadata agree with each other, but not with the contract's sizes
            lambda m: m["config"].update(output_size=6),
            lambda m: _set_metadata(
                m, "rnnexport.config", '{"hidden_size": 20, "input_size": 10, "output_size": 6}'
            ),
            "'output_size': 6} has the contract",
        ),
    ],
)
def test_manifest_config_contract_and_metadata_are_cross_checked(
    folder: Path,
    edit_manifest: Callable[[dict[str, Any]], object] | None,
    edit_model: Callable[[onnx.ModelProto], object] | None,
    expected: str,
) -> None:
    if edit_model is not None:
        _edit_model(folder, edit_model)
    if edit_manifest is not None:
        _edit_manifest(folder, edit_manifest)
    _refused(folder, expected)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m["inputs"][0].update(shape=[None, None, None]), "has the dim None"),
        (lambda m: m["outputs"][0].update(shape=["batch", None]), "'outputs' tensor 'y' has the dim None"),
        # A named axis other than batch/seq is allowed (user contracts name "steps"), but it must be
        # the graph's own: the contract check refuses it.
        (lambda m: m["inputs"][0].update(shape=["batch", "time", 10]), "should be the dynamic axis 'time'"),
        (lambda m: m["inputs"][0].update(shape=["batch", "seq", 0]), "has the dim 0"),
        (lambda m: m["inputs"][1].update(dtype="float64"), "has dtype 'float64'"),
        (lambda m: m.update(inputs=[]), "'inputs' must be a non-empty list of tensors"),
        (lambda m: m["inputs"].pop(), "input names are ['x', 'lengths'], expected ['x']"),
        (lambda m: m["inputs"][0].update(shape=["batch", 7, 10]), "axis 1 should be 7"),
    ],
)
def test_contract_dims_cannot_switch_the_check_off(
    folder: Path, edit: Callable[[dict[str, Any]], object], expected: str
) -> None:
    _edit_manifest(folder, edit)
    _refused(folder, expected)


def test_pinning_the_manifest(folder: Path) -> None:
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert run_cli("verify", str(folder), "--device", "cpu", "--expect-sha256", digest).exit_code == 0
    _edit_manifest(folder, lambda m: m["weights"].update(source="someone else"))
    _refused_pin = run_cli("verify", str(folder), "--device", "cpu", "--expect-sha256", digest)
    assert _refused_pin.exit_code == 1
    assert f"expected {digest}: this is not the artifact you pinned" in _flat(_refused_pin)


# -- 2. no hangs, bounded sizes and time -------------------------------------------------------------


def test_a_fifo_at_a_listed_path_is_refused_without_opening_it(folder: Path) -> None:
    (folder / "test_data_set_0" / "input_0.pb").unlink()
    os.mkfifo(folder / "test_data_set_0" / "input_0.pb")
    os.mkfifo(folder / "extra.pb")
    result = cli_in_child("verify", str(folder), "--device", "cpu", timeout=60)
    assert result.returncode == 1
    output = _flat(result)
    assert (
        "'test_data_set_0/input_0.pb' is a FIFO (named pipe) (refused: artifacts hold plain files only"
        in output
    )
    assert "'extra.pb' is a FIFO (named pipe)" in output


def test_a_manifest_that_is_a_fifo_or_a_link_is_refused(folder: Path, tmp_path: Path) -> None:
    (folder / MANIFEST).rename(tmp_path / "real.json")
    os.mkfifo(folder / MANIFEST)
    result = cli_in_child("verify", str(folder), "--device", "cpu", timeout=60)
    assert result.returncode == 1
    assert "expected a plain file manifest.json in it, found a FIFO (named pipe)" in _flat(result)
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).symlink_to(tmp_path / "real.json")
    assert "found a symbolic link" in _refused(folder)


def test_oversized_files_are_refused_before_reading(folder: Path) -> None:
    # A sparse 3 GiB model: no disk space used, and nothing is read or hashed.
    with (folder / "model.onnx").open("r+b") as handle:
        handle.truncate(3 << 30)
    _refused(folder, "'model.onnx' is 3,221,225,472 bytes, over the limit of 2,147,483,647 bytes (refused)")


def test_small_limits_apply_to_every_file(folder: Path) -> None:
    with pytest.raises(
        ArtifactError, match=r"'test_data_set_2/input_0\.pb' is [0-9,]+ bytes, over the limit of 1,000"
    ):
        verify_artifact(folder, device="cpu", limits=Limits(test_data_bytes=1000))
    with pytest.raises(ArtifactError, match="more than 5 files and folders"):
        verify_artifact(folder, device="cpu", limits=Limits(artifact_entries=5))
    with pytest.raises(ArtifactError, match=r"manifest .* is [0-9,]+ bytes; the limit is 100 bytes"):
        verify_artifact(folder, device="cpu", limits=Limits(manifest_bytes=100))


def test_a_model_that_would_run_forever_is_stopped(folder: Path) -> None:
    plant_endless_model(folder)
    result = run_cli("verify", str(folder), "--device", "cpu", "--time-limit", "2")
    assert result.exit_code == 1
    output = _flat(result)
    assert "onnxruntime did not finish the test data within the time bound of 2 s and was stopped" in output
    assert "verification did not pass" in output


def test_a_stopped_run_is_reported_under_the_rule_that_was_asked_for(folder: Path) -> None:
    # The artifact is verified under the oracle rule: a run stopped by the time bound is a failure of
    # that rule, not of the tolerance rule the result used to default to.
    assert json.loads((folder / "manifest.json").read_text())["verification"]["rule"]["name"] == "oracle"
    plant_endless_model(folder)
    result = run_cli("verify", str(folder), "--device", "cpu", "--time-limit", "2", "--json")
    assert result.exit_code == 1
    cpu = json.loads(result.stdout)["providers"]["CPUExecutionProvider"]
    assert cpu["status"] == "failed"
    assert "within the time bound of 2 s" in cpu["reason"]
    assert cpu["rule"] == "oracle"


def test_sigterm_while_the_model_runs_stops_the_child_too(folder: Path) -> None:
    plant_endless_model(folder)
    args = ["verify", str(folder), "--device", "cpu", "--time-limit", "600"]
    sigterm_while_the_model_runs(args, what="verify")


def test_each_file_is_read_once_and_those_bytes_are_verified(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = read_bounded

    def counting(path: Path, **kwargs: Any) -> bytes:
        reads.append(Path(path).relative_to(folder).as_posix())
        return real(path, **kwargs)

    # The manifest is read where the folder is checked, every listed file where files are read.
    monkeypatch.setattr(untrusted, "read_bounded", counting)
    monkeypatch.setattr(files, "read_bounded", counting)
    assert verify_artifact(folder, device="cpu").passed
    assert sorted(reads) == sorted([MANIFEST, *json.loads((folder / MANIFEST).read_text())["files"]])


def test_a_rebuild_published_while_verify_reads_is_read_again(
    folder: Path, shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another artifact (other test data, other hashes) is swapped in after the manifest was read.
    newer = tmp_path / "newer"
    build("attention", out=newer, device="cpu", config={"hidden_size": 7})
    real = files.read_listed
    calls: list[int] = []

    def swap_once(where: Path, listed: Any, limits: Limits, **options: Any) -> Any:
        if not calls:
            folder.rename(tmp_path / "old")
            (newer / "attention").rename(folder)
        calls.append(1)
        return real(where, listed, limits, **options)

    monkeypatch.setattr(untrusted, "read_listed", swap_once)
    report = verify_artifact(folder, device="cpu")
    assert report.passed
    assert report.manifest.config["hidden_size"] == 7
    assert len(calls) == 2


# -- 7. malformed artifacts: one message each, exit 1 ----------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(format=float("inf")), "Infinity is not a JSON number"),
        (lambda m: m.update(format=1.0), "'format' must be a whole number, got 1.0"),
        (lambda m: m.update(format=True), "'format' must be a whole number, got True"),
        (lambda m: m.update(format=2), "has manifest format 2; this rnnexport reads format 1"),
        (lambda m: m.update(config={"input_size": "10"}), "its config is invalid"),
        (
            lambda m: m["files"].update({"model.onnx": "abc"}),
            "the sha256 of 'model.onnx' is not 64 hex digits",
        ),
        (lambda m: m["test_data"].append({"dir": "../x"}), "'test_data' names the folder '../x'"),
        (lambda m: m.pop("test_data"), "'test_data' must be a list"),
        (lambda m: m.update(deep=json.loads("[" * 200 + "]" * 200)), "nests 201 levels deep"),
    ],
)
def test_malformed_manifests(folder: Path, edit: Callable[[dict[str, Any]], object], expected: str) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    _refused(folder, expected)


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ('"format": 1e999,', "the number 1e999 is out of range (not a finite float)"),
        ('"format": 1, "format": 1,', "the key 'format' appears twice in one object"),
        ('"format": ' + "9" * 5000 + ",", "is not valid JSON: Exceeds the limit (4300 digits)"),
    ],
)
def test_manifest_text_the_json_module_would_take(folder: Path, replacement: str, expected: str) -> None:
    text = (folder / MANIFEST).read_text()
    assert '"format": 1,' in text
    (folder / MANIFEST).write_text(text.replace('"format": 1,', replacement, 1))
    _refused(folder, expected)


@pytest.mark.parametrize("name", ["test_data_set_x", "test_data_set_9", "other"])
def test_empty_or_unexpected_folders(folder: Path, name: str) -> None:
    (folder / name).mkdir()
    _refused(folder, f"'{name}/' is a folder the manifest does not account for (empty or unexpected)")


def test_an_emptied_test_data_set(folder: Path) -> None:
    for file in (folder / "test_data_set_1").iterdir():
        file.unlink()
    _refused(folder, "'test_data_set_1/input_0.pb' is listed in the manifest but missing")


def _tensor_edit(folder: Path, target: str, edit: Callable[[TensorProto], object]) -> None:
    tensor = TensorProto()
    tensor.ParseFromString((folder / target).read_bytes())
    edit(tensor)
    (folder / target).write_bytes(tensor.SerializeToString())
    rehash(folder)


def _retype(data_type: int) -> Callable[[TensorProto], None]:
    def edit(tensor: TensorProto) -> None:
        tensor.data_type = data_type

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.dims.__setitem__(0, 4),
            "declares dims [4, 7, 10] (280 values, 1120 bytes) but holds 840 bytes",
        ),
        (lambda t: t.dims.append(2), "declares dims [3, 7, 10, 2]"),
        (lambda t: t.dims.__setitem__(0, 10**15), "declares dims [1000000000000000, 7, 10]"),
        (lambda t: t.dims.__setitem__(0, -3), "has negative dims [-3, 7, 10]"),
        (
            _retype(TensorProto.UNDEFINED),
            "holds a tensor of type UNDEFINED; the contract says 'x' is float32",
        ),
        (_retype(TensorProto.STRING), "holds a tensor of type STRING"),
        (_retype(TensorProto.DOUBLE), "holds a tensor of type DOUBLE"),
        (_retype(999), "holds a tensor of type 999"),
        (lambda t: setattr(t, "name", "lengths"), "holds the tensor 'lengths', expected 'x'"),
        (lambda t: t.double_data.append(1.0), "carries values in ['double_data']"),
        (lambda t: t.segment.SetInParent(), "is a segmented tensor"),
    ],
)
def test_malformed_test_data(folder: Path, edit: Callable[[TensorProto], object], expected: str) -> None:
    _tensor_edit(folder, "test_data_set_1/input_0.pb", edit)
    _refused(folder, "test_data_set_1/input_0.pb", expected)


def test_test_data_that_breaks_the_contract(folder: Path) -> None:
    def zero_length(tensor: TensorProto) -> None:
        lengths = numpy_helper.to_array(tensor).copy()
        lengths[0] = 0
        tensor.CopyFrom(numpy_helper.from_array(lengths, name=tensor.name))

    _tensor_edit(folder, "test_data_set_1/input_1.pb", zero_length)
    _refused(folder, "must satisfy 1 <= lengths[b] <= seq (7); row 0 has 0")


def test_long_path_components_are_a_message(tmp_path: Path) -> None:
    long = tmp_path / ("d" * 300)
    _refused(long, "has a path component of 300 bytes; file systems allow at most 255 bytes per name", code=2)


# -- 9. what a message lists is bounded, whatever the manifest lists ----------------------------------


@pytest.mark.parametrize("json_output", [False, True])
def test_a_hundred_thousand_bogus_entries_make_one_short_message(folder: Path, json_output: bool) -> None:
    # Before: 6.3 MB of message (12.6 MB with --json), one line per missing file.
    _edit_manifest(
        folder, lambda m: m["files"].update({f"bogus/file_{i:06d}.bin": "0" * 64 for i in range(100_000)})
    )
    result = run_cli("verify", str(folder), "--device", "cpu", *(["--json"] if json_output else []))
    assert result.exit_code == 1
    assert len(result.output) < 4_000
    output = _flat(result)
    assert "'bogus/file_000000.bin' is listed in the manifest but missing" in output
    assert "'bogus/file_000009.bin' is listed" in output
    assert "'bogus/file_000010.bin'" not in output
    assert "and 99,990 more" in output


def test_a_chain_naming_half_a_million_missing_sets_makes_one_short_message(folder: Path) -> None:
    # Before: 12 MB of message, every missing set named.
    state = {"input": "state_in.r.h", "output": "state_out.r.h", "shape": ["batch", 4]}
    chain = [f"test_data_set_{i}" for i in range(100, 500_100)]
    _edit_manifest(
        folder,
        lambda m: m.update(
            streaming={
                "states": [{**state, "dtype": "float32", "initial": "zeros"}],
                "chunk_axis": "seq",
                "chains": [chain],
            }
        ),
    )
    output = _refused(folder, "'streaming.chains' names test-data sets ['test_data_set_100', ")
    assert len(output) < 4_000
    assert "and 499,990 more] that the manifest does not list" in output
