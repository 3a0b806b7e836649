"""User code in user models: every place it runs reports its failures at the user's line, without a
traceback; sibling imports; the float64 reference of models that create their own tensors; outputs
returned as a dict, NamedTuple, dataclass or with None entries; a forgotten lengths role; and the
bounds of io.json.

The expected outputs are computed here with torch (the module's own forward), never by rnnexport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from rnnexport.builder.usermodel import load_factory

from ..helpers import REPO, flat, run_cli

# Shapes no build uses: the trace is batch 2 x seq 3, the sweep batch 1/3/16 x seq 1/7/64/257.
NEW_SHAPES = ((5, 11), (2, 40))

IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]}],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
}

# A small GRU tagger whose forward runs a snippet first: where a test injects its failure.
MODEL = """
import sys
import torch
from torch import nn

{top}

class Net(nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        {init}
        self.gru = nn.GRU(4, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 3)

    def forward(self, x):
        {forward}
        out, _ = self.gru(x)
        return self.fc(out)
"""


def _write(folder: Path, *, top: str = "", init: str = "pass", forward: str = "pass") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.py"
    path.write_text(MODEL.format(top=top, init=init, forward=forward))
    (folder / "io.json").write_text(json.dumps(IO))
    return path


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _build(path: Path, target: str, *extra: str, io: Path | None = None) -> tuple[int, str]:
    out = path.parent / "out"
    io = io or path.parent / "io.json"
    result = run_cli(
        "build", "--model", target, "--io", str(io), "--out", str(out), "--device", "cpu", *extra
    )
    if result.exit_code != 0:
        assert not out.exists() or not any(out.iterdir()), "a refused build leaves nothing behind"
    return result.exit_code, flat(result.output)


@pytest.mark.parametrize(
    ("where", "snippet", "line", "says"),
    [
        ("top", "raise RuntimeError('no data folder')", "raise RuntimeError", "Importing --model file"),
        ("top", "sys.exit(0)", "sys.exit(0)", "Importing --model file"),
        ("init", "raise ValueError('bad width')", "raise ValueError", "Calling Net(**config)"),
        ("init", "sys.exit(3)", "sys.exit(3)", "Calling Net(**config)"),
        ("forward", "raise KeyError('feature')", "raise KeyError", "Your model's forward (Net.forward)"),
        ("forward", "sys.exit(0)", "sys.exit(0)", "Your model's forward (Net.forward)"),
    ],
)
def test_user_code_failures_name_the_line(
    tmp_path: Path, where: str, snippet: str, line: str, says: str
) -> None:
    path = _write(tmp_path / "m", **{where: snippet})
    code, output = _build(path, f"{path}:Net")
    assert code == 2, output
    assert "Traceback" not in output
    assert says in output
    assert f"net.py:{_line_of(path, line)} (`{snippet}`)" in output
    if "sys.exit" in snippet:
        assert f"called sys.exit({snippet[9:-1]})" in output


def test_sys_exit_on_import_through_the_console_script(tmp_path: Path) -> None:
    """The real entry point (main()) used to exit 0 with nothing built and nothing said."""
    path = _write(tmp_path / "m", top="sys.exit(0)")
    script = "import sys; from rnnexport.cli import main; sys.argv[0] = 'rnnexport'; main()"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "build",
            "--model",
            f"{path}:Net",
            "--io",
            str(path.parent / "io.json"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"net.py:{_line_of(path, 'sys.exit(0)')}" in flat(result.stderr)
    assert not (tmp_path / "dist").exists()


# True only while an exporter traces forward: TorchScript's trace, or torch.export (dynamo).
_TRACED = "torch.jit.is_tracing() or torch.compiler.is_exporting()"


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo", "auto"])
def test_an_exit_only_while_traced_is_reported_at_its_line(tmp_path: Path, exporter: str) -> None:
    path = _write(tmp_path / "m", forward=f"if {_TRACED}: sys.exit(0)")
    code, output = _build(path, f"{path}:Net", "--exporter", exporter)
    assert code == 2, output
    assert "while it was traced for export" in output
    assert f"net.py:{_line_of(path, 'is_tracing')}" in output


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo", "auto"])
def test_an_error_only_while_traced_is_an_export_error_at_its_line(tmp_path: Path, exporter: str) -> None:
    path = _write(tmp_path / "m", forward=f"if {_TRACED}: raise RuntimeError('no trace')")
    code, output = _build(path, f"{path}:Net", "--exporter", exporter)
    assert code == 1, output
    assert "could not export" in output
    assert f"raised it at {path.parent.name}" in output or f"net.py:{_line_of(path, 'is_tracing')}" in output


def test_model_paths_that_are_not_files_say_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "io.json").write_text(json.dumps(IO))
    (tmp_path / "folder.py").mkdir()
    os.mkfifo(tmp_path / "pipe.py")
    for name, kind in (
        ("folder.py", "a folder"),
        ("pipe.py", "a FIFO (named pipe)"),
        ("none.py", "no such file"),
    ):
        code, output = _build(tmp_path / name, f"{tmp_path / name}:Net", io=tmp_path / "io.json")
        assert code == 2
        assert f"pipe.py: {kind}" in output or f"{name}: {kind}" in output


def test_a_sibling_import_and_a_tutorial_h0_build_with_the_float64_oracle(tmp_path: Path) -> None:
    """`from kws import KWSCRNN` beside the model file, and h0 made with torch.zeros in forward."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "kws.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class KWSCRNN(nn.Module):\n"
        "    def __init__(self, hidden=8, num_layers=2):\n"
        "        super().__init__()\n"
        "        self.hidden, self.num_layers = hidden, num_layers\n"
        "        self.lstm = nn.LSTM(4, hidden, num_layers, batch_first=True, bidirectional=True)\n"
        "        self.fc = nn.Linear(2 * hidden, 3)\n"
        "        self.scale = torch.tensor([0.5, 1.0, 2.0])\n\n"
        "    def forward(self, x):\n"
        "        h0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden, device=x.device)\n"
        "        c0 = torch.zeros(self.num_layers * 2, x.size(0), self.hidden, device=x.device)\n"
        "        out, _ = self.lstm(x, (h0, c0))\n"
        "        return self.fc(out) * self.scale\n"
    )
    (models / "train_entry.py").write_text("from kws import KWSCRNN\n")
    (tmp_path / "io.json").write_text(json.dumps(IO))
    before = list(sys.path)
    code, output = _build(
        models / "train_entry.py", f"{models / 'train_entry.py'}:KWSCRNN", io=tmp_path / "io.json"
    )
    assert code == 0, output
    assert sys.path == before, "the model's folder is on sys.path for its import only"
    manifest = json.loads((models / "out" / "kwscrnn" / "manifest.json").read_text())
    assert manifest["verification"]["float64_oracle"]["ran"] is True
    assert manifest["verification"]["rule"]["name"] == "oracle"
    assert (models / "out" / "kwscrnn" / "test_data_set_0" / "float64_output_0.pb").is_file()
    assert torch.get_default_dtype() == torch.float32


def test_sys_path_is_restored_and_siblings_stay_loaded(tmp_path: Path) -> None:
    (tmp_path / "helper_mod_h4.py").write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    (tmp_path / "entry.py").write_text("from helper_mod_h4 import Net\n")
    before = list(sys.path)
    factory, source = load_factory(f"{tmp_path / 'entry.py'}:Net")
    assert sys.path == before
    assert "helper_mod_h4" in sys.modules
    assert source.file == "entry.py"
    assert factory.__module__ == "helper_mod_h4"


def test_each_model_file_imports_its_own_sibling_of_a_shared_name(tmp_path: Path) -> None:
    """Two projects, each with its own `layers.py`: the second import must not reuse the first's."""
    factories = []
    for width in (3, 5):
        folder = tmp_path / f"project{width}"
        folder.mkdir()
        (folder / "layers.py").write_text(f"WIDTH = {width}\n")
        (folder / "model.py").write_text(
            "import torch\nfrom layers import WIDTH\n\n"
            "class Net(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.fc = torch.nn.Linear(2, WIDTH)\n"
        )
        factory, _ = load_factory(f"{folder / 'model.py'}:Net")
        factories.append(factory)
    assert [f().fc.out_features for f in factories] == [3, 5]


def test_a_model_that_cannot_run_in_float64_builds_under_the_float32_rule(tmp_path: Path) -> None:
    path = _write(tmp_path / "m", forward="x = x.float()  # float32-only code")
    code, output = _build(path, f"{path}:Net")
    assert code == 0, output
    assert "float64 oracle not run" in output
    manifest = json.loads((path.parent / "out" / "net" / "manifest.json").read_text())
    oracle = manifest["verification"]["float64_oracle"]
    assert oracle["ran"] is False
    assert f"net.py:{_line_of(path, 'self.gru(x)')}" in oracle["reason"]
    assert manifest["verification"]["rule"]["name"] == "tolerance"
    assert not (path.parent / "out" / "net" / "test_data_set_0" / "float64_output_0.pb").exists()
    assert run_cli("verify", str(path.parent / "out" / "net")).exit_code == 0


OUTPUTS = """
import dataclasses
from typing import NamedTuple

import torch
from torch import nn


class Out(NamedTuple):
    h_n: torch.Tensor
    logits: torch.Tensor


@dataclasses.dataclass
class Result:
    attention: torch.Tensor
    logits: torch.Tensor
    h_n: torch.Tensor


class Net(nn.Module):
    def __init__(self, form="dict"):
        super().__init__()
        self.form = form
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        out, h_n = self.gru(x)
        logits = self.fc(out)
        attention = torch.softmax(logits, dim=1)
        if self.form == "dict":
            return {"attention": attention, "h_n": h_n, "logits": logits}
        if self.form == "namedtuple":
            return Out(h_n, logits)
        if self.form == "dataclass":
            return Result(attention, logits, h_n)
        return (logits, None, (h_n, None))
"""

OUTPUTS_IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]}],
    "outputs": [
        {"name": "logits", "shape": ["batch", "seq", 3]},
        {"name": "h_n", "shape": [1, "batch", 6]},
    ],
}


@pytest.mark.parametrize(
    ("form", "returns", "dropped"),
    [
        ("dict", "a dict", ["attention"]),
        ("namedtuple", "a NamedTuple Out", []),
        ("dataclass", "a dataclass Result", ["attention"]),
        ("tuple", "a tuple", []),
    ],
)
def test_structured_outputs_export_the_declared_tensors(
    tmp_path: Path, form: str, returns: str, dropped: list[str]
) -> None:
    path = tmp_path / "outputs.py"
    path.write_text(OUTPUTS)
    (tmp_path / "io.json").write_text(json.dumps(OUTPUTS_IO))
    (tmp_path / "kwargs.json").write_text(json.dumps({"form": form}))
    factory, _ = load_factory(f"{path}:Net")
    torch.manual_seed(0)
    model = factory(form=form).eval()
    save_file(model.state_dict(), str(tmp_path / "net.safetensors"))
    code, output = _build(
        path,
        f"{path}:Net",
        "--config",
        str(tmp_path / "kwargs.json"),
        "--weights",
        str(tmp_path / "net.safetensors"),
    )
    assert code == 0, output
    assert f"forward returns {returns}" in output or form == "tuple"
    manifest = json.loads((tmp_path / "out" / "net" / "manifest.json").read_text())
    assert manifest["source"]["outputs"]["returns"] == returns
    assert manifest["source"]["outputs"]["dropped"] == dropped
    assert manifest["source"]["outputs"]["none_skipped"] == (2 if form == "tuple" else 0)
    if dropped:
        assert "not declared, so dropped from the export: attention" in output
    session = ort.InferenceSession(
        str(tmp_path / "out" / "net" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [o.name for o in session.get_outputs()] == ["logits", "h_n"]
    for batch, seq in NEW_SHAPES:
        x = np.random.default_rng(batch * 100 + seq).standard_normal((batch, seq, 4)).astype(np.float32)
        logits, h_n = session.run(None, {"x": x})
        with torch.no_grad():
            out, want_h_n = model.gru(torch.from_numpy(x))
            want_logits = model.fc(out)
        np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(h_n, want_h_n.numpy(), atol=1e-5, rtol=1e-4)


def test_a_dict_without_a_declared_key_lists_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "outputs.py"
    path.write_text(OUTPUTS)
    io = json.loads(json.dumps(OUTPUTS_IO))
    io["outputs"][1]["name"] = "hidden"
    (tmp_path / "io.json").write_text(json.dumps(io))
    code, output = _build(path, f"{path}:Net")
    assert code == 2, output
    assert "returns a dict with keys ['attention', 'h_n', 'logits']" in output
    assert "['hidden'] is not among them" in output


def test_a_forgotten_lengths_role_shows_the_line_to_add(tmp_path: Path) -> None:
    path = tmp_path / "packed.py"
    path.write_text(
        "import torch\nfrom torch import nn\nfrom torch.nn.utils.rnn import pack_padded_sequence\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.gru = nn.GRU(4, 6, batch_first=True)\n\n"
        "    def forward(self, x, counts):\n"
        "        packed = pack_padded_sequence(x, counts, batch_first=True, enforce_sorted=False)\n"
        "        _, h = self.gru(packed)\n"
        "        return h\n"
    )
    io = {
        "inputs": [
            {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]},
            {"name": "counts", "dtype": "int64", "shape": ["batch"]},
        ],
        "outputs": [{"name": "h", "shape": [1, "batch", 6]}],
    }
    (tmp_path / "io.json").write_text(json.dumps(io))
    code, output = _build(path, f"{path}:Net")
    assert code == 2, output
    assert "Traceback" not in output
    assert "it reaches pack_padded_sequence as the lengths" in output
    assert '{"name": "counts", "dtype": "int64", "shape": ["batch"], "role": "lengths"}' in output
    lines = (_line_of(path, "pack_padded_sequence(x"), _line_of(path, "self.gru(packed)"))
    assert any(f"packed.py:{n} (`" in output for n in lines), output


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10**12]},
            "over the limit of 2,147,483,647 (Limits.io_dim)",
        ),
        (
            {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 1000, 1000]},
            "1,000,000 elements per batch row and time step",
        ),
        (
            {"name": "x", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 2**64]},
            "within int64 [-9223372036854775808, 9223372036854775807]",
        ),
        ({"name": "x", "dtype": "float32", "shape": [1] * 17}, "has 17 axes, over the limit of 16"),
    ],
)
def test_io_values_are_bounded_before_anything_is_allocated(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    path = _write(tmp_path / "m")
    (path.parent / "io.json").write_text(json.dumps({"inputs": [entry], "outputs": IO["outputs"]}))
    code, output = _build(path, f"{path}:Net")
    assert code == 2, output
    assert "Traceback" not in output
    assert expected in output
