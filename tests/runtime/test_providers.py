"""Providers: a session is only ever credited to the provider that actually ran it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from rnnexport import runtime
from rnnexport.errors import UsageError
from rnnexport.feeds import Case
from rnnexport.runtime import create_session, probe_provider
from rnnexport.runtime.compare import Criterion, Tolerance, verify_on_device
from rnnexport.runtime.plan import VerificationPlan

from ..helpers import matmul_model, run_cli


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    probe_provider.cache_clear()
    yield
    probe_provider.cache_clear()


class _FallingBackSession:
    """What onnxruntime does when the CUDA provider fails to load: a working CPU session."""

    def __init__(self, model: Any, sess_options: Any = None, providers: Any = None) -> None:
        self._inner = _REAL_SESSION(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_REAL_SESSION = ort.InferenceSession


@pytest.fixture
def cuda_falls_back(monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> None:
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", _FallingBackSession)


def test_cpu_probe_works() -> None:
    probe = probe_provider("cpu")
    assert probe.available
    assert probe.reason == ""


def test_silent_cuda_fallback_is_unavailable_not_passed(cuda_falls_back: None) -> None:
    probe = probe_provider("cuda")
    assert not probe.available
    assert "fell back to ['CPUExecutionProvider']" in probe.reason
    model = matmul_model(["batch", "seq", 4], ["batch", "seq", 2]).SerializeToString()
    import numpy as np

    case = Case("c", {"x": np.zeros((1, 2, 4), np.float32)}, {"y": np.zeros((1, 2, 2), np.float32)})
    plan = VerificationPlan((case,), Criterion(), {"cuda": Tolerance()})
    result = verify_on_device(model, plan, device="cuda")
    assert result.status == "unavailable"
    assert result.reason
    assert result.cases == []
    with pytest.raises(runtime.ProviderUnavailableError):
        create_session(model, "cuda")


def test_fallback_after_a_successful_probe_is_still_caught(
    monkeypatch: pytest.MonkeyPatch, fresh_probes: None
) -> None:
    # The probe said yes, but the real model's session lands on CPU anyway: still refused.
    monkeypatch.setattr(
        runtime,
        "probe_provider",
        lambda device: runtime.ProviderProbe(device, runtime.PROVIDERS[device], True),
    )
    monkeypatch.setattr(ort, "InferenceSession", _FallingBackSession)
    model = matmul_model(["batch", "seq", 4], ["batch", "seq", 2]).SerializeToString()
    with pytest.raises(runtime.ProviderUnavailableError, match="not CUDAExecutionProvider"):
        create_session(model, "cuda")


def test_device_cuda_exits_1_when_cuda_falls_back(cuda_falls_back: None, tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "many-to-many", "--device", "cuda", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "CUDA is unavailable here" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_both_onnxruntime_wheels_in_one_environment_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    real = metadata.distribution

    def both(name: str) -> object:
        return object() if name in ("onnxruntime", "onnxruntime-gpu") else real(name)

    monkeypatch.setattr(metadata, "distribution", both)
    runtime.onnxruntime_module.cache_clear()
    try:
        with pytest.raises(UsageError, match="Both onnxruntime and onnxruntime-gpu are installed"):
            runtime.onnxruntime_module()
    finally:
        runtime.onnxruntime_module.cache_clear()


def test_missing_onnxruntime_names_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    runtime.onnxruntime_module.cache_clear()
    try:
        with pytest.raises(UsageError, match=r"rnnexport\[cpu\]"):
            runtime.onnxruntime_module()
    finally:
        runtime.onnxruntime_module.cache_clear()
