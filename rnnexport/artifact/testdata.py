"""Test data (ONNX test-data sets, float64 references) and a streaming model's initial states.

Written by the build; read back by ``verify`` from bytes already read within bounds and hashed, each
tensor parsed field by field (never through ``numpy_helper.to_array``, which follows external data).
Torch-free.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from rnnexport.artifact.manifest import _REBUILD, _TEST_SET, Manifest
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.feeds import Case, Feeds, validate_feeds
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.runtime.oracle import FLOAT64_OUTPUT
from rnnexport.safeio import (
    read_bounded,
    write_file,
)
from rnnexport.spec import Contract
from rnnexport.streaming import Streaming, start_states

__all__ = ["read_initial_states", "read_test_data", "write_initial_states", "write_test_data"]

# -- test data -------------------------------------------------------------------------------------

_DTYPE_CODES = {
    "float32": TensorProto.FLOAT,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "float64": TensorProto.DOUBLE,
}
# The TensorProto field that holds each dtype's values when they are not in raw_data.
_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data",
    TensorProto.INT64: "int64_data",
    TensorProto.INT32: "int32_data",
    TensorProto.DOUBLE: "double_data",
}


def _write_tensor(path: Path, name: str, array: np.ndarray) -> None:
    write_file(path, numpy_helper.from_array(np.ascontiguousarray(array), name=name).SerializeToString())


def _parse_tensor(data: bytes, *, origin: str, name: str, dtype: str) -> np.ndarray:
    """A ``TensorProto`` from ``data``, checked field by field, as an array; :class:`ArtifactError` otherwise.

    ``numpy_helper.to_array`` is never used on untrusted bytes: it resolves external-data references
    against the current directory. Here they are refused, as is any dtype other than the contract's,
    dims that disagree with the amount of data, and data in a field the dtype does not use.
    """
    tensor = TensorProto()
    try:
        tensor.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{origin} is not a TensorProto ({exc}). {_REBUILD}") from None
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise ArtifactError(
            f"{origin} refers to external data {location!r} instead of holding its values; test data "
            f"must be self-contained, and the reference was not followed. {_REBUILD}"
        )
    want = _DTYPE_CODES[dtype]
    if tensor.data_type != want:
        got = (
            TensorProto.DataType.Name(tensor.data_type)
            if tensor.data_type in TensorProto.DataType.values()
            else str(tensor.data_type)
        )
        raise ArtifactError(
            f"{origin} holds a tensor of type {got}; the contract says '{name}' is {dtype} "
            f"({TensorProto.DataType.Name(want)}). {_REBUILD}"
        )
    if tensor.name != name:
        raise ArtifactError(f"{origin} holds the tensor {tensor.name!r}, expected {name!r}. {_REBUILD}")
    if tensor.HasField("segment"):
        raise ArtifactError(f"{origin} is a segmented tensor, which rnnexport never writes. {_REBUILD}")
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ArtifactError(f"{origin} has negative dims {dims}. {_REBUILD}")
    count = math.prod(dims)
    np_dtype = np.dtype(dtype).newbyteorder("<")
    typed = getattr(tensor, _TYPED_FIELDS[want])
    others = [
        f.name
        for f, _ in tensor.ListFields()
        if f.name.endswith("_data") and f.name not in ("raw_data", _TYPED_FIELDS[want])
    ]
    if others:
        raise ArtifactError(
            f"{origin} carries values in {others}, which a {dtype} tensor does not use. {_REBUILD}"
        )
    if tensor.HasField("raw_data"):
        if len(typed) or len(tensor.raw_data) != count * np_dtype.itemsize:
            raise ArtifactError(
                f"{origin} declares dims {dims} ({count} values, {count * np_dtype.itemsize} bytes) "
                f"but holds {len(tensor.raw_data)} bytes of data. {_REBUILD}"
            )
        array = np.frombuffer(tensor.raw_data, dtype=np_dtype).astype(np.dtype(dtype))
    else:
        if len(typed) != count:
            raise ArtifactError(
                f"{origin} declares dims {dims} ({count} values) but holds {len(typed)} values. {_REBUILD}"
            )
        array = np.asarray(typed, dtype=np.dtype(dtype))
    return array.reshape(dims)


def _float64_from(
    contents: Mapping[str, bytes], dirs: Sequence[str], contract: Contract, *, folder: Path
) -> dict[str, Feeds]:
    """The float64 references of the test-data sets that have them, from bytes already read and hashed.

    Sets without them (artifacts from before the oracle) are left out; the rule decides what that means.
    """
    found: dict[str, Feeds] = {}
    for directory in dirs:
        names = [f"{directory}/{FLOAT64_OUTPUT.format(k=k)}" for k in range(len(contract.outputs))]
        if all(n in contents for n in names):
            found[directory] = {
                spec.name: _parse_tensor(contents[n], origin=str(folder / n), name=spec.name, dtype="float64")
                for spec, n in zip(contract.outputs, names, strict=True)
            }
    return found


def write_test_data(folder: Path, cases: Sequence[Case], contract: Contract) -> list[dict[str, Any]]:
    """Write ``test_data_set_N`` folders; returns their manifest entries."""
    entries = []
    for n, case in enumerate(cases):
        directory = folder / f"test_data_set_{n}"
        directory.mkdir()
        for k, name in enumerate(contract.input_names):
            _write_tensor(directory / f"input_{k}.pb", name, case.inputs[name])
        for k, name in enumerate(contract.output_names):
            _write_tensor(directory / f"output_{k}.pb", name, case.outputs[name])
        entries.append({"dir": directory.name, "case": case.name, "shapes": case.shapes})
    return entries


def _cases_from(
    contents: Mapping[str, bytes], dirs: Sequence[str], contract: Contract, *, folder: Path
) -> list[Case]:
    """Parse the test-data sets ``dirs`` out of file contents already read and hashed."""
    cases = []
    for directory in dirs:
        tensors: dict[str, dict[str, np.ndarray]] = {"input": {}, "output": {}}
        for kind, specs in (("input", contract.inputs), ("output", contract.outputs)):
            for k, spec in enumerate(specs):
                name = f"{directory}/{kind}_{k}.pb"
                if name not in contents:
                    raise ArtifactError(
                        f"The test-data set {folder / directory} has no {kind}_{k}.pb. {_REBUILD}"
                    )
                tensors[kind][spec.name] = _parse_tensor(
                    contents[name], origin=str(folder / name), name=spec.name, dtype=spec.dtype
                )
        try:
            validate_feeds(contract, tensors["input"], origin=str(folder / directory))
        except UsageError as exc:
            raise ArtifactError(f"{exc} {_REBUILD}") from None
        for spec in contract.outputs:
            got = tensors["output"][spec.name]
            if got.ndim != len(spec.shape):
                raise ArtifactError(
                    f"{folder / directory}: output '{spec.name}' has shape {list(got.shape)}, expected rank "
                    f"{len(spec.shape)} {spec.shape_str()}. {_REBUILD}"
                )
        cases.append(Case(directory, tensors["input"], tensors["output"]))
    return cases


def read_test_data(folder: Path, contract: Contract, *, limits: Limits = DEFAULT_LIMITS) -> list[Case]:
    """Read every ``test_data_set_N`` folder back into cases (sorted by N), with the checks of ``verify``."""
    sets = sorted(
        (p.name for p in folder.iterdir() if _TEST_SET.fullmatch(p.name)),
        key=lambda n: int(n.rsplit("_", 1)[1]),
    )
    contents = {
        f"{d}/{f.name}": read_bounded(f, limit=limits.test_data_bytes, what="test data", error=ArtifactError)
        for d in sets
        for f in sorted((folder / d).iterdir())
    }
    return _cases_from(contents, sets, contract, folder=folder)


# -- a streaming model's learned initial states -----------------------------------------------------


def write_initial_states(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write a streaming model's shipped initial states (``initial_state/state_in.<key>.pb``, see
    :class:`~rnnexport.streaming.InitialTensor`) into ``folder``."""
    for name, data in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        write_file(folder / name, data)


def _initial_from(contents: Mapping[str, bytes], streaming: Streaming, *, folder: Path) -> Feeds:
    """The shipped initial states (state input -> ``[1, sizes...]``), from bytes already read and hashed."""
    found: Feeds = {}
    for name, entry in streaming.shipped.items():
        if entry.file not in contents:
            raise ArtifactError(
                f"{folder / entry.file}, the initial state of '{name}', is missing. {_REBUILD}"
            )
        array = _parse_tensor(
            contents[entry.file], origin=str(folder / entry.file), name=name, dtype="float32"
        )
        if array.shape != entry.shape:
            raise ArtifactError(
                f"{folder / entry.file} has shape {list(array.shape)}, the manifest says "
                f"{list(entry.shape)}. {_REBUILD}"
            )
        if not np.isfinite(array).all():
            raise ArtifactError(f"{folder / entry.file} holds values that are not finite. {_REBUILD}")
        found[name] = array
    return found


def read_initial_states(folder: Path, manifest: Manifest, *, limits: Limits = DEFAULT_LIMITS) -> Feeds:
    """A streaming artifact's shipped initial states (state input -> ``[1, sizes...]``, broadcast over
    the batch to start a stream; states that start from zeros are not in it), each file checked
    against the sha256 the manifest lists. Empty for an artifact without a streaming section."""
    if manifest.streaming is None:
        return {}
    streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
    contents = {}
    for entry in streaming.shipped.values():
        data = read_bounded(
            folder / entry.file, limit=limits.test_data_bytes, what="initial state", error=ArtifactError
        )
        if hashlib.sha256(data).hexdigest() != manifest.files.get(entry.file):
            raise ArtifactError(
                f"'{entry.file}' was modified: its sha256 does not match the manifest. {_REBUILD}"
            )
        contents[entry.file] = data
    return _initial_from(contents, streaming, folder=folder)


def _start_problems(
    cases: Sequence[Case], streaming: Streaming, initial: Mapping[str, np.ndarray]
) -> list[str]:
    """Test-data sets that start a stream (every set but the later calls of a chain) whose state
    inputs are not the states' initial values, repeated over the batch, exactly."""
    later = {name for chain in streaming.chains for name in chain[1:]}
    problems = []
    for case in cases:
        if case.name in later:
            continue
        batch = next(iter(case.inputs[s.input] for s in streaming.states)).shape[0]
        start = start_states(streaming, batch, initial)
        wrong = [n for n, value in start.items() if not np.array_equal(case.inputs[n], value)]
        if wrong:
            problems.append(
                f"{case.name} starts a stream, but its {', '.join(wrong)} are not the initial state"
            )
    return problems
