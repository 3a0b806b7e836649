"""Functions the tests share: running the CLI (in process, in a child, without torch), re-hashing an
edited artifact, and the few hostile edits more than one test file makes. Fixtures live in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner, Result

from rnnexport.artifact import MANIFEST
from rnnexport.cli import app
from rnnexport.registry import list_architectures

REPO = Path(__file__).resolve().parent.parent
ARCH_NAMES = [spec.name for spec in list_architectures()]
MASKED = [spec.name for spec in list_architectures() if spec.masked]
PER_STEP = [spec.name for spec in list_architectures() if spec.per_step]

# The real entry point, as the installed `rnnexport` script runs it, for a child interpreter.
ENTRY = "import sys\nfrom rnnexport.cli import main\nsys.argv = ['rnnexport', *sys.argv[1:]]\nmain()\n"
# Makes `import torch` raise ImportError everywhere in the interpreter that runs it first.
BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``rnnexport ARGS`` in process; whatever it exits with, it must not end in a traceback."""
    result = CliRunner().invoke(app, list(args), env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def flat(text: str) -> str:
    """``text`` on one line, runs of whitespace (a terminal's wrapping) as one space."""
    return " ".join(text.split())


def cli_in_child(
    *args: str, torch_free: bool = False, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``rnnexport ARGS`` through the real entry point in a child interpreter (optionally with torch
    blocked), for cases that could hang, need signals, or must not see this process's imports: a
    blocked open() shows as a timeout, not a hung suite."""
    code = (BLOCK_TORCH if torch_free else "") + ENTRY
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    """Python ``code`` in a child interpreter where ``import torch`` fails, as on a target machine."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, check=False
    )


def build_every_architecture(out: Path, device: str) -> Path:
    """Build all registered architectures into ``out`` (one artifact folder each) and return ``out``."""
    from rnnexport.builder.pipeline import build

    for name in ARCH_NAMES:
        build(name, out=out, device=device)
    return out


def copy_artifact(source: Path, to: Path) -> Path:
    """A private copy of the artifact folder ``source`` at ``to`` (for a test to tamper with)."""
    shutil.copytree(source, to)
    return to


def import_or_skip(name: str, *, reason: str) -> Any:
    """``pytest.importorskip``, except where RNNEXPORT_REQUIRE_EXTRAS is set (CI installs every extra
    there, so a missing one is a failure of the setup, not a reason to skip its tests)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("RNNEXPORT_REQUIRE_EXTRAS"):
            pytest.fail(f"RNNEXPORT_REQUIRE_EXTRAS is set, but {reason} ({exc})", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def rehash(folder: Path) -> None:
    """Make the manifest's hashes agree with the folder again, as an attacker who edits both would."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in manifest["files"]:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            manifest["files"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


def make_external(tensor: TensorProto, location: str) -> None:
    """Turn ``tensor`` into a reference to 64 bytes of the file ``location`` (its own data dropped)."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        tensor.external_data.add(key=key, value=value)


def _endless_model(like: onnx.ModelProto) -> onnx.ModelProto:
    """A kilobyte model with the artifact's inputs, outputs and metadata whose Loop runs 10^15 times."""
    trips = numpy_helper.from_array(np.array(10**15, np.int64), name="trips")
    keep = numpy_helper.from_array(np.array(True), name="keep")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Neg", ["v_in"], ["v_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    nodes = [
        helper.make_node("Loop", ["trips", "keep", "x"], ["looped"], body=body),
        helper.make_node("ReduceMean", ["looped"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Slice", ["pooled", "start", "stop", "axis"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array([0], np.int64), name="start"),
        numpy_helper.from_array(np.array([5], np.int64), name="stop"),
        numpy_helper.from_array(np.array([1], np.int64), name="axis"),
    ]
    graph = helper.make_graph(
        nodes, "endless", list(like.graph.input), list(like.graph.output), [trips, keep, *constants]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.extend(like.metadata_props)
    return model


def plant_endless_model(folder: Path) -> None:
    """Replace the artifact's model by a 1 kB one that never finishes (re-hashed: only time stops it)."""
    model = _endless_model(onnx.load_from_string((folder / "model.onnx").read_bytes()))
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    assert (folder / "model.onnx").stat().st_size < 2000
    rehash(folder)


def sigterm_while_the_model_runs(args: list[str], *, what: str) -> str:
    """Run ``rnnexport ARGS`` in a child, send it SIGTERM once its onnxruntime grandchild runs, and
    check that it ends as a build ends on SIGTERM (exit 143, the message, no traceback) and takes the
    grandchild with it; return its stderr. ``what`` names the command in the failure message."""
    process = subprocess.Popen([sys.executable, "-c", ENTRY, *args], stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 300
    while not children.read_text().split():  # wait until the child running onnxruntime exists
        assert process.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [child] = children.read_text().split()
    time.sleep(1)  # let it reach the endless call: a native call Python's signal handlers cannot enter
    process.terminate()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143  # 128 + SIGTERM
    assert "interrupted: SIGTERM stopped the run before it finished" in flat(stderr)
    assert "Traceback" not in stderr
    while running(child):  # the kernel ends it with its parent; wait (bounded) for that to happen
        assert time.monotonic() < deadline, f"the onnxruntime child outlived the interrupted {what}"
        time.sleep(0.05)
    return stderr


def running(pid: str) -> bool:
    """Whether process ``pid`` still exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def readme_example(marker: str) -> str:
    """The Python block of the README marked ``<!-- example: MARKER -->``."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- example: {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert found, f"README has no example marked {marker}"
    return found.group(1)


def matmul_model(
    x_shape: list[int | str], y_shape: list[int | str], y_type: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    """``y = x @ w`` (w a [4, 2] zero initializer), declared with the given shapes and output type
    (a Cast is appended for a type other than float)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", y_type, y_shape)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.0] * 8)
    cast = [] if y_type == TensorProto.FLOAT else [helper.make_node("Cast", ["m"], ["y"], to=y_type)]
    out = "y" if not cast else "m"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], [out]), *cast], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
