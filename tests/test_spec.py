"""rnnexport.spec: the contract's JSON form, as a manifest carries it, written out here by hand."""

from __future__ import annotations

import json

from rnnexport.spec import Contract, TensorSpec

CONTRACT = Contract(
    inputs=(
        TensorSpec("x", "float32", ("batch", "seq", 10)),
        TensorSpec("lengths", "int64", ("batch",), role="lengths"),
        TensorSpec("tokens", "int64", ("batch", "seq"), range=(0, 50)),
    ),
    outputs=(TensorSpec("y", "float32", ("batch", "seq", 5)),),
)
JSON = {
    "inputs": [
        {"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"},
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 50]},
    ],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", "seq", 5]}],
}


def test_a_contract_writes_the_manifest_form() -> None:
    assert CONTRACT.to_json() == JSON


def test_a_contract_reads_back_from_json_text_unchanged() -> None:
    assert Contract.from_json(json.loads(json.dumps(JSON))) == CONTRACT


def test_the_names_and_the_lengths_input_come_from_the_contract() -> None:
    assert CONTRACT.input_names == ["x", "lengths", "tokens"]
    assert CONTRACT.output_names == ["y"]
    assert CONTRACT.lengths_input == TensorSpec("lengths", "int64", ("batch",), role="lengths")
    assert Contract(inputs=CONTRACT.inputs[:1], outputs=CONTRACT.outputs).lengths_input is None


def test_a_tensor_describes_its_shape_and_dynamic_axes() -> None:
    x = CONTRACT.inputs[0]
    assert x.shape_str() == "float32[batch, seq, 10]"
    assert x.dynamic_axes == {0: "batch", 1: "seq"}
