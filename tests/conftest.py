"""Shared fixtures. The functions the tests share are in helpers.py; the registry drives
parametrisation there, so a new architecture is tested everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import REPO, copy_artifact, run_cli


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attention artifact as ``rnnexport build`` makes it by default, built once per test run.
    Tests only read it (``folder`` is a private copy); a module that tests another artifact defines
    its own ``shipped``."""
    out = tmp_path_factory.mktemp("shipped")
    assert run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu").exit_code == 0
    return out / "attention"


@pytest.fixture
def folder(shipped: Path, tmp_path: Path) -> Path:
    """A private copy of the requesting module's ``shipped`` artifact, for a test to tamper with."""
    return copy_artifact(shipped, tmp_path / "artifact")


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test: small recurrences run fastest so, and do not stall on a busy
    machine (``pytestmark = pytest.mark.usefixtures("single_torch_thread")``)."""
    from rnnexport.builder.accuracy import one_torch_thread

    with one_torch_thread():
        yield
