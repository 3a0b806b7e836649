"""I/O descriptions (``io.json``) and ``--model``: strict parsing, clear refusals, nothing on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from rnnexport.cli import app
from rnnexport.errors import InputError, UsageError
from rnnexport.feeds import make_feeds, validate_feeds
from rnnexport.iospec import parse_io

from .conftest import REPO

cli = CliRunner()
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
    result = cli.invoke(app, args)
    assert not out.exists(), "a refused build must leave nothing on disk"
    return result.exit_code, " ".join(result.output.split())


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
    result = cli.invoke(app, ["build", "--arch", "attention", "--model", f"{ZOO_FILE}:Tagger"])
    assert result.exit_code == 2
    assert "goes with --io" in " ".join(result.output.split())
    bad_config = tmp_path / "kwargs.json"
    bad_config.write_text(json.dumps({"hidden": 3}))
    code, output = _build(tmp_path, f"{ZOO_FILE}:Tagger", TAGGER_IO, "--config", str(bad_config))
    assert code == 2
    assert "Calling Tagger(**config)" in output
