"""A target install: ``pip install "rnnexport[cpu]"`` in a fresh virtual environment, without torch.

This is what a device or inference server gets. It must verify a shipped artifact and list the
architectures, and refuse to build with one sentence that names the extra to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from rnnexport.builder.pipeline import build

from ..helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding ``rnnexport[cpu]`` built from this checkout."""
    root = tmp_path_factory.mktemp("target-env")
    venv.create(root, with_pip=True, clear=True)
    python = root / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{REPO}[cpu]"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        reachable = (
            "Could not find a version" not in result.stderr and "NewConnectionError" not in result.stderr
        )
        if not reachable:
            pytest.skip(f"the package index cannot be reached from here: {result.stderr.strip()[-300:]}")
        pytest.fail(f"pip install rnnexport[cpu] failed:\n{result.stdout}\n{result.stderr}")
    return root


def _distributions(env: Path) -> set[str]:
    out = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {entry["name"].lower() for entry in json.loads(out)}


def _rnnexport(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(env / "bin" / "rnnexport"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=clean | {"COLUMNS": "200"},
        timeout=300,
    )


def test_target_profile_has_one_runtime_and_no_build_tools(target_env: Path) -> None:
    installed = _distributions(target_env)
    assert {"rnnexport", "onnxruntime", "onnx", "numpy", "typer"} <= installed
    assert not installed & {"torch", "onnxsim", "onnxruntime-gpu"}


def test_target_install_verifies_an_artifact(target_env: Path, tmp_path: Path) -> None:
    build("attention", out=tmp_path / "dist", device="cpu")
    result = _rnnexport(target_env, "verify", str(tmp_path / "dist" / "attention"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["providers"]["CPUExecutionProvider"]["status"] == "passed"


def test_target_install_lists_but_refuses_to_build_naming_the_extra(target_env: Path, tmp_path: Path) -> None:
    listed = _rnnexport(target_env, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "attention" in listed.stdout
    refused = _rnnexport(target_env, "build", "--arch", "attention", cwd=tmp_path)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "needs the build extra" in message
    assert "rnnexport[build,cpu]" in message
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "dist").exists()


def test_this_environment_has_only_one_onnxruntime() -> None:
    # The development environment (scripts/setup.sh) must not mix the two wheels either.
    from importlib import metadata

    names = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert len(names & {"onnxruntime", "onnxruntime-gpu"}) == 1, sys.prefix
