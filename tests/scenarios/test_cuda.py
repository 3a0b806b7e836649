"""CUDA parity: the same golden tensors and shape sweep as the CPU, on a provider that really ran.

Skipped, with the probe's reason, where ONNX Runtime's CUDA provider cannot run; on a GPU machine
`bash scripts/gpu_check.sh` runs these for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnexport.artifact import verify_artifact
from rnnexport.builder.pipeline import TF32_TOLERANCE, build
from rnnexport.runtime import probe_provider

from ..helpers import ARCH_NAMES, build_every_architecture

_PROBE = probe_provider("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _PROBE.available, reason=f"no working CUDA provider here: {_PROBE.reason}"),
]


@pytest.fixture(scope="module")
def cuda_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_every_architecture(tmp_path_factory.mktemp("cuda"), "cuda")


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_cuda_build_verifies_against_goldens(cuda_artifacts: Path, arch: str) -> None:
    manifest = json.loads((cuda_artifacts / arch / "manifest.json").read_text())
    cuda = manifest["verification"]["providers"]["CUDAExecutionProvider"]
    assert cuda["status"] == "passed"
    assert cuda["tf32"] is False
    assert cuda["tolerance"] == {"atol": 1e-5, "rtol": 1e-4}
    assert manifest["verification"]["tf32_policy"] == "CUDA provider use_tf32=0"
    golden_shapes = [s for s in cuda["shapes"] if s["x"][0] in (2, 5)]  # golden cases: batch 2 and 5
    assert golden_shapes, "the golden cases must be part of CUDA verification"
    print(f"{arch}: CUDA max abs {cuda['max_abs_error']:.3e}, max rel {cuda['max_rel_error']:.3e}")


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_cuda_artifact_reverifies_on_cuda(cuda_artifacts: Path, arch: str) -> None:
    report = verify_artifact(cuda_artifacts / arch, device="cuda")
    assert report.passed
    [result] = report.results.values()
    assert result.provider == "CUDAExecutionProvider"


def test_tf32_is_opt_in_with_a_looser_recorded_tolerance(tmp_path: Path) -> None:
    manifest = build("parallel-lstm", out=tmp_path, device="cuda", tf32=True)
    cuda = manifest.verification["providers"]["CUDAExecutionProvider"]
    assert cuda["status"] == "passed"
    assert cuda["tf32"] is True
    assert cuda["tolerance"] == TF32_TOLERANCE.to_json()
    assert manifest.verification["tolerance"]["cpu"] == {"atol": 1e-5, "rtol": 1e-4}
