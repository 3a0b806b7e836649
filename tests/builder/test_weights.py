"""User checkpoints: safe loading, strict fitting, inferred sizes, and the end-to-end trained build."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import Result

import rnnexport
from rnnexport.builder.eager import build_model
from rnnexport.builder.usermodel import load_user_weights
from rnnexport.builder.weights import load_state_dict, read_checkpoint
from rnnexport.errors import WeightsError
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig

from ..helpers import flat, run_cli


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
    return run_cli("build", *args)


@pytest.mark.parametrize("arch", ["parallel-gru", "attention"])
def test_trained_checkpoint_builds_verifies_and_matches(arch: str, tmp_path: Path) -> None:
    config = ArchConfig(input_size=6, hidden_size=24, output_size=3, branches=2)
    model = _train(arch, config)
    checkpoint = tmp_path / "trained.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "dist"
    result = run_cli(
        "build", "--arch", arch, "--weights", str(checkpoint), "--out", str(out), "--device", "cpu"
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
    assert run_cli("verify", str(out / arch), "--device", "cpu").exit_code == 0

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


# --- user models, written and saved the way people do ---------------------------------------------

USER_MODELS = """
import torch
from torch import nn


class ConvGRU(nn.Module):
    def __init__(self, n_features=6, channels=10, hidden=12, n_classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(n_features, channels, kernel_size=3, padding=1), nn.BatchNorm1d(channels), nn.ReLU()
        )
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        z = self.features(x.transpose(1, 2)).transpose(1, 2)
        y, _ = self.gru(z)
        return self.head(y)


class Encoder(nn.Module):
    def __init__(self, n_features=6, hidden=12):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x)
        return y


class Decoder(nn.Module):
    def __init__(self, hidden=12, n_features=6):
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_features)

    def forward(self, y):
        return self.out(self.lstm(y)[0])


class Autoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x):
        return self.decoder(self.encoder(x))


class EncoderWithHead(Encoder):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(12, 2)
"""

CONV_IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 6]}],
    "outputs": [{"name": "logits", "shape": ["batch", "seq", 3]}],
}
ENCODER_IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 6]}],
    "outputs": [{"name": "encoded", "shape": ["batch", "seq", 12]}],
}


@dataclass(frozen=True)
class UserModels:
    """The model file, its module, and trained instances (eval mode) with their I/O files."""

    file: Path
    module: ModuleType
    conv: torch.nn.Module
    autoencoder: torch.nn.Module
    conv_io: Path
    encoder_io: Path


def _fit(model: torch.nn.Module, loss: Callable[[torch.Tensor], Any], steps: int = 12) -> None:
    """A few Adam steps on random sequences: BatchNorm's running statistics and step count move."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        value = loss(torch.randn(8, 15, 6, generator=generator))
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    model.eval()


@pytest.fixture(scope="module")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> UserModels:
    folder = tmp_path_factory.mktemp("user-models")
    file = folder / "models.py"
    file.write_text(USER_MODELS)
    spec = importlib.util.spec_from_file_location("checkpoint_user_models", file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    conv = module.ConvGRU()
    _fit(conv, lambda x: conv(x).pow(2).mean())
    autoencoder = module.Autoencoder()
    _fit(autoencoder, lambda x: (autoencoder(x) - x).pow(2).mean())
    (folder / "conv.io.json").write_text(json.dumps(CONV_IO))
    (folder / "encoder.io.json").write_text(json.dumps(ENCODER_IO))
    return UserModels(file, module, conv, autoencoder, folder / "conv.io.json", folder / "encoder.io.json")


def _assert_matches_eager(artifact: Path, model: torch.nn.Module) -> None:
    """The artifact's outputs equal the trained module's, run eagerly, at shapes no build uses."""
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(7)
    for batch, seq in ((5, 11), (2, 40)):
        x = torch.randn(batch, seq, 6, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=1e-4)


def _lightning(state: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """What a Lightning ``Trainer`` saves: the weights under 'state_dict' with the LightningModule's
    attribute as a prefix, and plain-typed training state around them."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    optimiser = torch.optim.Adam(params)
    sum(p.sum() for p in params).backward()  # type: ignore[union-attr]
    optimiser.step()  # per-parameter state: tensors keyed by number
    return {
        "epoch": 11,
        "global_step": 12,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {prefix + k: v for k, v in state.items()},
        "loops": {
            "fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 12, "completed": 11}}}
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "/runs/epoch=11.ckpt",
            }
        },
        "optimizer_states": [optimiser.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.01, "name": "conv-gru", "betas": (0.9, 0.999), "scheduler": None},
    }


LIGHTNING_IGNORED = (
    "'callbacks', 'epoch', 'global_step', 'hparams_name', 'hyper_parameters', 'loops', and 3 more"
)
BN_NOTE = "loaded 1 int64 tensor as saved (the model's own integer buffer: 'features.1.num_batches_tracked')"

# How people save: the file, what the build prints about it, and what the manifest records.
SAVED: dict[str, tuple[str, Callable[[torch.nn.Module], object], list[str], dict[str, Any]]] = {
    "state-dict": ("conv.pt", lambda m: m.state_dict(), [BN_NOTE], {}),
    "safetensors": ("conv.safetensors", lambda m: m.state_dict(), [BN_NOTE], {}),
    "data-parallel": (
        "conv.pth",
        lambda m: torch.nn.DataParallel(m).state_dict(),
        ["stripped prefix 'module.' from every key", BN_NOTE],
        {"stripped_prefix": "module."},
    ),
    "training-loop": (
        "conv.pt",
        lambda m: {
            "epoch": 12,
            "model_state_dict": m.state_dict(),
            "optimizer_state_dict": torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9).state_dict(),
            "loss": 0.31,
        },
        [
            "used entry 'model_state_dict' of the checkpoint "
            "(ignored: 'epoch', 'loss', 'optimizer_state_dict')",
            BN_NOTE,
        ],
        {"state_dict_key": "model_state_dict"},
    ),
    "lightning": (
        "last.ckpt",
        lambda m: _lightning(m.state_dict(), "model."),
        [
            f"used entry 'state_dict' of the checkpoint (ignored: {LIGHTNING_IGNORED})",
            "stripped prefix 'model.' from every key",
            BN_NOTE,
        ],
        {"state_dict_key": "state_dict", "stripped_prefix": "model."},
    ),
    "lightning-around-data-parallel": (
        "last.ckpt",
        lambda m: _lightning(torch.nn.DataParallel(m).state_dict(), "model."),
        [
            f"used entry 'state_dict' of the checkpoint (ignored: {LIGHTNING_IGNORED})",
            "stripped prefix 'model.module.' from every key",
            BN_NOTE,
        ],
        {"state_dict_key": "state_dict", "stripped_prefix": "model.module."},
    ),
}


@pytest.mark.parametrize(
    ("saved", "via"), [(saved, ("cli", "api")[i % 2]) for i, saved in enumerate(SAVED)]
)  # each build is seconds: every way of saving once, half of them through each entry point
def test_batchnorm_model_loads_however_it_was_saved(
    user_models: UserModels, saved: str, via: str, tmp_path: Path
) -> None:
    name, wrap, notes, read = SAVED[saved]
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(wrap(user_models.conv), str(path))  # type: ignore[arg-type]
    else:
        torch.save(wrap(user_models.conv), path)
    out = tmp_path / "dist"
    if via == "cli":
        target = f"{user_models.file}:ConvGRU"
        result = run_cli(
            "build", "--model", target, "--io", str(user_models.conv_io), "--weights", str(path),
            "--out", str(out), "--device", "cpu",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "; ".join(notes) + "; " in flat(result.output)  # on the model stage's line, in order
        manifest = json.loads((out / "convgru" / "manifest.json").read_text())["weights"]
    else:
        fresh = user_models.module.ConvGRU()
        manifest = rnnexport.build_model_artifact(
            fresh, io=CONV_IO, out=out, weights=path, device="cpu"
        ).weights
    assert manifest["source"] == "user"
    assert manifest["file"] == name
    assert {k: v for k, v in manifest.items() if k in ("state_dict_key", "stripped_prefix")} == read
    assert manifest["kept_as_saved"] == {"features.1.num_batches_tracked": "int64"}
    assert manifest["source_dtypes"] == {"float32": 12, "int64": 1}
    assert "ignored_keys" not in manifest
    _assert_matches_eager(out / "convgru", user_models.conv)


def test_encoder_of_an_autoencoder_checkpoint(user_models: UserModels, tmp_path: Path) -> None:
    state = user_models.autoencoder.state_dict()
    path = tmp_path / "autoencoder.pt"
    torch.save(state, path)
    decoder_keys = sorted(k for k in state if k.startswith("decoder."))
    assert len(decoder_keys) == 6
    target = f"{user_models.file}:Encoder"
    args = ["build", "--model", target, "--io", str(user_models.encoder_io), "--weights", str(path)]
    args += ["--out", str(tmp_path / "dist"), "--device", "cpu"]

    # Without the option: the keys to leave out are listed, and so is the option that leaves them out.
    refused = run_cli(*args)
    assert refused.exit_code == 1
    message = flat(refused.output)
    assert (
        f"The weights in {path} (prefix 'encoder.' stripped) do not fit the model: unexpected (6): "
        in message
    )
    assert "'decoder.out.weight' [6, 12]" in message
    assert message.endswith(
        "Every key the model 'Encoder' needs is in the file's state dict after stripping 'encoder.', with 6 "
        "keys it does not have left over: pass --ignore-unexpected-keys to load it (the keys left over are "
        "listed on the terminal and in the manifest)."
    )
    assert not (tmp_path / "dist").exists()

    built = run_cli(*args, "--ignore-unexpected-keys")
    assert built.exit_code == 0, built.output
    assert (
        "stripped prefix 'encoder.' from 4 keys; left out 6 unexpected keys (--ignore-unexpected-keys): "
        + ", ".join(repr(k) for k in decoder_keys)
        + "; "
    ) in flat(built.output)
    weights = json.loads((tmp_path / "dist" / "encoder" / "manifest.json").read_text())["weights"]
    assert weights["stripped_prefix"] == "encoder."
    assert weights["ignored_keys"] == decoder_keys
    assert weights["source_dtypes"] == {"float32": 4}
    _assert_matches_eager(tmp_path / "dist" / "encoder", user_models.autoencoder.encoder)  # type: ignore[arg-type]


def test_encoder_from_a_lightning_autoencoder_through_the_api(
    user_models: UserModels, tmp_path: Path
) -> None:
    path = tmp_path / "ae.ckpt"
    torch.save(_lightning(user_models.autoencoder.state_dict(), "model."), path)
    with pytest.raises(WeightsError, match=r"pass --ignore-unexpected-keys to load it"):
        rnnexport.build_model_artifact(
            user_models.module.Encoder(), io=ENCODER_IO, out=tmp_path / "dist", weights=path, device="cpu"
        )
    assert not (tmp_path / "dist").exists()
    manifest = rnnexport.build_model_artifact(
        user_models.module.Encoder(),
        io=ENCODER_IO,
        out=tmp_path / "dist",
        weights=path,
        device="cpu",
        ignore_unexpected_keys=True,
    )
    assert manifest.weights["state_dict_key"] == "state_dict"
    assert manifest.weights["stripped_prefix"] == "model.encoder."
    assert manifest.weights["ignored_keys"] == sorted(
        "model." + k for k in user_models.autoencoder.state_dict() if k.startswith("decoder.")
    )
    _assert_matches_eager(tmp_path / "dist" / "encoder", user_models.autoencoder.encoder)  # type: ignore[arg-type]


def test_missing_keys_stay_an_error_with_ignore_unexpected_keys(
    user_models: UserModels, tmp_path: Path
) -> None:
    path = tmp_path / "autoencoder.safetensors"
    save_file(user_models.autoencoder.state_dict(), str(path))
    result = run_cli(
        "build", "--model", f"{user_models.file}:EncoderWithHead", "--io", str(user_models.encoder_io),
        "--weights", str(path), "--ignore-unexpected-keys", "--out", str(tmp_path / "dist"),
    )  # fmt: skip
    assert result.exit_code == 1
    message = flat(result.output)
    assert "do not fit the model: missing (2): 'head.weight' [2, 12]; 'head.bias' [2]." in message
    assert "Check that the checkpoint was saved from this model class with the same --config" in message
    assert not (tmp_path / "dist").exists()


def test_options_that_do_not_fit_are_told_the_ones_that_do(user_models: UserModels, tmp_path: Path) -> None:
    dp = tmp_path / "dp.pt"
    torch.save(torch.nn.DataParallel(user_models.conv).state_dict(), dp)
    target = f"{user_models.file}:ConvGRU"
    common = ["--io", str(user_models.conv_io), "--out", str(tmp_path / "dist")]
    result = run_cli("build", "--model", target, "--weights", str(dp), "--strip-prefix", "", *common)
    assert result.exit_code == 1
    message = flat(result.output)
    assert "missing (13): 'features.0.weight' [10, 6, 3];" in message
    assert "; and 5 more. unexpected (13): 'module.features.0.weight' [10, 6, 3];" in message
    assert message.endswith(
        "Every key the model 'ConvGRU' needs is in the file's state dict after stripping 'module.': pass "
        "--strip-prefix 'module.' to load it."
    )
    two = tmp_path / "two.pt"
    other = user_models.module.ConvGRU(hidden=20)  # same key names, other shapes
    torch.save({"model_state_dict": user_models.conv.state_dict(), "teacher": other.state_dict()}, two)
    result = run_cli(
        "build", "--model", target, "--weights", str(two), "--state-dict-key", "teacher", *common
    )
    assert result.exit_code == 1
    assert flat(result.output).endswith(
        "Every key the model 'ConvGRU' needs is in entry 'model_state_dict' as they are: pass "
        "--state-dict-key 'model_state_dict' to load it."
    )
    # Detected, the shapes pick the entry that fits.
    assert read_checkpoint(two, module=user_models.module.ConvGRU()).entry == "model_state_dict"
    assert not (tmp_path / "dist").exists()


def test_integer_buffers_load_only_where_the_model_declares_them(
    user_models: UserModels, tmp_path: Path
) -> None:
    state = dict(user_models.conv.state_dict())
    fed = {**state, "gru.weight_ih_l0": state["gru.weight_ih_l0"].round().to(torch.int64)}
    path = tmp_path / "ints.safetensors"
    save_file(fed, str(path))
    module = user_models.module.ConvGRU()
    with pytest.raises(WeightsError) as info:
        load_user_weights(module, read_checkpoint(path, module=module))
    assert flat(str(info.value)).startswith(
        f"{path} holds non-floating weights: 'gru.weight_ih_l0' (int64, the model's is float32). Expected "
        "floating-point tensors"
    )
    floated = {**state, "features.1.num_batches_tracked": state["features.1.num_batches_tracked"].float()}
    save_file(floated, str(path))
    with pytest.raises(WeightsError) as info:
        load_user_weights(module, read_checkpoint(path, module=module))
    assert flat(str(info.value)).startswith(
        f"{path} holds buffers of another kind than the model declares: 'features.1.num_batches_tracked' "
        "(float32, the model's is int64)."
    )
    # As saved, the step count is loaded exactly.
    save_file(state, str(path))
    loaded = load_user_weights(module, read_checkpoint(path, module=module))
    assert loaded.kept_as_saved == {"features.1.num_batches_tracked": "int64"}
    assert int(module.state_dict()["features.1.num_batches_tracked"]) == 12
    assert torch.equal(module.state_dict()["features.1.running_var"], state["features.1.running_var"])


def test_two_equally_fitting_prefixes_are_refused(user_models: UserModels, tmp_path: Path) -> None:
    twin = user_models.module.Encoder(n_features=12)  # the decoder's LSTM shapes
    state = {"left." + k: v for k, v in twin.state_dict().items()}
    state |= {"right." + k: v.clone() for k, v in twin.state_dict().items()}
    path = tmp_path / "twins.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path, module=twin)
    assert flat(str(info.value)) == (
        f"The keys of {path} fit the model 'Encoder' equally well after stripping any of the prefixes "
        "'left.', 'right.'. Pass --strip-prefix with the one to strip (and --ignore-unexpected-keys to "
        "leave out the keys that then do not fit)."
    )
    chosen = load_user_weights(
        twin, read_checkpoint(path, module=twin, strip_prefix="right."), ignore_unexpected=True
    )
    assert chosen.ignored_keys == tuple(sorted("left." + k for k in twin.state_dict()))
