"""Shared fixtures: the registry drives parametrisation, so a new architecture is tested everywhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from rnnexport.cli import app
from rnnexport.registry import list_architectures

REPO = Path(__file__).resolve().parent.parent
ARCH_NAMES = [spec.name for spec in list_architectures()]
MASKED = [spec.name for spec in list_architectures() if spec.masked]
PER_STEP = [spec.name for spec in list_architectures() if spec.per_step]


def run_cli(*args: str) -> Result:
    """``rnnexport ARGS`` in process; whatever it exits with, it must not end in a traceback."""
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def flat(text: str) -> str:
    """``text`` on one line, runs of whitespace (a terminal's wrapping) as one space."""
    return " ".join(text.split())


def build_every_architecture(out: Path, device: str) -> Path:
    """Build all registered architectures into ``out`` (one artifact folder each) and return ``out``."""
    from rnnexport.builder.pipeline import build

    for name in ARCH_NAMES:
        build(name, out=out, device=device)
    return out


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


def import_or_skip(name: str, *, reason: str) -> Any:
    """``pytest.importorskip``, except where RNNEXPORT_REQUIRE_EXTRAS is set (CI installs every extra
    there, so a missing one is a failure of the setup, not a reason to skip its tests)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("RNNEXPORT_REQUIRE_EXTRAS"):
            pytest.fail(f"RNNEXPORT_REQUIRE_EXTRAS is set, but {reason} ({exc})", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def folder(shipped: Path, tmp_path: Path) -> Path:
    """A private copy of the requesting module's ``shipped`` artifact (built once per module), for a
    test to tamper with."""
    copy = tmp_path / "artifact"
    shutil.copytree(shipped, copy)
    return copy
