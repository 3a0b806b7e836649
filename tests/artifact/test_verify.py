"""`rnnexport verify` on a shipped artifact: hashes, extra files, contract, outputs, and no torch."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rnnexport.artifact import MANIFEST, verify_artifact
from rnnexport.builder.pipeline import build
from rnnexport.errors import ArtifactError

from ..helpers import cli_in_child, copy_artifact, run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build("many-to-many-masked", out=out, device="cpu")
    return out / "many-to-many-masked"


@pytest.fixture
def artifact(built: Path, tmp_path: Path) -> Path:
    return copy_artifact(built, tmp_path / "artifact")


def test_untouched_artifact_verifies(artifact: Path) -> None:
    report = verify_artifact(artifact, device="cpu")
    assert report.passed
    [cpu] = report.results.values()
    assert cpu.provider == "CPUExecutionProvider"
    assert cpu.status == "passed"
    assert len(cpu.cases) == 4  # seq 1, (3, 7), (3, 257), (3, 1000)
    result = run_cli("verify", str(artifact), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["providers"]["CPUExecutionProvider"]["status"] == "passed"


def test_one_byte_change_in_model_is_caught_and_named(artifact: Path) -> None:
    model = artifact / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = run_cli("verify", str(artifact))
    assert result.exit_code == 1
    assert "'model.onnx' was modified" in result.output
    assert "Traceback" not in result.output


def test_changed_test_data_is_caught(artifact: Path) -> None:
    (artifact / "test_data_set_1" / "output_0.pb").write_bytes(b"\x00")
    with pytest.raises(ArtifactError, match=r"'test_data_set_1/output_0\.pb' was modified"):
        verify_artifact(artifact)


def test_unlisted_model_and_missing_files_are_reported(artifact: Path) -> None:
    shutil.copy(artifact / "model.onnx", artifact / "model.int8.onnx")
    (artifact / "test_data_set_0" / "input_1.pb").unlink()
    result = run_cli("verify", str(artifact))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "'model.int8.onnx' is a model file the manifest does not list (refused" in output
    assert "'test_data_set_0/input_1.pb' is listed in the manifest but missing" in output


# -- files the manifest does not list ---------------------------------------------------------------

STRAYS = [".DS_Store", "Thumbs.db", "model.onnx~", "test_data_set_0/.DS_Store", "notes.txt"]


def test_stray_files_pass_with_a_warning_naming_each(artifact: Path) -> None:
    for name in STRAYS:
        (artifact / name).write_bytes(b"\x00\x05\x16\x07 not a model")
    report = verify_artifact(artifact, device="cpu")
    assert report.passed
    assert report.unlisted == sorted(STRAYS)
    result = run_cli("verify", str(artifact), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "warning: 5 file(s) in the folder are not in the manifest and were not verified" in output
    for name in STRAYS:
        assert f"'{name}'" in output
    assert "passed:" in output
    data = json.loads(run_cli("verify", str(artifact), "--device", "cpu", "--json").stdout)
    assert data["passed"] is True
    assert data["unlisted"] == sorted(STRAYS)
    assert data["unlisted_more"] == 0


def test_many_stray_files_are_named_up_to_a_cap(artifact: Path) -> None:
    names = sorted(f"stray-{k:02d}.txt" for k in range(27))
    for name in names:
        (artifact / name).write_text("x")
    result = run_cli("verify", str(artifact), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["unlisted"] == names[:20]
    assert data["unlisted_more"] == 7
    output = " ".join(result.output.split())
    assert "warning: 27 file(s)" in output
    assert f"'{names[19]}' and 7 more" in output
    assert f"'{names[20]}'" not in output


def test_a_stray_file_name_reaches_the_terminal_escaped(artifact: Path) -> None:
    (artifact / "evil\x1b[2J.txt").write_text("x")
    result = run_cli("verify", str(artifact), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "\x1b[2J" not in result.output
    assert "'evil\\x1b[2J.txt'" in result.output


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.int8.onnx", "'model.int8.onnx' is a model file the manifest does not list"),
        ("model.fp16.ort", "'model.fp16.ort' is a model file the manifest does not list"),
        ("model.onnx.data", "'model.onnx.data' is a model file the manifest does not list"),
        ("MODEL.ONNX", "'MODEL.ONNX' is a model file the manifest does not list"),
        ("test_data_set_0/input_7.pb", "'test_data_set_0/input_7.pb' is a test-data tensor the manifest"),
    ],
)
def test_an_unlisted_model_file_is_refused_beside_strays(artifact: Path, name: str, expected: str) -> None:
    (artifact / ".DS_Store").write_text("x")
    shutil.copy(artifact / "test_data_set_0" / "input_0.pb", artifact / name)
    with pytest.raises(ArtifactError) as info:
        verify_artifact(artifact, device="cpu")
    assert expected in str(info.value)
    assert ".DS_Store" not in str(info.value)  # harmless: not a reason to refuse
    result = run_cli("verify", str(artifact), "--device", "cpu")
    assert result.exit_code == 1
    assert "passed:" not in result.output


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_links_pipes_and_unexpected_folders_stay_refused_beside_strays(artifact: Path, kind: str) -> None:
    (artifact / ".DS_Store").write_text("x")
    if kind == "symlink":
        (artifact / "notes.txt").symlink_to(artifact / ".DS_Store")
        expected = "'notes.txt' is a symbolic link (refused"
    elif kind == "fifo":
        os.mkfifo(artifact / "notes.txt")
        expected = "'notes.txt' is a FIFO (named pipe) (refused"
    else:
        (artifact / "__MACOSX").mkdir()
        (artifact / "__MACOSX" / "notes.txt").write_text("x")
        expected = "'__MACOSX/' is a folder the manifest does not account for"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        verify_artifact(artifact, device="cpu")


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_variant_the_manifest_names_but_does_not_list_is_refused(artifact: Path) -> None:
    variant = {"file": "model.int8.ort", "precision": "int8", "format": "ort", "status": "passed"}
    _edit_manifest(artifact, lambda m: m["variants"].append({**variant, "shipped": True}))
    with pytest.raises(
        ArtifactError, match=r"variant 'model\.int8\.ort' is not one of the artifact's listed"
    ):
        verify_artifact(artifact, device="cpu")
    # Present but unlisted: refused as a model file nothing verified, before the entry is read.
    (artifact / "model.int8.ort").write_bytes(b"\x00" * 16)
    with pytest.raises(ArtifactError, match=r"'model\.int8\.ort' is a model file the manifest does not list"):
        verify_artifact(artifact, device="cpu")


def test_external_data_the_manifest_records_but_does_not_list_is_refused(artifact: Path) -> None:
    layout = {"file": "model.onnx.data", "bytes": 4, "tensors": 1}
    _edit_manifest(artifact, lambda m: m["export"].update(external_data=layout))
    with pytest.raises(ArtifactError, match=r"does not list model\.onnx\.data"):
        verify_artifact(artifact, device="cpu")


def test_not_an_artifact(tmp_path: Path) -> None:
    result = run_cli("verify", str(tmp_path))
    assert result.exit_code == 1
    assert "not an rnnexport artifact" in result.output
    missing = run_cli("verify", str(tmp_path / "nope"))
    assert missing.exit_code == 2
    assert "is not a folder" in missing.output


def test_verify_needs_no_torch(artifact: Path) -> None:
    # torch made unimportable: `import torch` raises ImportError anywhere on this path.
    result = cli_in_child("verify", str(artifact), "--device", "cpu", torch_free=True)
    assert result.returncode == 0, result.stderr
    assert "passed" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_listed_model_file_no_variant_names_is_refused(artifact: Path) -> None:
    # Listed and hashed, but nothing would run it: hashing alone is not verifying.
    shutil.copy(artifact / "model.onnx", artifact / "extra.onnx")
    digest = hashlib.sha256((artifact / "extra.onnx").read_bytes()).hexdigest()
    _edit_manifest(artifact, lambda m: m["files"].update({"extra.onnx": digest}))
    with pytest.raises(ArtifactError, match=r"lists 'extra\.onnx', which no shipped variant entry"):
        verify_artifact(artifact, device="cpu")
