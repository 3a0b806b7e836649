"""BuildOptions: one value for a build's options, taken from the command line by name and checked
once; ``--verify-seqs`` chooses the sequence lengths the shape sweep verifies at."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import pytest
import torch

from rnnexport.artifact import Manifest
from rnnexport.builder import request as builder_request
from rnnexport.builder.options import SWEEP_SHAPES, BuildOptions
from rnnexport.builder.pipeline import build, build_model_artifact
from rnnexport.builder.request import estimate_resources
from rnnexport.errors import UsageError
from rnnexport.registry import get_arch

from ..helpers import run_cli


def _verified_seqs(manifest: Manifest) -> set[int]:
    """Every sequence length the CPU provider ran, read where the contract puts each input's seq."""
    cpu = manifest.verification["providers"]["CPUExecutionProvider"]
    seqs = set()
    for shapes in cpu["shapes"]:
        for spec in manifest.contract.inputs:
            if "seq" in spec.shape:
                seqs.add(shapes[spec.name][spec.shape.index("seq")])
    return seqs


def test_the_default_sweep_is_the_one_every_build_verified_before() -> None:
    assert BuildOptions().sweep_shapes == SWEEP_SHAPES
    assert {seq for _, seq in SWEEP_SHAPES} == {1, 7, 64, 257, 1000}


def test_verify_seqs_replaces_the_sweep_lengths_at_every_batch_size() -> None:
    assert BuildOptions(verify_seqs="33, 5").sweep_shapes == (
        (1, 5),
        (1, 33),
        (3, 5),
        (3, 33),
        (16, 5),
        (16, 33),
        (3, 1000),
    )
    assert BuildOptions(verify_seqs=[16000]).seqs == (16000,)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0,5", "whole numbers from 1 to"),
        ("5,x", "whole numbers from 1 to"),
        ("", "whole numbers from 1 to"),
        ("5,5", "distinct sequence lengths"),
        (",".join(str(n) for n in range(1, 18)), "at most 16 are verified"),
    ],
)
def test_bad_verify_seqs_are_refused_in_one_paragraph(value: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as raised:
        BuildOptions(verify_seqs=value).check()
    assert "\n" not in str(raised.value)


def test_the_memory_estimate_counts_the_lengths_verified() -> None:
    spec = get_arch("attention")
    default = estimate_resources(spec, spec.default_config)
    longer = estimate_resources(spec, spec.default_config, BuildOptions(verify_seqs="16000").sweep_shapes)
    assert longer.memory_bytes > default.memory_bytes


def test_from_params_takes_the_options_by_name_and_leaves_the_rest() -> None:
    class Choice(str, Enum):
        cpu = "cpu"

    options = BuildOptions.from_params(
        {"out": Path("x"), "device": Choice.cpu, "quiet": True, "arch": "gru", "atol": None, "opset": 14}
    )
    assert options == BuildOptions(out=Path("x"), device="cpu", opset=14)


def test_options_go_whole_or_as_keywords_not_both(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not both"):
        build("attention", BuildOptions(out=tmp_path), device="cpu")
    with pytest.raises(TypeError):
        build("attention", out=tmp_path, no_such_option=True)


def test_a_bad_verify_seqs_on_the_command_line_exits_2(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path), "--verify-seqs", "7,-1")
    assert result.exit_code == 2
    assert "--verify-seqs takes distinct sequence lengths" in result.output
    assert not (tmp_path / "attention").exists()


def test_a_build_verifies_at_the_lengths_verify_seqs_gives(tmp_path: Path) -> None:
    # Sizes other than the defaults: no committed golden cases, so the sweep is every case.
    result = run_cli(
        "build",
        *("--arch", "attention", "--hidden-size", "8", "--out", str(tmp_path), "--device", "cpu"),
        *("--verify-seqs", "5,33"),
    )
    assert result.exit_code == 0, result.output
    manifest = Manifest.from_json(json.loads((tmp_path / "attention" / "manifest.json").read_text()))
    assert _verified_seqs(manifest) == {5, 33, 1000}
    assert manifest.verification["providers"]["CPUExecutionProvider"]["cases"] == 3 * 2 + 1
    options = BuildOptions(out=tmp_path / "api", device="cpu", verify_seqs=[5, 33], config={"hidden_size": 8})
    api = build("attention", options)
    assert _verified_seqs(api) == {5, 33, 1000}
    assert json.dumps(api.verification["providers"]["CPUExecutionProvider"]["shapes"]) == json.dumps(
        manifest.verification["providers"]["CPUExecutionProvider"]["shapes"]
    )


class _Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.gru(x)[0]
        return y


def test_a_user_model_is_refused_lengths_it_cannot_hold_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]}],
        "outputs": [{"name": "y", "shape": ["batch", "seq", 8]}],
    }
    monkeypatch.setattr(builder_request, "available_memory", lambda: 1 << 30)
    options = BuildOptions(out=tmp_path, device="cpu", verify_seqs="7,1000000")
    with pytest.raises(UsageError) as raised:
        build_model_artifact(_Tagger(), io, options)
    # Batch 16 x seq 10**6 positions of 4 input and 8 output floats: 768e6 bytes, held 8 times over,
    # is 6.144e9 bytes, 5.72 GiB (the 336 weights add 8 kB).
    message = str(raised.value)
    assert "at batch 16, seq 1000000 needs at least 5.72 GiB" in message
    assert "Pass shorter --verify-seqs" in message
    assert list(tmp_path.iterdir()) == []
