"""The contract check: what it exists for is catching exporters that freeze dynamic axes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from rnnexport.builder.eager import build_model
from rnnexport.builder.export import export_onnx
from rnnexport.errors import ContractError
from rnnexport.graph.contract import check_contract, read_contract
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig, Contract, TensorSpec

from ..helpers import matmul_model

CONTRACT = Contract(
    inputs=(TensorSpec("x", "float32", ("batch", "seq", 4)),),
    outputs=(TensorSpec("y", "float32", ("batch", "seq", 2)),),
)


def test_dynamic_symbols_pass() -> None:
    model = matmul_model(["batch", "seq", 4], ["batch", "seq", 2])
    check_contract(model, CONTRACT, stage="in test")
    assert read_contract(model) == CONTRACT


def test_frozen_output_axis_fails_naming_axis_and_size() -> None:
    with pytest.raises(ContractError) as info:
        check_contract(
            matmul_model(["batch", "seq", 4], ["batch", 3, 2]),
            CONTRACT,
            stage="after export",
            trace_sizes="seq 3",
        )
    message = str(info.value)
    assert "output 'y' axis 1 should be the dynamic axis 'seq' but is the fixed size 3" in message
    assert "after export" in message
    assert "seq 3" in message


def test_wrong_symbol_dtype_and_static_size_all_reported() -> None:
    with pytest.raises(ContractError) as info:
        check_contract(
            matmul_model(["s0", "seq", 4], ["batch", "seq", 7], TensorProto.DOUBLE), CONTRACT, stage="x"
        )
    message = str(info.value)
    assert "input 'x' axis 0 should be the dynamic axis 'batch' but is the symbol 's0'" in message
    assert "output 'y' has dtype float64, expected float32" in message
    assert "output 'y' axis 2 should be 2 but is 7" in message


def test_renamed_output_fails() -> None:
    model = matmul_model(["batch", "seq", 4], ["batch", "seq", 2])
    model.graph.output[0].name = "out"
    model.graph.node[0].output[0] = "out"
    with pytest.raises(ContractError, match=r"output names are \['out'\], expected \['y'\]"):
        check_contract(model, CONTRACT, stage="x")


def test_torchscript_export_keeps_axes_symbolic() -> None:
    for name in ("many-to-many", "parallel-gru", "attention"):
        spec = get_arch(name)
        contract = spec.contract(ArchConfig())
        model = export_onnx(build_model(spec, ArchConfig(), seed=0), contract)
        check_contract(model, contract, stage="after export")


def test_dynamo_export_of_an_lstm_keeps_the_sequence_axis(tmp_path: Path) -> None:
    # torch.onnx's own dynamo translation of nn.LSTM froze the sequence axis at the trace length on
    # torch 2.13 (y[batch, 3, 5]); rnnexport's rewrites export it as its own op. Run in a fresh
    # interpreter: the first dynamo export of a process is the one that used to go wrong silently.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnexport",
            "build",
            "--arch",
            "many-to-many",
            "--exporter",
            "dynamo",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(tmp_path / "out" / "many-to-many" / "model.onnx"))
    y = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in y] == ["batch", "seq", 5]
