"""What the console tables say, whatever the width: every column and value, the axes the cases
covered, and the verdict in words.

Widths are forced (a Rich console of a given width, terminal or not, or ``COLUMNS``), never read from
the terminal the tests run in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from onnx import TensorProto
from rich.console import Console
from rich.table import Table
from typer.testing import Result

from rnnexport.builder.pipeline import build
from rnnexport.cli import console as cli_console

from ..helpers import run_cli

# The sweep every build verifies (the README's "What verified means"): batch 1, 3, 16 x seq 1, 7,
# 64, 257, plus batch 3 x seq 1000. A user model has no golden cases, so these are its shapes.
SWEEP_BATCHES = (1, 3, 16)
SWEEP_SEQS = (1, 7, 64, 257, 1000)

MEL_IO = {
    "inputs": [{"name": "mel", "dtype": "float32", "shape": ["batch", 1, "seq", 40]}],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
}
MEL_MODEL = """
import torch
from torch import nn


class MelTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(40, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(mel.squeeze(1))
        return self.out(y)
"""


def _use(monkeypatch: pytest.MonkeyPatch, *, width: int, terminal: bool) -> io.StringIO:
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=terminal,
        color_system=None,
        highlight=False,
        soft_wrap=True,
    )
    assert console.is_terminal is terminal
    monkeypatch.setattr(cli_console, "err", console)
    return out


# -- the summary's axes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mel_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    work = tmp_path_factory.mktemp("mel")
    (work / "models.py").write_text(MEL_MODEL)
    (work / "io.json").write_text(json.dumps(MEL_IO))
    result = run_cli(
        "build",
        "--model",
        f"{work / 'models.py'}:MelTagger",
        "--io",
        str(work / "io.json"),
        "--out",
        str(work / "dist"),
        "--device",
        "cpu",
        "--json",
    )
    assert result.exit_code == 0, result.output
    return work / "dist" / "meltagger", result


def test_build_summary_reports_seq_where_it_sits(mel_build: tuple[Path, Result]) -> None:
    _, result = mel_build
    want = f"batch {min(SWEEP_BATCHES)}-{max(SWEEP_BATCHES)}, seq {min(SWEEP_SEQS)}-{max(SWEEP_SEQS)}"
    assert want in result.stderr
    assert "seq 1-1 " not in result.stderr
    [summary] = json.loads(result.stdout)["artifacts"]
    assert summary["providers"]["CPUExecutionProvider"]["axes"] == {
        "batch": [min(SWEEP_BATCHES), max(SWEEP_BATCHES)],
        "seq": [min(SWEEP_SEQS), max(SWEEP_SEQS)],
    }


def test_verify_reports_the_shipped_test_data_axes(mel_build: tuple[Path, Result]) -> None:
    folder, _ = mel_build
    # What the shipped test data holds, read from the files themselves: mel is [batch, 1, seq, 40].
    dims = []
    for path in sorted(folder.glob("test_data_set_*/input_0.pb")):
        tensor = TensorProto()
        tensor.ParseFromString(path.read_bytes())
        dims.append(list(tensor.dims))
    assert dims
    assert all(d[1] == 1 and d[3] == 40 for d in dims)
    batch = [min(d[0] for d in dims), max(d[0] for d in dims)]
    seq = [min(d[2] for d in dims), max(d[2] for d in dims)]
    assert seq[1] > 1  # the sweep reached beyond the fixed axis 1
    result = run_cli("verify", str(folder), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert f"batch {batch[0]}-{batch[1]}, seq {seq[0]}-{seq[1]}" in result.stderr
    data = json.loads(result.stdout)
    assert data["providers"]["CPUExecutionProvider"]["axes"] == {"batch": batch, "seq": seq}


# -- tables piped, and on narrow terminals ----------------------------------------------------------

VARIANTS = [
    {
        "file": "model.onnx",
        "status": "passed",
        "bytes": 12979,
        "errors": {"artifact_vs_float64": {"max": 6.43e-08, "p99": 3.08e-08}, "err_allowed": 0.004},
        "runs_on": {
            "CPU": {"status": "checked", "taken": 13, "nodes": 13},
            "CoreML": {"status": "checked", "taken": 3, "nodes": 13},
        },
    },
    {
        "file": "model.int8.onnx",
        "status": "failed",
        "shipped": False,
        "bytes": 6489,
        "errors": {"artifact_vs_float64": {"max": 4.13e-03, "p99": 2.42e-03}, "err_allowed": 1.5},
        "runs_on": {"CPU": {"status": "checked", "taken": 16, "nodes": 16}},
    },
]
# Every cell of VARIANTS as the table writes it, by row.
VARIANT_CELLS = [
    ["model.onnx", "passed", "12979", "6.43e-08", "3.08e-08", "0.004", "CPU 13/13, CoreML 3/13"],
    ["model.int8.onnx", "failed (not shipped)", "6489", "4.13e-03", "2.42e-03", "1.500", "CPU 16/16"],
]
VARIANT_HEADERS = ["file", "status", "bytes", "max err (f64)", "p99 err (f64)", "err/allowed", "runs on"]


@pytest.mark.parametrize("width", [20, 80, 200])
def test_piped_variants_table_has_every_column_and_whole_rows(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    out = _use(monkeypatch, width=width, terminal=False)
    cli_console.print_variants("variants", VARIANTS)
    lines = out.getvalue().splitlines()
    [header] = [line for line in lines if "file" in line and "status" in line]
    for column in VARIANT_HEADERS:
        assert column in header
    for cells in VARIANT_CELLS:
        [row] = [line for line in lines if f" {cells[0]} " in line]
        for cell in cells:
            assert cell in row, (cell, row)


@pytest.mark.parametrize("width", [20, 40])
def test_a_terminal_too_narrow_for_the_table_gets_every_value_as_a_line(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    out = _use(monkeypatch, width=width, terminal=True)
    cli_console.print_variants("variants", VARIANTS)
    text = out.getvalue()
    for cells in VARIANT_CELLS:
        for column, cell in zip(VARIANT_HEADERS, cells, strict=True):
            assert f"{column}: {cell}" in text


def test_a_wide_terminal_keeps_the_table() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system=None, highlight=False)
    table = Table(title="t")
    for column in ("a", "b"):
        table.add_column(column)
    table.add_row("one value", "another value")
    cli_console.print_table(table, console)
    [row] = [line for line in out.getvalue().splitlines() if "one value" in line]
    assert "another value" in row
    assert "\u2502" in row  # drawn as a table, not as lines


def test_list_piped_prints_full_rows_whatever_columns_says() -> None:
    for columns in ("20", "80"):
        result = run_cli("list", env={"COLUMNS": columns})
        assert result.exit_code == 0
        lines = result.output.splitlines()
        # One row's cells side by side on one line, every phrase whole.
        [row] = [line for line in lines if "many-to-many-masked " in line]
        assert "x: float32[batch, seq, 10]" in row
        assert "y: float32[batch, seq, 5]" in row
        assert "many-to-many LSTM over padded batches, packed; padded steps are zero" in row
        assert any(
            "note: returns the padded length with zeros, not max(lengths) steps" in line for line in lines
        )


@pytest.fixture(scope="module")
def with_variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variants")
    build("many-to-many", out=out, device="cpu", precisions="fp32,int8")
    return out / "many-to-many"


def test_verify_at_20_columns_on_a_terminal_keeps_status_and_says_the_verdict(
    with_variant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _use(monkeypatch, width=20, terminal=True)
    result = run_cli("verify", str(with_variant), "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = out.getvalue().splitlines()
    assert "  status: passed" in lines  # model.onnx on CPU, and the variant
    assert sum(line == "  status: passed" for line in lines) == 2
    assert any(line.startswith("  runs on: CPU ") for line in lines)
    [verdict] = [line for line in lines if line.startswith("passed: ")]
    assert "model.onnx and 1 variant(s) verified on CPU" in verdict


def test_verify_piped_at_20_columns_prints_whole_rows(
    with_variant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _use(monkeypatch, width=20, terminal=False)
    result = run_cli("verify", str(with_variant), "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = out.getvalue().splitlines()
    [cpu] = [line for line in lines if line.startswith("\u2502 CPU ")]
    assert "passed" in cpu
    assert "seq 1-1000" in cpu  # the shipped sets run from seq 1 to seq 1000 (README: the artifact)
    [variant] = [line for line in lines if " model.int8.onnx " in line]
    assert "passed" in variant
    assert "CPU " in variant.split("\u2502")[-2]  # the runs-on column, last, is there and filled
    assert any(line.startswith("passed: ") for line in lines)


def test_quiet_verify_prints_no_verdict_line(with_variant: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _use(monkeypatch, width=80, terminal=False)
    result = run_cli("verify", str(with_variant), "--device", "cpu", "-q")
    assert result.exit_code == 0
    assert out.getvalue() == ""
