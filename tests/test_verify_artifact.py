"""`rnnexport verify` on a shipped artifact: hashes, extra files, contract, outputs, and no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnexport.artifact import verify_artifact
from rnnexport.cli import app
from rnnexport.errors import ArtifactError
from rnnexport.pipeline import build

cli = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build("many-to-many-masked", out=out, device="cpu")
    return out / "many-to-many-masked"


@pytest.fixture
def artifact(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(built, copy)
    return copy


def test_untouched_artifact_verifies(artifact: Path) -> None:
    report = verify_artifact(artifact, device="cpu")
    assert report.passed
    [cpu] = report.results.values()
    assert cpu.provider == "CPUExecutionProvider"
    assert cpu.status == "passed"
    assert len(cpu.cases) == 4  # seq 1, (3, 7), (3, 257), (3, 1000)
    result = cli.invoke(app, ["verify", str(artifact), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["providers"]["CPUExecutionProvider"]["status"] == "passed"


def test_one_byte_change_in_model_is_caught_and_named(artifact: Path) -> None:
    model = artifact / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = cli.invoke(app, ["verify", str(artifact)])
    assert result.exit_code == 1
    assert "'model.onnx' was modified" in result.output
    assert "Traceback" not in result.output


def test_changed_test_data_is_caught(artifact: Path) -> None:
    (artifact / "test_data_set_1" / "output_0.pb").write_bytes(b"\x00")
    with pytest.raises(ArtifactError, match=r"'test_data_set_1/output_0\.pb' was modified"):
        verify_artifact(artifact)


def test_extra_and_missing_files_are_reported(artifact: Path) -> None:
    (artifact / "notes.txt").write_text("hello")
    (artifact / "test_data_set_0" / "input_1.pb").unlink()
    result = cli.invoke(app, ["verify", str(artifact)])
    assert result.exit_code == 1
    assert "'notes.txt' is in the folder but not in the manifest" in result.output
    assert "'test_data_set_0/input_1.pb' is listed in the manifest but missing" in result.output


def test_not_an_artifact(tmp_path: Path) -> None:
    result = cli.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an rnnexport artifact" in result.output
    missing = cli.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "is not a folder" in missing.output


def test_verify_needs_no_torch(artifact: Path) -> None:
    # torch made unimportable: `import torch` raises ImportError anywhere on this path.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from rnnexport.cli import main\n"
        f"sys.argv = ['rnnexport', 'verify', {str(artifact)!r}, '--device', 'cpu']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "passed" in result.stderr
    assert "Traceback" not in result.stderr
