"""Checkpoints as people save them: wrappers, prefixes, dtypes, structure, and header-first safetensors."""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import save_file
from typer.testing import Result

import rnnexport
from rnnexport.builder.eager import build_model
from rnnexport.builder.weights import (
    MAX_SAFETENSORS_HEADER,
    check_state_dict,
    fit_to_arch,
    load_state_dict,
    read_checkpoint,
)
from rnnexport.errors import UsageError, WeightsError
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig

from ..helpers import flat, run_cli

SPEC = get_arch("many-to-many")


def _state(arch: str = "many-to-many", seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(build_model(get_arch(arch), ArchConfig(), seed=seed).state_dict())


def _build(*args: str) -> Result:
    return run_cli("build", *args)


def _message(exc: pytest.ExceptionInfo[Exception]) -> str:
    return flat(str(exc.value))


# --- wrappers and prefixes ---------------------------------------------------------------------


def _adam_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A real optimizer state dict: per-parameter tensors keyed by number, and param groups."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values()]
    optimiser = torch.optim.Adam(params)
    sum(p.sum() for p in params).backward()  # type: ignore[union-attr]
    optimiser.step()
    return optimiser.state_dict()


WRAPPERS: dict[str, tuple[Callable[[dict[str, torch.Tensor]], object], list[str], dict[str, str]]] = {
    "data-parallel": (
        lambda sd: {"module." + k: v for k, v in sd.items()},
        ["stripped prefix 'module.' from every key"],
        {"stripped_prefix": "module."},
    ),
    "lightning": (
        lambda sd: {
            "state_dict": {"model." + k: v for k, v in sd.items()},
            "epoch": 3,
            "global_step": 120,
            "hyper_parameters": {"lr": 0.1},
        },
        [
            "used entry 'state_dict' of the checkpoint (ignored: 'epoch', 'global_step', 'hyper_parameters')",
            "stripped prefix 'model.' from every key",
        ],
        {"state_dict_key": "state_dict", "stripped_prefix": "model."},
    ),
    "training-loop": (
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": _adam_state(sd), "epoch": 7},
        ["used entry 'model_state_dict' of the checkpoint (ignored: 'epoch', 'optimizer_state_dict')"],
        {"state_dict_key": "model_state_dict"},
    ),
    "model-entry": (
        lambda sd: {"model": sd},
        ["used entry 'model' of the checkpoint"],
        {"state_dict_key": "model"},
    ),
    "lightning-around-ddp": (
        lambda sd: {"state_dict": {"model.module." + k: v for k, v in sd.items()}, "epoch": 1},
        [
            "used entry 'state_dict' of the checkpoint (ignored: 'epoch')",
            "stripped prefix 'model.module.' from every key",
        ],
        {"state_dict_key": "state_dict", "stripped_prefix": "model.module."},
    ),
}


@pytest.mark.parametrize("kind", list(WRAPPERS))
@pytest.mark.parametrize("arch", ["many-to-many", "parallel-lstm"])
def test_wrapped_and_prefixed_checkpoints_are_found_and_said(arch: str, kind: str, tmp_path: Path) -> None:
    wrap, notes, entry = WRAPPERS[kind]
    state = _state(arch)
    path = tmp_path / "checkpoint.pt"
    torch.save(wrap(state), path)
    checkpoint = read_checkpoint(path, get_arch(arch))
    assert checkpoint.notes == notes
    assert checkpoint.manifest_entry() == {
        "source_dtypes": {"float32": len(state)},
        "loaded_as": "float32",
        **entry,
    }
    loaded = checkpoint.load()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_lightning_checkpoint_builds_and_the_manifest_says_how_it_was_read(tmp_path: Path) -> None:
    state = _state("many-to-many", seed=3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v.half() for k, v in state.items()}, "epoch": 9}, path)
    out = tmp_path / "dist"
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "used entry 'state_dict' of the checkpoint (ignored: 'epoch')" in output
    assert "stripped prefix 'model.' from every key" in output
    assert "upcast 6 float16 tensors to float32 (exact)" in output
    weights = json.loads((out / "many-to-many" / "manifest.json").read_text())["weights"]
    assert weights["source"] == "user"
    assert weights["state_dict_key"] == "state_dict"
    assert weights["stripped_prefix"] == "model."
    assert weights["source_dtypes"] == {"float16": 6}
    assert weights["loaded_as"] == "float32"


def test_ambiguous_entries_are_refused_and_the_api_chooses(tmp_path: Path) -> None:
    model, ema = _state(seed=0), _state(seed=1)
    path = tmp_path / "two.pt"
    torch.save({"model": model, "ema": ema, "epoch": 2}, path)
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path, SPEC)
    assert _message(info) == (
        f"{path} holds several state dicts whose key names fit 'many-to-many': entries 'ema', 'model'. "
        "Expected one; pass --state-dict-key with the entry to export (for example --state-dict-key 'ema')."
    )
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "--state-dict-key" in result.output
    assert not (tmp_path / "o").exists()

    chosen = load_state_dict(path, SPEC, state_dict_key="ema")
    assert all(torch.equal(chosen[k], ema[k]) for k in ema)
    manifest = rnnexport.build(
        "many-to-many", out=tmp_path / "dist", weights=path, device="cpu", state_dict_key="ema"
    )
    assert manifest.weights["state_dict_key"] == "ema"
    assert "stripped_prefix" not in manifest.weights


def test_state_dict_key_that_does_not_apply(tmp_path: Path) -> None:
    state = _state()
    wrapped, flat_file, st = tmp_path / "w.pt", tmp_path / "flat.pt", tmp_path / "w.safetensors"
    torch.save({"model": state, "epoch": 2}, wrapped)
    torch.save(state, flat_file)
    save_file(state, str(st))
    with pytest.raises(UsageError) as info:
        read_checkpoint(wrapped, SPEC, state_dict_key="ema")
    assert _message(info) == (
        f"--state-dict-key 'ema' does not name a state dict in {wrapped}: it has no entry 'ema'. "
        "Entries that are state dicts: 'model'."
    )
    with pytest.raises(UsageError, match=r"its entry 'epoch' holds a int, not a mapping of names to tensors"):
        read_checkpoint(wrapped, SPEC, state_dict_key="epoch")
    with pytest.raises(UsageError, match=r"the file is itself a state dict"):
        read_checkpoint(flat_file, SPEC, state_dict_key="model")
    with pytest.raises(UsageError, match=r"a safetensors file is one flat mapping"):
        read_checkpoint(st, SPEC, state_dict_key="model")
    result = _build(
        "--arch",
        "many-to-many",
        "--weights",
        str(wrapped),
        "--state-dict-key",
        "ema",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2
    assert "Entries that are state dicts: 'model'" in flat(result.output)


def test_several_candidates_none_fitting(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"encoder": {"w.weight": torch.ones(2)}, "decoder": {"u.weight": torch.ones(2)}}, path)
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path, SPEC)
    assert _message(info) == (
        f"{path} holds several state dicts and none has the key names of 'many-to-many': entries "
        "'decoder', 'encoder'. Expected one; pass --state-dict-key with the entry to export (for example "
        "--state-dict-key 'decoder')."
    )


def test_no_state_dict_at_all(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1, "notes": {"a": 1}}, path)
    with pytest.raises(WeightsError) as info:
        load_state_dict(path, SPEC)
    assert _message(info).startswith(
        f"{path} is not a plain state_dict and holds none: entries 'epoch', 'lr', 'notes' are not tensors, "
        "and no entry is a mapping of names to tensors"
    )
    listed = tmp_path / "list.pt"
    torch.save(list(_state().values()), listed)
    with pytest.raises(WeightsError, match=r"holds a list, expected a state_dict"):
        load_state_dict(listed, SPEC)


def test_strip_prefix_option(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "ddp.safetensors"
    save_file({"module." + k: v for k, v in state.items()}, str(path))
    # Given explicitly, the same as detected.
    explicit = read_checkpoint(path, SPEC, strip_prefix="module.")
    assert explicit.notes == ["stripped prefix 'module.' from every key"]
    # '' switches detection off: the keys are then checked as they are.
    result = _build(
        "--arch", "many-to-many", "--weights", str(path), "--strip-prefix", "", "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 1
    assert "unexpected (6): 'module.fc.bias' [5];" in flat(result.output)
    assert "'module.lstm.weight_ih_l0' [80, 10]" in flat(result.output)
    # A prefix no key has is a usage error that shows what the keys look like.
    result = _build(
        "--arch",
        "many-to-many",
        "--weights",
        str(path),
        "--strip-prefix",
        "net.",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2
    assert flat(result.output).endswith(
        f"error: --strip-prefix 'net.' matches no key of {path}; its keys begin 'module.fc.bias', "
        "'module.fc.weight', 'module.lstm.bias_hh_l0'. Pass the prefix the keys carry (for example "
        "'module.' or 'model.'), or leave --strip-prefix out to detect it."
    )
    # Stripping that makes two keys one is refused, not resolved by chance.
    mixed = tmp_path / "mixed.pt"
    torch.save({**state, "module.fc.bias": state["fc.bias"]}, mixed)
    with pytest.raises(UsageError, match=r"stripping it from 'module.fc.bias' gives 'fc.bias'"):
        read_checkpoint(mixed, SPEC, strip_prefix="module.")
    assert not (tmp_path / "o").exists()


def test_prefixed_checkpoint_of_another_architecture_still_gets_the_arch_hint(tmp_path: Path) -> None:
    path = tmp_path / "gru.pt"
    torch.save({"module." + k: v for k, v in _state("parallel-gru").items()}, path)
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    output = flat(result.output)
    assert f"The weights in {path} (prefix 'module.' stripped) do not fit 'many-to-many'" in output
    assert "The keys look like weights of 'parallel-gru': try --arch parallel-gru." in output


def test_options_need_weights_and_an_architecture(tmp_path: Path) -> None:
    result = _build("--arch", "many-to-many", "--strip-prefix", "module.", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert flat(result.output).endswith(
        "error: --strip-prefix says how to read a checkpoint, but no --weights was given. Pass --weights "
        "FILE, or leave it out."
    )
    result = _build(
        "--arch", "many-to-many", "--state-dict-key", "m", "--ignore-unexpected-keys", "--out", str(tmp_path)
    )
    assert result.exit_code == 2
    assert flat(result.output).endswith(
        "error: --state-dict-key and --ignore-unexpected-keys say how to read a checkpoint, but no --weights "
        "was given. Pass --weights FILE, or leave them out."
    )
    result = _build("--all", "--state-dict-key", "model", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "--all builds every architecture at its defaults" in flat(result.output)


# --- dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "note"),
    [
        (torch.float16, "upcast 6 float16 tensors to float32 (exact)"),
        (torch.bfloat16, "upcast 6 bfloat16 tensors to float32 (exact)"),
        (torch.float64, "downcast 6 float64 tensors to float32 (rounded to float32 precision)"),
        (torch.float8_e4m3fn, "upcast 6 float8_e4m3fn tensors to float32 (exact)"),
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_other_float_dtypes_are_cast_and_said(
    dtype: torch.dtype, note: str, suffix: str, tmp_path: Path
) -> None:
    state = {k: v.to(dtype) for k, v in _state().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    checkpoint = read_checkpoint(path, SPEC)
    assert checkpoint.notes == [note]
    assert checkpoint.manifest_entry()["source_dtypes"] == {str(dtype).removeprefix("torch."): 6}
    loaded = checkpoint.load()
    assert all(v.dtype == torch.float32 and torch.equal(v, state[k].float()) for k, v in loaded.items())


def test_mixed_dtypes_are_counted(tmp_path: Path) -> None:
    state = _state()
    state["fc.weight"] = state["fc.weight"].half()
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path))
    checkpoint = read_checkpoint(path, SPEC)
    assert checkpoint.notes == ["upcast 1 float16 tensor to float32 (exact)"]
    assert checkpoint.source_dtypes == {"float16": 1, "float32": 5}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_float64_beyond_float32_range_is_named_after_the_cast(suffix: str, tmp_path: Path) -> None:
    state = {k: v.double() for k, v in _state().items()}
    state["fc.bias"][1] = 1e300  # finite in float64, inf in float32
    state["lstm.bias_hh_l0"][0] = float("nan")
    path = tmp_path / f"big{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert flat(result.output) == flat(
        f"building many-to-many error: {path} holds NaN or infinite values in ['lstm.bias_hh_l0']; and "
        "values beyond float32's range (+-3.4e+38), which become infinite when cast to float32, in "
        "['fc.bias']. Expected weights that are finite in float32; the model cannot be verified with "
        "them. Check the training run that produced this checkpoint."
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_floating_weights_are_refused_by_key(dtype: torch.dtype, suffix: str, tmp_path: Path) -> None:
    state = _state()
    state["fc.bias"] = state["fc.bias"].to(dtype)
    state["lstm.weight_hh_l0"] = state["lstm.weight_hh_l0"].to(dtype)
    path = tmp_path / f"int{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    name = str(dtype).removeprefix("torch.")
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    output = flat(result.output)
    assert (
        f"holds non-floating weights: 'fc.bias' ({name}, the model's is float32), 'lstm.weight_hh_l0' "
        f"({name}, the model's is float32). Expected "
        "floating-point tensors (float32; float16, bfloat16 and float64 are cast to float32). Casting "
        "integer, boolean or complex values would ship other weights than the ones trained: export the "
        "trained float weights of the model itself" in output
    )
    assert not (tmp_path / "o").exists()


def test_sparse_meta_and_quantized_tensors_get_one_message(tmp_path: Path) -> None:
    state = _state()
    state["fc.bias"] = state["fc.bias"].to_sparse()
    state["lstm.bias_ih_l0"] = torch.empty(80, device="meta")
    with pytest.warns(
        UserWarning, match="quantize"
    ):  # torch deprecates creating quantized tensors; loading them still works
        state["fc.weight"] = torch.quantize_per_tensor(state["fc.weight"], 0.1, 0, torch.qint8)
    with pytest.warns(UserWarning, match="Sparse CSR"):
        state["lstm.weight_hh_l0"] = state["lstm.weight_hh_l0"].to_sparse_csr()
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    output = flat(result.output)
    assert (
        f"error: {path} holds tensors that cannot be used as weights: 'fc.bias' is sparse (sparse_coo); "
        "'fc.weight' is quantized (qint8); 'lstm.bias_ih_l0' is on the meta device (a shape without data); "
        "'lstm.weight_hh_l0' is sparse (sparse_csr). Expected dense float tensors that hold their data."
        in output
    )
    assert ".to_dense()" in output
    assert ".dequantize()" in output
    assert not (tmp_path / "o").exists()


# --- structure: layers and directions ------------------------------------------------------------


def _rnn_keys(prefix: str, **lstm: Any) -> dict[str, torch.Tensor]:
    rnn = torch.nn.LSTM(10, 20, batch_first=True, **lstm)
    return {f"{prefix}.{k}": v for k, v in rnn.state_dict().items()}


@pytest.mark.parametrize(
    ("lstm", "fact"),
    [
        (
            {"num_layers": 2},
            "'lstm' has 2 layers (keys 'lstm.weight_ih_l1', 'lstm.weight_hh_l1', 'lstm.bias_ih_l1', "
            "'lstm.bias_hh_l1')",
        ),
        (
            {"bidirectional": True},
            "'lstm' is bidirectional (keys 'lstm.weight_ih_l0_reverse', 'lstm.weight_hh_l0_reverse', "
            "'lstm.bias_ih_l0_reverse', 'lstm.bias_hh_l0_reverse')",
        ),
        (
            {"num_layers": 3, "bidirectional": True},
            "'lstm' has 3 layers (keys 'lstm.weight_ih_l1', 'lstm.weight_hh_l1', 'lstm.bias_ih_l1', "
            "'lstm.bias_hh_l1', and 12 more) and is bidirectional (keys 'lstm.weight_ih_l0_reverse', "
            "'lstm.weight_hh_l0_reverse', 'lstm.bias_ih_l0_reverse', 'lstm.bias_hh_l0_reverse', and 8 more)",
        ),
        ({"proj_size": 5}, "'lstm' has output projections, proj_size > 0 (keys 'lstm.weight_hr_l0')"),
    ],
)
def test_deeper_or_bidirectional_rnn_says_so(lstm: dict[str, Any], fact: str, tmp_path: Path) -> None:
    state = _rnn_keys("lstm", **lstm)
    state["fc.weight"] = torch.zeros(5, 40 if lstm.get("bidirectional") else 20)
    state["fc.bias"] = torch.zeros(5)
    path = tmp_path / "deep.pt"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert flat(result.output) == flat(
        f"building many-to-many error: The weights in {path} (prefix 'module.' stripped) come from a "
        f"different kind of RNN than 'many-to-many' has: {fact}. 'many-to-many' is built from one-layer, "
        "unidirectional LSTMs (num_layers=1, bidirectional=False), so no size option makes these weights "
        "fit. Export a model trained with num_layers=1 and bidirectional=False."
    )
    assert "--hidden-size" not in result.output


def test_deeper_branches_of_a_parallel_architecture(tmp_path: Path) -> None:
    state = {k: v for i in range(3) for k, v in _rnn_keys(f"lstms.{i}", num_layers=2).items()}
    state["linear.weight"], state["linear.bias"] = torch.zeros(20, 60), torch.zeros(20)
    with pytest.raises(WeightsError) as info:
        check_state_dict(get_arch("parallel-lstm"), ArchConfig(), state, origin="b.pt")
    message = _message(info)
    assert message.startswith(
        "The weights in b.pt come from a different kind of RNN than 'parallel-lstm' has: 'lstms.0' has 2 "
        "layers (keys 'lstms.0.weight_ih_l1', "
    )
    assert "; 'lstms.2' has 2 layers" in message
    assert "'parallel-lstm' is built from one-layer, unidirectional LSTMs" in message


def test_shapes_that_disagree_with_the_sizes_read(tmp_path: Path) -> None:
    state = {k: tuple(v.shape) for k, v in _state().items()}
    state["fc.weight"] = (5, 21)
    with pytest.raises(WeightsError) as info:
        check_state_dict(SPEC, ArchConfig(), state, origin="x.pt")
    message = _message(info)
    assert "wrong shape (1): 'fc.weight': expected [5, 20], got [5, 21]." in message
    assert (
        "The key names fit 'many-to-many' and its sizes read off the checkpoint are input_size=10, "
        "hidden_size=20, output_size=5, but the shapes listed disagree with those sizes" in message
    )
    assert message.endswith("No size option makes it fit; save the trained model's state_dict again.")


# --- safetensors: the header first ---------------------------------------------------------------

_ITEMSIZE = {"F32": 4, "F16": 2, "I64": 8}


def _sparse_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A valid safetensors file whose data is a hole: the header, then ``truncate`` to the claimed size."""
    header, offset = {}, 0
    for name, (code, shape) in tensors.items():
        size = math.prod(shape) * _ITEMSIZE[code]
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + offset)
    return 8 + len(raw) + offset


def _forbid_reading_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read before the header was checked")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


def test_six_gib_checkpoint_with_a_wrong_shape_fails_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = {k: ("F32", list(v.shape)) for k, v in _state().items()}
    tensors["fc.weight"] = ("F32", [5, 322_122_548])  # 6 GiB of float32
    path = tmp_path / "huge.safetensors"
    assert _sparse_safetensors(path, tensors) > 6 * 2**30
    _forbid_reading_data(monkeypatch)

    start = time.perf_counter()
    checkpoint = read_checkpoint(path, SPEC)
    with pytest.raises(WeightsError, match=r"'fc.weight': expected \[5, 20\], got \[5, 322122548\]"):
        check_state_dict(SPEC, ArchConfig(), checkpoint.shapes, origin=str(path))
    assert time.perf_counter() - start < 5  # a header parse; reading 6 GiB would take far longer

    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "wrong shape (1): 'fc.weight': expected [5, 20], got [5, 322122548]" in flat(result.output)
    assert not (tmp_path / "o").exists()


def test_non_floating_dtype_is_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = {k: ("F32", list(v.shape)) for k, v in _state().items()}
    tensors["fc.bias"] = ("I64", [5])
    path = tmp_path / "int.safetensors"
    _sparse_safetensors(path, tensors)
    _forbid_reading_data(monkeypatch)
    with pytest.raises(WeightsError, match=r"holds non-floating weights: 'fc.bias' \(int64\)"):
        load_state_dict(path, SPEC)


def test_sparse_writer_makes_files_safetensors_reads(tmp_path: Path) -> None:
    """The hand-written header above is a real safetensors header: the same file with fitting shapes loads."""
    state = _state()
    path = tmp_path / "zeros.safetensors"
    _sparse_safetensors(path, {k: ("F16", list(v.shape)) for k, v in state.items()})
    loaded = load_state_dict(path, SPEC)
    assert all(v.dtype == torch.float32 and not v.any() for v in loaded.values())
    assert set(loaded) == set(state)


def _raw_safetensors(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


@pytest.mark.parametrize(
    ("header", "data", "length", "detail"),
    [
        (b"", b"", MAX_SAFETENSORS_HEADER + 1, f"claims {MAX_SAFETENSORS_HEADER + 1} bytes, more than the"),
        (b"{}", b"", 1000, "its header claims 1000 bytes, but only 2 follow the length"),
        (b"[1, 2]", b"", None, "its header is a JSON list, not an object"),
        (b"[" * 50_000 + b"]" * 50_000, b"", None, "its header is not valid JSON"),
        (b'{"\xff": 1}', b"", None, "its header is not valid JSON"),
        (
            b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            b"\0" * 4,
            None,
            "the key 'a' appears twice",
        ),
        (
            b'{"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}',
            b"\0",
            None,
            "'a' has the dtype code 'F4', which is none of",
        ),
        (
            b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
            b"\0" * 4,
            None,
            "'a' has the shape [-1], not a list of sizes",
        ),
        (
            b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}',
            b"\0" * 8,
            None,
            "'a' (float32 [4], 16 bytes) claims bytes 0-16 of a data section of 8",
        ),
        (b'{"__metadata__": {"format": "pt"}}', b"", None, "its header lists no tensors"),
        (b"{}", b"", None, "its header lists no tensors"),
    ],
    ids=[
        "header-too-big",
        "header-beyond-file",
        "not-an-object",
        "deeply-nested",
        "not-utf8",
        "duplicate-key",
        "unknown-dtype",
        "negative-dim",
        "data-beyond-file",
        "metadata-only",
        "empty",
    ],
)
def test_malformed_safetensors_headers(
    header: bytes, data: bytes, length: int | None, detail: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.safetensors"
    _raw_safetensors(path, header, data, length)
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path, SPEC)
    message = _message(info)
    assert message.startswith(f"Cannot read {path} as safetensors: ")
    assert detail in message
    assert "it looks truncated or corrupt" in message


def test_file_shorter_than_a_header_length(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match=r"it has 2 bytes, fewer than the 8 of a header length"):
        read_checkpoint(path, SPEC)


# --- what reaches the terminal ---------------------------------------------------------------------


def test_control_characters_in_keys_are_made_visible(tmp_path: Path) -> None:
    state = _state()
    state["\x1b[2J\x1b[H\x1b[32mALL CHECKS PASSED\x07"] = torch.zeros(1)
    path = tmp_path / "evil.safetensors"
    save_file(state, str(path))
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "\x1b" not in result.output
    assert "\x07" not in result.output
    assert r"unexpected (1): '\x1b[2J\x1b[H\x1b[32mALL CHECKS PASSED\x07' [1]" in flat(result.output)


def test_weights_path_too_long_for_the_file_system(tmp_path: Path) -> None:
    result = _build("--arch", "many-to-many", "--weights", str(tmp_path / ("w" * 300 + ".pt")))
    assert result.exit_code == 2
    assert "has a path component of 303 bytes; file systems allow at most 255 bytes" in flat(result.output)


def test_nan_in_a_narrow_float_is_named(tmp_path: Path) -> None:
    state = {k: v.to(torch.float8_e5m2) for k, v in _state().items()}
    state["fc.bias"] = torch.tensor([float("nan")] * 5).to(torch.float8_e5m2)
    path = tmp_path / "f8.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"holds NaN or infinite values in \['fc.bias'\]\. Expected"):
        load_state_dict(path, SPEC)


def test_truncated_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save(_state(), path)
    path.write_bytes(path.read_bytes()[:500])
    result = _build("--arch", "many-to-many", "--weights", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    output = flat(result.output)
    assert f"error: Cannot read {path} as a PyTorch state_dict: RuntimeError: " in output
    assert "it looks truncated or corrupt" in output
    assert not (tmp_path / "o").exists()


# --- keys the user leaves out, and objects weights_only refuses ----------------------------------


def test_architecture_checkpoint_with_extra_keys_loads_with_ignore_unexpected_keys(tmp_path: Path) -> None:
    state = _state(seed=4)
    path = tmp_path / "extra.pt"
    extra = {"module.loss.pos_weight": torch.ones(5), "module.ema.num_updates": torch.tensor(40)}
    torch.save({"module." + k: v for k, v in state.items()} | extra, path)
    out = tmp_path / "dist"
    args = ["build", "--arch", "many-to-many", "--weights", str(path), "--out", str(out), "--device", "cpu"]
    refused = run_cli(*args)
    assert refused.exit_code == 1
    assert flat(refused.output).endswith(
        f"error: The weights in {path} (prefix 'module.' stripped) do not fit 'many-to-many' with "
        "input_size=10, hidden_size=20, output_size=5. unexpected (2): 'loss.pos_weight' [5]; "
        "'ema.num_updates' []. Every key 'many-to-many' needs is in the file's state dict after stripping "
        "'module.', with 2 keys it does not have left over: pass --ignore-unexpected-keys to load it (the "
        "keys left over are listed on the terminal and in the manifest)."
    )
    assert not out.exists()

    built = run_cli(*args, "--ignore-unexpected-keys")
    assert built.exit_code == 0, built.output
    assert (
        "stripped prefix 'module.' from every key; left out 2 unexpected keys (--ignore-unexpected-keys): "
        "'module.ema.num_updates', 'module.loss.pos_weight'; "
    ) in flat(built.output)
    weights = json.loads((out / "many-to-many" / "manifest.json").read_text())["weights"]
    assert weights["ignored_keys"] == ["module.ema.num_updates", "module.loss.pos_weight"]
    assert weights["source_dtypes"] == {"float32": 6}  # what was loaded; the int64 extra was left out
    model = build_model(SPEC, ArchConfig(), state_dict=state)
    session = ort.InferenceSession(
        str(out / "many-to-many" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(3, 17, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=1e-4)
    manifest = rnnexport.build(
        "many-to-many", out=tmp_path / "api", weights=path, device="cpu", ignore_unexpected_keys=True
    )
    assert manifest.weights["ignored_keys"] == weights["ignored_keys"]


def test_arch_weights_fed_an_integer_are_refused_by_the_models_dtype(tmp_path: Path) -> None:
    state = _state()
    state["fc.bias"] = torch.arange(5)
    path = tmp_path / "ints.pt"
    torch.save(state, path)
    checkpoint = read_checkpoint(path, SPEC)
    fitted = fit_to_arch(checkpoint, SPEC, ArchConfig())
    assert fitted.model_dtypes["fc.bias"] == "float32"
    with pytest.raises(
        WeightsError, match=r"holds non-floating weights: 'fc.bias' \(int64, the model's is float32\)"
    ):
        fitted.load()


LIGHTNING_OBJECTS: dict[str, tuple[object, str]] = {
    "namespace": (argparse.Namespace(lr=0.1, layers=2), "argparse.Namespace"),
    "path": (Path("/runs/last"), "pathlib."),
    "numpy-scalar": (np.float64(0.25), "numpy."),
}


@pytest.mark.parametrize("kind", list(LIGHTNING_OBJECTS))
def test_training_checkpoint_with_objects_weights_only_refuses_says_so(kind: str, tmp_path: Path) -> None:
    value, name = LIGHTNING_OBJECTS[kind]
    path = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {"model." + k: v for k, v in _state().items()}, "hyper_parameters": value}, path
    )
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path, SPEC)
    message = _message(info)
    assert message.startswith(
        f"Refused to load {path}: expected a state_dict of tensors, but the file asks to import {name}"
    )
    assert (
        "which torch.load(weights_only=True) does not allow: unpickling such an object could run code"
        in message
    )
    assert (
        "If you trust the file, take the weights out of it in Python, e.g. "
        "torch.save(torch.load('last.ckpt', weights_only=False)['state_dict'], 'model.pt') with the entry "
        "that holds them. Nothing in it was executed."
    ) in message
