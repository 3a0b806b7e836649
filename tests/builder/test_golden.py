"""Golden data: present for every architecture, small, fresh, and reproducible by its one writer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rnnexport.builder.eager import TorchRunner, build_model
from rnnexport.builder.golden import golden_root, load_golden, regenerate_command
from rnnexport.errors import GoldenError
from rnnexport.registry import get_arch

from ..helpers import ARCH_NAMES, REPO


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_golden_folder_is_complete_and_small(arch: str) -> None:
    golden = load_golden(get_arch(arch))  # raises with the regenerate command when missing/stale
    size = sum(f.stat().st_size for f in golden.directory.iterdir())
    assert size < 200_000, f"{arch} golden data is {size} bytes"
    meta = golden.meta
    assert {"seed", "config", "contract", "cases", "versions"} <= set(meta)
    assert {"torch", "numpy"} <= set(meta["versions"])
    batches = {c["batch"] for c in meta["cases"]}
    seqs = {c["seq"] for c in meta["cases"]}
    assert 1 in batches
    assert 1 in seqs
    assert max(seqs) > 100
    assert len(meta["cases"]) >= 3
    if get_arch(arch).masked:
        lengths = [(c["seq"], c["lengths"]) for c in meta["cases"]]
        assert any(1 in ls and seq in ls and seq > 1 for seq, ls in lengths)
    # The safetensors reader hands tensors out in hash order; a case lists them in the contract's
    # order, or two builds of one model write different manifests.
    contract = get_arch(arch).contract(get_arch(arch).default_config)
    for case in golden.cases:
        assert list(case.inputs) == contract.input_names
        assert list(case.outputs) == contract.output_names


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_current_model_reproduces_golden_outputs(arch: str) -> None:
    # Stale golden data (the module changed after the goldens were written) fails here.
    spec = get_arch(arch)
    golden = load_golden(spec)
    try:
        import torch

        state = {k: torch.from_numpy(v) for k, v in golden.weights.items()}
        model = build_model(spec, golden.config, state_dict=state)
    except RuntimeError as exc:
        pytest.fail(f"golden weights no longer fit {arch} ({exc}); run: {regenerate_command(arch)}")
    runner = TorchRunner(spec, model)
    tolerance = golden.meta["output_tolerance"]
    assert 0 < tolerance["atol"] <= 1e-6  # float bytes differ between CPUs; a tolerance, but a tight one
    for case in golden.cases:
        got = runner.infer(case.inputs)
        for name, want in case.outputs.items():
            np.testing.assert_allclose(
                got[name],
                want,
                atol=tolerance["atol"],
                rtol=tolerance["rtol"],
                err_msg=f"{case.name} is stale: run {regenerate_command(arch)}",
            )


def test_missing_golden_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(GoldenError) as info:
        load_golden(get_arch("attention"), root=tmp_path)
    assert "python scripts/make_golden.py --arch attention --overwrite" in str(info.value)


def test_stale_contract_is_detected(tmp_path: Path) -> None:
    shutil.copytree(golden_root() / "attention", tmp_path / "attention")
    meta_path = tmp_path / "attention" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["contract"]["outputs"][0]["shape"] = ["batch", "seq", 5]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(GoldenError, match="stale") as info:
        load_golden(get_arch("attention"), root=tmp_path)
    assert regenerate_command("attention") in str(info.value)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_golden.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def test_writer_reproduces_committed_goldens() -> None:
    # The committed outputs were computed on another CPU: bytes differ here, values agree.
    result = _script("--all", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("reproduced (inputs exact, outputs within tolerance)") == len(ARCH_NAMES)


def _perturb(path: Path, key: str, delta: float) -> None:
    tensors = load_file(str(path))
    flat = tensors[key].reshape(-1)
    flat[0] = flat[0] + np.float32(delta)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("key", "delta", "passes"),
    [
        ("output.y", 3e-7, True),  # last-bit noise of another CPU's kernels: within tolerance
        ("output.y", 1e-4, False),  # a changed model: caught
        ("input.x", 1e-6, False),  # inputs are seeded, so they must match exactly
    ],
)
def test_check_compares_outputs_within_tolerance_and_inputs_exactly(
    tmp_path: Path, key: str, delta: float, passes: bool
) -> None:
    shutil.copytree(golden_root() / "many-to-many", tmp_path / "many-to-many")
    _perturb(tmp_path / "many-to-many" / "case_1.safetensors", key, delta)
    result = _script("--arch", "many-to-many", "--check", "--root", str(tmp_path))
    assert (result.returncode == 0) is passes, result.stdout + result.stderr
    if not passes:
        assert f"case_1.safetensors[{key}]" in result.stdout


def test_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    first = _script("--arch", "many-to-many", "--root", str(tmp_path))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "many-to-many").iterdir()}
    second = _script("--arch", "many-to-many", "--root", str(tmp_path))
    assert second.returncode == 1
    assert "--overwrite" in second.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "many-to-many").iterdir()} == before
