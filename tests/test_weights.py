"""User checkpoints: safe loading, strict fitting, inferred sizes, and the end-to-end trained build."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from rnnexport.cli import app
from rnnexport.errors import WeightsError
from rnnexport.reference import build_model
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig
from rnnexport.weights import load_state_dict

cli = CliRunner()


def _train(arch: str, config: ArchConfig, steps: int = 15) -> torch.nn.Module:
    """A few real optimisation steps on synthetic data, so the weights are not an initialisation."""
    spec = get_arch(arch)
    model = build_model(spec, config, seed=1).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 12, config.input_size, generator=generator)
        args = [x, torch.randint(1, 13, (8,), generator=generator)] if spec.masked else [x]
        loss = model(*args).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _invoke(*args: str) -> Result:
    result = cli.invoke(app, ["build", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


@pytest.mark.parametrize("arch", ["parallel-gru", "attention"])
def test_trained_checkpoint_builds_verifies_and_matches(arch: str, tmp_path: Path) -> None:
    config = ArchConfig(input_size=6, hidden_size=24, output_size=3, branches=2)
    model = _train(arch, config)
    checkpoint = tmp_path / "trained.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "dist"
    result = cli.invoke(
        app, ["build", "--arch", arch, "--weights", str(checkpoint), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    inferred = ["input_size=6", "hidden_size=24"] + (
        ["branches=2"] if arch.startswith("parallel") else ["output_size=3"]
    )
    for fact in inferred:
        assert f"inferred {fact} from the checkpoint" in result.output

    manifest = json.loads((out / arch / "manifest.json").read_text())
    assert manifest["weights"]["source"] == "user"
    assert manifest["weights"]["sha256"] == __import__("hashlib").sha256(checkpoint.read_bytes()).hexdigest()
    assert "eager PyTorch" in manifest["weights"]["references"]
    assert cli.invoke(app, ["verify", str(out / arch), "--device", "cpu"]).exit_code == 0

    session = ort.InferenceSession(str(out / arch / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 1), (5, 33), (2, 300)):
        x = torch.randn(batch, seq, 6)
        args = [x, torch.randint(1, seq + 1, (batch,))] if get_arch(arch).masked else [x]
        feeds = dict(zip(["x", "lengths"], [a.numpy() for a in args], strict=False))
        with torch.no_grad():
            expected = model(*args).numpy()
        np.testing.assert_allclose(session.run(["y"], feeds)[0], expected, atol=1e-5, rtol=1e-4)


def test_gru_checkpoint_for_lstm_architecture_lists_every_key(tmp_path: Path) -> None:
    gru = build_model(get_arch("parallel-gru"), ArchConfig(), seed=0)
    checkpoint = tmp_path / "gru.safetensors"
    save_file(gru.state_dict(), str(checkpoint))
    result = _invoke("--arch", "parallel-lstm", "--weights", str(checkpoint), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    output = result.output
    assert "missing (14): 'lstms.0.weight_ih_l0' [80, 10];" in output
    assert "unexpected (14):" in output
    assert "'grus.0.weight_ih_l0' [60, 10]" in output
    assert "'linear.weight' [20, 60]" in output
    assert "The keys look like weights of 'parallel-gru': try --arch parallel-gru." in output
    assert not (tmp_path / "out").exists()


def test_wrong_hidden_size_reports_expected_and_actual_shapes(tmp_path: Path) -> None:
    model = build_model(get_arch("many-to-many"), ArchConfig(hidden_size=32), seed=0)
    checkpoint = tmp_path / "m.pt"
    torch.save(model.state_dict(), checkpoint)
    result = _invoke(
        "--arch",
        "many-to-many",
        "--weights",
        str(checkpoint),
        "--hidden-size",
        "20",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "'lstm.weight_hh_l0': expected [80, 20], got [128, 32]" in output
    assert "'fc.weight': expected [5, 20], got [5, 32]" in output
    assert "hidden_size=20" in output
    assert (
        "The key names fit 'many-to-many'; the checkpoint's shapes say input_size=10, hidden_size=32"
        in output
    )
    assert not (tmp_path / "o").exists()


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def test_pickle_carrying_code_is_refused_without_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    _RunsCode.marker = str(marker)
    checkpoint = tmp_path / "evil.pt"
    with checkpoint.open("wb") as handle:
        pickle.dump({"lstm.weight_ih_l0": payload}, handle)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not loosen anything
    result = _invoke("--arch", "many-to-many", "--weights", str(checkpoint), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "Refused to load" in output
    assert "could run code" in output
    assert "Nothing in it was executed" in output
    assert not marker.exists()
    assert not (tmp_path / "o").exists()
    # Same file through torch.save's zip format.
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"w": payload}, zipped)
    with pytest.raises(WeightsError, match=r"asks to import posix\.system") as info:
        load_state_dict(zipped)
    assert "could run code" in str(info.value)
    assert not marker.exists()


def test_whole_pickled_module_gets_state_dict_advice(tmp_path: Path) -> None:
    checkpoint = tmp_path / "module.pt"
    torch.save(build_model(get_arch("many-to-many"), ArchConfig(), seed=0), checkpoint)
    with pytest.raises(WeightsError) as info:
        load_state_dict(checkpoint)
    message = str(info.value)
    assert "a whole pickled module" in message
    assert "save_file(model.state_dict()" in message
    assert "torch.save(model.state_dict()" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path: Path, damage: str) -> None:
    model = build_model(get_arch("attention"), ArchConfig(), seed=0)
    checkpoint = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07" * 64)
    result = _invoke("--arch", "attention", "--weights", str(checkpoint), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "truncated or corrupt" in result.output
    assert not (tmp_path / "o").exists()


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    state = build_model(get_arch("many-to-many"), ArchConfig(), seed=0).state_dict()
    state["fc.bias"][2] = float("nan")
    state["lstm.weight_hh_l0"][0, 0] = float("inf")
    checkpoint = tmp_path / "nan.safetensors"
    save_file(state, str(checkpoint))
    result = _invoke("--arch", "many-to-many", "--weights", str(checkpoint), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "NaN or infinite values in ['fc.bias', 'lstm.weight_hh_l0']" in result.output


def test_config_file_sizes_and_unknown_keys(tmp_path: Path) -> None:
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"input_size": 4, "hidden_size": 8, "output_size": 2}))
    result = _invoke(
        "--arch", "many-to-many", "--config", str(sizes), "--out", str(tmp_path / "o"), "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "many-to-many" / "manifest.json").read_text())
    assert manifest["config"] == {"input_size": 4, "hidden_size": 8, "output_size": 2}
    assert manifest["weights"]["source"] == "seeded"
    assert manifest["inputs"][0]["shape"] == ["batch", "seq", 4]
    sizes.write_text(json.dumps({"hidden": 8}))
    bad = _invoke("--arch", "many-to-many", "--config", str(sizes), "--out", str(tmp_path / "p"))
    assert bad.exit_code == 2
    assert "Unknown key(s) 'hidden'" in bad.output
