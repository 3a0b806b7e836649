"""`rnnexport list` and the CLI's error reporting."""

from __future__ import annotations

import json

from ..helpers import ARCH_NAMES, run_cli


def test_list_shows_every_architecture_with_contract() -> None:
    result = run_cli("list", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ARCH_NAMES:
        assert name in result.output
    assert "x: float32[batch, seq, 10]" in result.output
    assert "lengths: int64[batch]" in result.output
    assert "y: float32[batch, 5]" in result.output
    assert "note: returns the padded length with zeros" in result.output


def test_list_json() -> None:
    result = run_cli("list", "--json")
    assert result.exit_code == 0
    data = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert list(data) == ARCH_NAMES
    assert data["attention"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
    ]
    assert "not over time" in data["parallel-lstm-attention"]["notes"][0]
    assert data["parallel-gru"]["outputs"] == [
        {"name": "y", "dtype": "float32", "shape": ["batch", "seq", 20]}
    ]


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("rnnexport ")
