"""I/O descriptions (``io.json``) and ``--model``: strict parsing, clear refusals, nothing on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnexport.builder.iospec import parse_io
from rnnexport.errors import InputError, UsageError
from rnnexport.feeds import make_feeds, validate_feeds

from ..helpers import REPO, flat, rehash, run_cli

ZOO_FILE = REPO / "tests" / "zoo" / "models.py"
GOOD: dict[str, Any] = {
    "inputs": [
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 1000]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
    ],
    "outputs": [{"name": "logits", "shape": ["batch", "seq", 9]}],
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


def test_the_issue_example_parses() -> None:
    contract = parse_io(GOOD, origin="test")
    assert contract.input_names == ["tokens", "lengths"]
    assert contract.lengths_input is not None
    assert contract.lengths_input.name == "lengths"
    assert contract.inputs[0].range == (0, 1000)
    assert contract.outputs[0].dtype == "float32"  # the default for outputs
    assert contract.outputs[0].shape == ("batch", "seq", 9)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("inputs", 0, "dtype"), "float16", "unknown dtype 'float16'"),
        (("inputs", 0, "dtype"), KeyError, 'has no "dtype"'),
        (("inputs", 0, "shape"), KeyError, 'has no "shape"'),
        (("inputs", 0, "name"), KeyError, "has name None"),
        (("inputs", 0, "shape"), ["batch", 2.5], "neither a positive integer nor an axis name"),
        (("inputs", 0, "shape"), ["batch", 0], "neither a positive integer nor an axis name"),
        (("inputs", 0, "shape"), ["batch", "no spaces"], "neither a positive integer nor an axis name"),
        (("inputs", 0, "range"), [5, 1], "has range [5, 1]"),
        (("inputs", 1, "role"), "mask", "unknown role 'mask'"),
        (("inputs", 1, "shape"), ["batch", "seq"], "lengths role"),
        (("inputs", 0, "dtype"), "int32", "int32 without the lengths role"),
        (("inputs", 0, "colour"), "red", "unknown key(s) 'colour'"),
        (("outputs",), [], '"outputs" is []'),
        (("outputs", 0, "name"), "tokens", "appear more than once"),
    ],
)
def test_bad_descriptions_name_the_problem(path: tuple[Any, ...], value: Any, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_io(_with(path, value), origin="io.json")
    assert expected in str(info.value)
    assert "io.json" in str(info.value)


def test_roles_not_names_drive_generation_and_validation() -> None:
    data = _with(("inputs", 1, "name"), "valid_steps")
    contract = parse_io(data, origin="test")
    feeds = make_feeds(contract, batch=6, seq=9, rng=np.random.default_rng(0))
    steps = feeds["valid_steps"]
    assert steps.dtype == np.int64
    assert steps.max() == 9
    assert steps.min() == 1
    assert ((feeds["tokens"] >= 0) & (feeds["tokens"] < 1000)).all()
    validate_feeds(contract, feeds, origin="generated")
    bad = dict(feeds, valid_steps=np.array([9, 0, 1, 1, 1, 1]))
    with pytest.raises(InputError, match=r"'valid_steps'.*row 1 has 0"):
        validate_feeds(contract, bad, origin="test")
    with pytest.raises(InputError, match=r"values in \[0, 1000\)"):
        validate_feeds(contract, dict(feeds, tokens=feeds["tokens"] + 1000), origin="test")


def test_int32_lengths_are_generated_as_int32() -> None:
    contract = parse_io(_with(("inputs", 1, "dtype"), "int32"), origin="test")
    feeds = make_feeds(contract, batch=3, seq=4, rng=np.random.default_rng(0))
    assert feeds["lengths"].dtype == np.int32


def _build(tmp_path: Path, target: str, io: Any, *extra: str) -> tuple[int, str]:
    io_path = tmp_path / "io.json"
    io_path.write_text(io if isinstance(io, str) else json.dumps(io))
    out = tmp_path / "out"
    args = ["build", "--model", target, "--io", str(io_path), "--out", str(out), "--device", "cpu", *extra]
    result = run_cli(*args)
    assert not out.exists(), "a refused build must leave nothing on disk"
    return result.exit_code, flat(result.output)


TAGGER_IO = {
    "inputs": [
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 1000]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
    ],
    "outputs": [{"name": "logits", "shape": ["batch", "seq", 9]}],
}


@pytest.mark.parametrize(
    ("target", "io", "expected"),
    [
        ("tests/zoo/nowhere.py:Tagger", TAGGER_IO, "no such file"),
        (f"{ZOO_FILE}:Tager", TAGGER_IO, "has no class or function 'Tager'"),
        ("tests.zoo.absent:Tagger", TAGGER_IO, "cannot import module 'tests.zoo.absent'"),
        ("Tagger", TAGGER_IO, "is not FILE.py:NAME or package.module:NAME"),
        (f"{ZOO_FILE}:Tagger", "{not json", "is not valid JSON"),
        (f"{ZOO_FILE}:Tagger", _with(("inputs", 0, "dtype"), "float64"), "unknown dtype 'float64'"),
        (
            f"{ZOO_FILE}:Tagger",
            _with(("inputs", 0, "name"), "ids"),
            "do not match Tagger.forward: it takes (tokens, lengths)",
        ),
        (
            f"{ZOO_FILE}:Tagger",
            _with(("outputs", 0, "shape"), ["batch", "seq", 10]),
            "output 'logits' has shape",
        ),
        (
            f"{ZOO_FILE}:Tagger",
            _with(("inputs", 0, "range"), [0, 5000]),
            "raised IndexError at tests/zoo/models.py:",
        ),
    ],
)
def test_bad_model_or_description_is_a_usage_error(
    tmp_path: Path, target: str, io: Any, expected: str
) -> None:
    code, output = _build(tmp_path, target, io)
    assert code == 2, output
    assert expected in output


def test_extra_output_is_reported(tmp_path: Path) -> None:
    io = json.loads(json.dumps(TAGGER_IO))
    io["outputs"].append({"name": "h_n", "shape": [4, "batch", 64]})
    code, output = _build(tmp_path, f"{ZOO_FILE}:Tagger", io)
    assert code == 2
    assert "returned 1 value(s) [[" in output
    assert "declares 2 output(s)" in output


def test_model_options_do_not_mix_with_arch(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "attention", "--model", f"{ZOO_FILE}:Tagger")
    assert result.exit_code == 2
    assert "goes with --io" in " ".join(result.output.split())
    bad_config = tmp_path / "kwargs.json"
    bad_config.write_text(json.dumps({"hidden": 3}))
    code, output = _build(tmp_path, f"{ZOO_FILE}:Tagger", TAGGER_IO, "--config", str(bad_config))
    assert code == 2
    assert "Calling Tagger(**config)" in output


# -- integer ranges bind valid steps; padding is free --------------------------------------------------

PADDED_IO: dict[str, Any] = {
    "inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [1, 50]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
    ],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
}
# Padded with 0 (the Embedding's padding_idx), outside the declared range [1, 50).
PADDED_IDS = np.array([[5, 7, 9, 11, 13], [3, 4, 0, 0, 0], [8, 0, 0, 0, 0]], dtype=np.int64)
PADDED_LENGTHS = np.array([5, 2, 1], dtype=np.int64)
PADDED_MODEL = """
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class PaddedTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 8, padding_idx=0)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(input_ids)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.gru(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=input_ids.shape[1])
        return self.out(y)
"""


def test_a_range_binds_valid_steps_and_leaves_padding_free() -> None:
    contract = parse_io(PADDED_IO, origin="test")
    validate_feeds(contract, {"input_ids": PADDED_IDS, "lengths": PADDED_LENGTHS}, origin="padded")
    # Padding may hold anything, even values no Embedding could take.
    wild = np.where(PADDED_IDS == 0, -7, PADDED_IDS)
    validate_feeds(contract, {"input_ids": wild, "lengths": PADDED_LENGTHS}, origin="wild padding")
    bad = PADDED_IDS.copy()
    bad[1, 1] = 0  # row 1 has 2 valid steps: step 1 is one of them
    with pytest.raises(InputError) as info:
        validate_feeds(contract, {"input_ids": bad, "lengths": PADDED_LENGTHS}, origin="bad.npz")
    message = str(info.value)
    assert "Input 'input_ids' in bad.npz must hold values in [1, 50) at its valid steps" in message
    assert "1 value(s) lie outside (for example 0 at row 1, step 1)" in message
    assert "this one is a valid step" in message
    bad[0, 4] = 50  # row 0 is full length: its last step is valid too
    with pytest.raises(InputError, match=r"2 value\(s\) lie outside"):
        validate_feeds(contract, {"input_ids": bad, "lengths": PADDED_LENGTHS}, origin="bad.npz")


def test_padding_is_found_where_the_contract_puts_batch_and_seq() -> None:
    io = {
        "inputs": [
            {"name": "ids", "dtype": "int64", "shape": ["seq", "batch", 2], "range": [1, 9]},
            {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
        ],
        "outputs": [{"name": "y", "shape": ["seq", "batch", 3]}],
    }
    contract = parse_io(io, origin="test")
    lengths = np.array([3, 1], dtype=np.int64)
    ids = np.ones((3, 2, 2), dtype=np.int64)
    ids[1:, 1, :] = 0  # row 1's steps 1 and 2 are padding (time-major: [seq, batch, 2])
    validate_feeds(contract, {"ids": ids, "lengths": lengths}, origin="time-major")
    ids[2, 0, 1] = 0  # row 0's step 2 is valid
    with pytest.raises(InputError, match=r"for example 0 at row 0, step 2\)"):
        validate_feeds(contract, {"ids": ids, "lengths": lengths}, origin="time-major")


def test_without_a_lengths_input_every_value_is_a_valid_step() -> None:
    io = {
        "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "range": [1, 9]}],
        "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
    }
    contract = parse_io(io, origin="test")
    ids = np.ones((2, 4), dtype=np.int64)
    ids[1, 3] = 0
    with pytest.raises(InputError) as info:
        validate_feeds(contract, {"ids": ids}, origin="plain")
    assert "for example 0 at index [1, 3])" in str(info.value)
    assert "padding" not in str(info.value)


def test_generated_padding_stays_inside_the_range() -> None:
    # The documented choice: padded steps of a ranged integer input are drawn from the range too.
    contract = parse_io(PADDED_IO, origin="test")
    for batch, seq in ((1, 1), (3, 7), (16, 64)):
        feeds = make_feeds(contract, batch=batch, seq=seq, rng=np.random.default_rng(batch))
        ids, lengths = feeds["input_ids"], feeds["lengths"]
        assert ((ids >= 1) & (ids < 50)).all()
        if batch >= 2:
            # Rows of length 1 and of the full length: there is padding to look at.
            assert lengths.min() == 1
            assert lengths.max() == seq
            padded = np.arange(seq)[None, :] >= lengths[:, None]
            assert padded.any()
        validate_feeds(contract, feeds, origin="generated")


def test_inputs_padded_with_zero_under_a_range_from_one_build_ship_and_verify(tmp_path: Path) -> None:
    from onnx import numpy_helper

    from rnnexport.artifact import verify_artifact
    from rnnexport.errors import ArtifactError

    (tmp_path / "models.py").write_text(PADDED_MODEL)
    (tmp_path / "io.json").write_text(json.dumps(PADDED_IO))
    np.savez(tmp_path / "padded.npz", input_ids=PADDED_IDS, lengths=PADDED_LENGTHS)
    bad = PADDED_IDS.copy()
    bad[1, 1] = 0
    np.savez(tmp_path / "bad.npz", input_ids=bad, lengths=PADDED_LENGTHS)
    out = tmp_path / "out"
    common = ["--io", str(tmp_path / "io.json"), "--out", str(out), "--device", "cpu"]
    model = f"{tmp_path / 'models.py'}:PaddedTagger"

    refused = run_cli("build", "--model", model, *common, "--inputs", str(tmp_path / "bad.npz"))
    assert refused.exit_code == 2, refused.output
    assert "for example 0 at row 1, step 1" in " ".join(refused.output.split())
    assert not out.exists()

    built = run_cli("build", "--model", model, *common, "--inputs", str(tmp_path / "padded.npz"))
    assert built.exit_code == 0, built.output
    folder = out / "paddedtagger"
    manifest = json.loads((folder / "manifest.json").read_text())
    [user] = [e["dir"] for e in manifest["test_data"] if e["case"] == "user:padded.npz"]
    shipped = numpy_helper.to_array(_tensor_at(folder / user / "input_0.pb"))
    np.testing.assert_array_equal(shipped, PADDED_IDS)  # the zeros travel as given
    assert verify_artifact(folder, device="cpu").passed  # and the target re-checks them by the same rule

    # The target refuses a shipped valid step out of range, as the build did.
    tensor = _tensor_at(folder / user / "input_0.pb")
    tensor.CopyFrom(numpy_helper.from_array(bad, name="input_ids"))
    (folder / user / "input_0.pb").write_bytes(tensor.SerializeToString())
    rehash(folder)
    with pytest.raises(ArtifactError, match=r"for example 0 at row 1, step 1"):
        verify_artifact(folder, device="cpu")


def _tensor_at(path: Path) -> Any:
    from onnx import TensorProto

    tensor = TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return tensor
