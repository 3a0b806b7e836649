"""Shared fixtures: the registry drives parametrisation, so a new architecture is tested everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from rnnexport.cli import app
from rnnexport.registry import list_architectures

REPO = Path(__file__).resolve().parent.parent
ARCH_NAMES = [spec.name for spec in list_architectures()]
MASKED = [spec.name for spec in list_architectures() if spec.masked]
PER_STEP = [spec.name for spec in list_architectures() if spec.per_step]


def run_cli(*args: str) -> Result:
    """``rnnexport ARGS`` in process; whatever it exits with, it must not end in a traceback."""
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def flat(text: str) -> str:
    """``text`` on one line, runs of whitespace (a terminal's wrapping) as one space."""
    return " ".join(text.split())


def build_every_architecture(out: Path, device: str) -> Path:
    """Build all registered architectures into ``out`` (one artifact folder each) and return ``out``."""
    from rnnexport.pipeline import build

    for name in ARCH_NAMES:
        build(name, out=out, device=device)
    return out


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@dataclass(frozen=True)
class DynamoProbe:
    """What the dynamo exporter yields for an architecture on the torch installed here.

    Which graphs torch's dynamo exporter can make, and whether it keeps RNN sequence axes dynamic,
    changes between torch releases (on 2.13 it fixes an LSTM's sequence axis at the example length; on
    2.15 it keeps it). Tests of the dynamo path measure it with :func:`probe_dynamo_export` and assert
    what rnnexport must do with whatever came out, instead of assuming one release's behaviour.
    """

    error: str | None  # the export failed with this message, or None: it made a graph
    frozen: tuple[str, ...]  # the contract's dynamic axes the graph declares as fixed sizes

    @property
    def keeps_axes(self) -> bool:
        """The export made a graph whose declared dynamic axes are all still dynamic."""
        return self.error is None and not self.frozen


# Run in a fresh interpreter: a second dynamo export in one process can behave differently from the
# first (on 2.13 it also fixes the input's axis), and a build run as a subprocess makes the first.
_PROBE = """
import json, sys
from rnnexport.export import export_onnx
from rnnexport.reference import build_model
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig

spec = get_arch(sys.argv[1])
contract = spec.contract(ArchConfig())
try:
    graph = export_onnx(build_model(spec, ArchConfig(), seed=0), contract, exporter="dynamo").graph
except Exception as exc:
    print("PROBE " + json.dumps({"error": f"{type(exc).__name__}: {exc}", "frozen": []}))
    raise SystemExit(0)
frozen = []
sides = (("input", contract.inputs, graph.input), ("output", contract.outputs, graph.output))
for kind, specs, values in sides:
    shapes = {v.name: v.type.tensor_type.shape.dim for v in values}
    for tensor in specs:
        dims = shapes.get(tensor.name, [])
        for axis, symbol in tensor.dynamic_axes.items():
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                frozen.append(f"{kind} {tensor.name!r} axis {axis} ({symbol}) is {dims[axis].dim_value}")
print("PROBE " + json.dumps({"error": None, "frozen": frozen}))
"""


def probe_dynamo_export(arch: str) -> DynamoProbe:
    """Export ``arch`` (default sizes) with the dynamo exporter in a fresh interpreter and report the
    result. The dims are read from the graph with onnx, not with the contract check under test."""
    command = [sys.executable, "-c", _PROBE, arch]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0, result.stderr
    assert lines, result.stdout
    data = json.loads(lines[-1].removeprefix("PROBE "))
    return DynamoProbe(error=data["error"], frozen=tuple(data["frozen"]))
