"""The shipped artifact: its manifest, test data, atomic publication, and re-verification.

An artifact folder holds ``model.onnx`` (and, for weights past the inline limit, ``model.onnx.data``
beside it: ONNX external data, every large tensor in that one file), ONNX test-data sets
(``test_data_set_N/input_K.pb`` / ``output_K.pb``, the layout ``onnx_test_runner`` and
``onnxruntime_perf_test`` read) and ``manifest.json``, which lists the sha256 of every other file.

:func:`verify_artifact` treats the folder as untrusted: every file is a regular file checked with
``lstat`` before it is opened, read once within a size bound, hashed and parsed from those same
bytes; no tensor is ever read from outside the folder; everything the manifest claims about the
model is checked against the graph and its metadata; and the model runs in a child process with a
time bound. ``model.onnx.data`` may be larger than memory, so it is hashed as it streams into a
private copy, and external-data references are accepted only into that file, at regions inside
it; the model runs from the private copies. Everything here is torch-free: it runs on the target
machine with only ONNX Runtime, onnx and numpy installed.

Folders rnnexport creates beside a destination carry their owner in their name
(``.NAME.partial-PID-START-XXXX`` while building, ``.NAME.old-PID-START`` while ``--force`` swaps),
where START is the owner's process start time, so a later run can tell a live build's folder from
a dead one's even when the PID has been reused, and clean up or finish what the dead one left.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import itertools
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from rnnexport.errors import ArtifactError, RnnExportError, UsageError
from rnnexport.feeds import Case, Feeds, axis_ranges, validate_feeds
from rnnexport.graph.contract import check_contract, read_contract
from rnnexport.limits import DEFAULT_LIMITS, Limits, check_tolerance, format_bytes
from rnnexport.runtime import DEVICES, Device, resolve_devices
from rnnexport.runtime.compare import Criterion, ProviderResult, Tolerance
from rnnexport.runtime.oracle import FLOAT64_OUTPUT, seq_axes
from rnnexport.safeio import (
    check_path,
    copy_bounded,
    describe_os_error,
    exchange,
    file_kind,
    loads_strict,
    read_bounded,
    write_file,
)
from rnnexport.spec import DTYPES, DYNAMIC_AXES, ROLES, ArchConfig, Contract
from rnnexport.streaming import INITIAL_FOLDER, STATE_IN, Streaming, start_states, streaming_problems
from rnnexport.text import capped, first_of
from rnnexport.variants import (
    FORMATS,
    PRECISIONS,
    REQUIRED_OPERATORS,
    VariantResult,
    shipped_variants,
    variant_file,
    verify_shipped_variants,
)

__all__ = [
    "BENCH_FILE",
    "EXTERNAL_DATA",
    "EXTERNAL_TENSOR_BYTES",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MODEL",
    "ArtifactReport",
    "CheckedArtifact",
    "Manifest",
    "check_files",
    "check_publishable",
    "checked_artifact",
    "hash_files",
    "parse_manifest",
    "prepare_destination",
    "publish",
    "read_initial_states",
    "read_test_data",
    "recover_destination",
    "sha256_file",
    "staging_folder",
    "verify_artifact",
    "write_external_model",
    "write_initial_states",
    "write_test_data",
]

MODEL = "model.onnx"
# A model whose weights do not fit in one protobuf message keeps them in this one file beside it
# (ONNX external data); model.onnx refers to it by this exact name.
EXTERNAL_DATA = "model.onnx.data"
# What `rnnexport bench --record` writes into an artifact (and lists in its manifest).
BENCH_FILE = "bench.json"
# Tensors smaller than this stay inline in model.onnx: shapes and scalars, not worth an indirection.
EXTERNAL_TENSOR_BYTES = 1024
# The keys of an external-data reference rnnexport writes (and the only ones verify accepts).
_EXTERNAL_KEYS = ("location", "offset", "length")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1

_REBUILD = "Rebuild the artifact, or copy it again from the build machine."
# How many unlisted files a report names before it says "and K more".
UNLISTED_SHOWN = 20
_TEST_SET = re.compile(r"test_data_set_(0|[1-9][0-9]{0,5})")
# A dynamic axis named in a contract (as io descriptions allow: an identifier).
_AXIS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Inputs and float32 outputs in the ONNX test-data layout, and the float64 references beside them
# (a name ONNX's own test runners ignore).
_TEST_FILE = re.compile(r"(input|output|float64_output)_(0|[1-9][0-9]{0,3})\.pb")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what was built, from what, with which tools, and what was verified where."""

    arch: str  # the architecture's name, or a user model's artifact name
    config: dict[str, Any]  # an architecture's sizes, or a user model's keyword arguments
    contract: Contract
    versions: dict[str, str]
    export: dict[str, Any]
    simplification: dict[str, int]
    weights: dict[str, Any]
    verification: dict[str, Any]
    test_data: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT
    # One entry per model file (model.onnx first), see rnnexport.variants.VariantResult.to_json.
    variants: list[dict[str, Any]] = field(default_factory=list)
    # A user model's origin (module, class or factory, config); None for a registered architecture.
    source: dict[str, Any] | None = None
    # A streaming model's carried states and chained test data (see rnnexport.streaming); else None.
    streaming: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in a stable order."""
        return {
            "format": self.format,
            "arch": self.arch,
            **({"source": self.source} if self.source is not None else {}),
            "config": self.config,
            "versions": self.versions,
            "export": self.export,
            **self.contract.to_json(),
            **({"streaming": self.streaming} if self.streaming is not None else {}),
            "simplification": self.simplification,
            "weights": self.weights,
            "verification": self.verification,
            "test_data": self.test_data,
            "variants": self.variants,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError on a malformed document.

        It does not validate; :func:`parse_manifest` does, for documents from elsewhere.
        """
        return cls(
            arch=data["arch"],
            config=dict(data["config"]),
            contract=Contract.from_json(data),
            versions=dict(data["versions"]),
            export=dict(data["export"]),
            simplification=dict(data["simplification"]),
            weights=dict(data["weights"]),
            verification=dict(data["verification"]),
            test_data=list(data["test_data"]),
            files=dict(data["files"]),
            format=int(data["format"]),
            variants=list(data.get("variants", [])),
            source=None if data.get("source") is None else dict(data["source"]),
            streaming=None if data.get("streaming") is None else dict(data["streaming"]),
        )

    def tolerance(self, device: Device) -> Tolerance:
        """The tolerance recorded for ``device``."""
        return Tolerance(**self.verification["tolerance"][device])

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder``."""
        import json

        text = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        write_file(folder / MANIFEST, text.encode("utf-8"))


# -- the manifest, validated ---------------------------------------------------------------------


def _tensor_specs(doc: Mapping[str, Any], key: str, need: Any) -> None:
    entries = doc.get(key)
    if not isinstance(entries, list) or not entries:
        need(False, f"'{key}' must be a non-empty list of tensors")
        return
    names = []
    for t in entries:
        need(isinstance(t, dict), f"every entry of '{key}' must be an object")
        name, dtype, shape = t.get("name"), t.get("dtype"), t.get("shape")
        need(isinstance(name, str) and name, f"a tensor in '{key}' has no name")
        need(dtype in DTYPES, f"'{key}' tensor {name!r} has dtype {dtype!r}; expected one of {DTYPES}")
        need(isinstance(shape, list) and shape, f"'{key}' tensor {name!r} has no shape")
        for d in shape:
            fixed = isinstance(d, int) and not isinstance(d, bool) and d >= 1
            # A null (or any other) dim would switch the contract check off for that axis. A user
            # model's contract may name further dynamic axes ("steps" for max(lengths)).
            named = d in DYNAMIC_AXES or (isinstance(d, str) and _AXIS_NAME.fullmatch(d) is not None)
            need(
                fixed or named,
                f"'{key}' tensor {name!r} has the dim {d!r}; every dim must be a size >= 1 or the name "
                f"of a dynamic axis such as {DYNAMIC_AXES}",
            )
        need(t.get("role") in (None, *ROLES), f"'{key}' tensor {name!r} has the role {t.get('role')!r}")
        bounds = t.get("range")
        need(
            bounds is None
            or (
                isinstance(bounds, list)
                and len(bounds) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            ),
            f"'{key}' tensor {name!r} has the range {bounds!r}",
        )
        names.append(name)
    need(len(set(names)) == len(names), f"'{key}' names a tensor twice")


def parse_manifest(data: bytes, *, path: Path) -> Manifest:
    """Parse and validate ``manifest.json`` bytes; raise :class:`ArtifactError` on anything malformed.

    The manifest is not hashed itself, so every part that verification relies on is type- and
    range-checked here: the format, the sizes, the contract (no null dims), the tolerances (the same
    bounds ``build`` applies), the test-data sets and the file list.
    """

    def need(condition: object, what: str) -> None:
        if not condition:
            raise ArtifactError(f"{path} is not a valid rnnexport manifest: {what}. {_REBUILD}")

    doc = loads_strict(data, what=str(path), error=ArtifactError, fix=_REBUILD)
    need(isinstance(doc, dict), f"expected a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    need(isinstance(fmt, int) and not isinstance(fmt, bool), f"'format' must be a whole number, got {fmt!r}")
    if fmt != MANIFEST_FORMAT:
        raise ArtifactError(
            f"{path} has manifest format {fmt}; this rnnexport reads format {MANIFEST_FORMAT}. "
            "Verify it with the rnnexport version that built it, or rebuild it."
        )
    for key in ("config", "versions", "export", "simplification", "weights", "verification", "files"):
        need(isinstance(doc.get(key), dict), f"'{key}' must be an object")
    need(isinstance(doc.get("arch"), str) and doc["arch"], "'arch' must be a name")
    need(isinstance(doc.get("test_data"), list), "'test_data' must be a list")
    # A user model's config is its keyword arguments (recorded beside its 'source'), not sizes.
    need(doc.get("source") is None or isinstance(doc["source"], dict), "'source' must be an object")
    if doc.get("source") is None:
        try:
            ArchConfig.from_mapping(doc["config"], origin=f"the 'config' of {path}")
        except UsageError as exc:
            need(False, f"its config is invalid ({exc})")
    _tensor_specs(doc, "inputs", need)
    _tensor_specs(doc, "outputs", need)
    tolerance = doc["verification"].get("tolerance")
    need(isinstance(tolerance, dict), "'verification.tolerance' must be an object")
    for device in DEVICES:
        entry = tolerance.get(device)
        need(
            isinstance(entry, dict) and set(entry) == {"atol", "rtol"},
            f"tolerance[{device!r}] must be {{atol, rtol}}",
        )
        for name in ("atol", "rtol"):
            try:
                check_tolerance(
                    name, entry[name], origin=f"{device}, as build bounds it", error=ArtifactError
                )
            except ArtifactError as exc:
                need(False, str(exc).removesuffix(". The defaults are atol 1e-5, rtol 1e-4."))
            entry[name] = float(entry[name])
    need(
        isinstance(doc["verification"].get("tf32", False), bool), "'verification.tf32' must be true or false"
    )
    dirs = []
    for entry in doc["test_data"]:
        need(
            isinstance(entry, dict) and isinstance(entry.get("dir"), str),
            "every 'test_data' entry needs a 'dir'",
        )
        need(_TEST_SET.fullmatch(entry["dir"]), f"'test_data' names the folder {entry['dir']!r}")
        dirs.append(entry["dir"])
    need(len(set(dirs)) == len(dirs), "'test_data' lists a folder twice")
    for name, digest in doc["files"].items():
        need(
            isinstance(digest, str) and _SHA256.fullmatch(digest),
            f"the sha256 of {name!r} is not 64 hex digits",
        )
    try:
        Criterion.from_json(doc["verification"].get("rule"))
    except (TypeError, ValueError) as exc:
        need(False, f"'verification.rule' is not one rnnexport applies: {exc}")
    if doc.get("streaming") is not None:
        streaming = Streaming.from_json(doc["streaming"], need)
        problems = streaming_problems(streaming, Contract.from_json(doc), dirs, doc["files"])
        need(not problems, capped(problems))
    return Manifest.from_json(doc)


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


# -- the model with its weights beside it -----------------------------------------------------------


def write_external_model(model: onnx.ModelProto, folder: Path) -> dict[str, Any]:
    """Write ``model`` as ``model.onnx`` plus every tensor of at least :data:`EXTERNAL_TENSOR_BYTES`
    bytes in one file, ``model.onnx.data``, into ``folder`` (a staging folder: both must be new).

    ``model`` is changed in place: its tensors then refer to the data file instead of holding their
    values, which frees their memory. Returns the manifest's record of the layout (without the
    threshold, which the caller knows). Never serializes the model whole, so past 2 GiB works.

    The export keeps the recurrent weights in ``Constant`` nodes (the recurrent nodes' W, R and B),
    which onnxsim leaves as they are. A large one becomes a graph initializer of the same name
    first: ONNX Runtime reads external data for initializers, and ``verify`` accepts external data
    there alone, so that what it checks is exactly what rnnexport writes.
    """
    _constants_to_initializers(model.graph, EXTERNAL_TENSOR_BYTES)
    for name in (MODEL, EXTERNAL_DATA):
        if os.path.lexists(folder / name):  # onnx appends to an existing data file; never let it
            raise FileExistsError(errno.EEXIST, "File exists", str(folder / name))
    onnx.save_model(
        model,
        str(folder / MODEL),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA,
        size_threshold=EXTERNAL_TENSOR_BYTES,
        convert_attribute=False,
    )
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    data = folder / EXTERNAL_DATA
    if data.exists():
        data.chmod(0o644)  # onnx creates it private; it ships like every other file
    return {
        "file": EXTERNAL_DATA,
        "bytes": data.stat().st_size if data.exists() else 0,
        "tensors": len(external),
        "tensor_threshold_bytes": EXTERNAL_TENSOR_BYTES,
    }


def _constants_to_initializers(graph: onnx.GraphProto, threshold: int) -> None:
    """Replace each top-level ``Constant`` node whose ``value`` holds ``threshold`` bytes or more by an
    initializer named like its output (the same value under the same name: the graph computes the same)."""
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
            and value is not None
            and len(value.raw_data) >= threshold
        ):
            tensor = graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            continue
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


# -- files and hashes ------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``folder`` except the manifest."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


@dataclass
class _Scan:
    """What a folder holds, read with lstat only: regular files with sizes, folders, and problems."""

    files: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # links, pipes, devices: reported, never opened
    problems: list[str] = field(default_factory=list)


def _scan(folder: Path, limits: Limits) -> _Scan:
    """Walk ``folder`` without following links or opening anything; refuse what is not a plain file."""
    scan = _Scan()
    pending = [folder]
    entries = 0
    while pending:
        current = pending.pop()
        try:
            listing = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            scan.problems.append(
                f"'{current.relative_to(folder).as_posix()}' cannot be listed ({describe_os_error(exc)})"
            )
            continue
        for entry in listing:
            entries += 1
            if entries > limits.artifact_entries:
                scan.problems.append(f"more than {limits.artifact_entries} files and folders (refused)")
                return scan
            path = Path(entry.path)
            relative = path.relative_to(folder).as_posix()
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:  # removed or replaced while listing
                scan.problems.append(f"'{relative}' cannot be examined ({describe_os_error(exc)})")
                scan.refused.add(relative)
                continue
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                scan.dirs.add(relative)
                pending.append(path)
            elif stat.S_ISREG(mode):
                if relative != MANIFEST:
                    scan.files[relative] = info.st_size
            elif stat.S_ISLNK(mode):
                scan.refused.add(relative)
                scan.problems.append(
                    f"'{relative}' is a symbolic link (refused: artifacts hold plain files only)"
                )
            else:
                scan.refused.add(relative)
                scan.problems.append(
                    f"'{relative}' is {file_kind(mode)} (refused: artifacts hold plain files only; "
                    "it was not opened)"
                )
    return scan


def _listed_name_problem(name: str) -> str | None:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return f"the manifest lists '{name}', a path outside the artifact folder (refused)"
    if pure.as_posix() != name or "\\" in name or name == MANIFEST:
        return f"the manifest lists '{name}', which is not a plain relative file name (refused)"
    return None


# Files ONNX Runtime or a test runner would load from the folder: a model (any variant, either format),
# external data, and a test-data tensor inside a test-data set (onnx_test_runner reads every one).
_MODEL_SUFFIXES = (".onnx", ".ort", ".onnx.data")


def _unlisted_problem(name: str) -> str | None:
    """Why a file the manifest does not list must be refused, or None when it is harmless.

    An unlisted file is no part of what was verified. Most are left by the machine the folder went
    through (``.DS_Store``, ``Thumbs.db``, an editor's ``model.onnx~``): nothing loads them, so they are
    reported and passed over. A model file or a test-data tensor is different: a runtime or a test runner
    would load it, and every such file in the folder is either verified or refused.
    """
    head, _, tail = name.rpartition("/")
    if name.lower().endswith(_MODEL_SUFFIXES):
        return (
            f"'{name}' is a model file the manifest does not list (refused: every model file in an "
            "artifact is verified or refused, and nothing verified this one; remove it, or build the "
            "variant with --precision/--format so that it is listed and verified)"
        )
    if _TEST_SET.fullmatch(head) and _TEST_FILE.fullmatch(tail):
        return (
            f"'{name}' is a test-data tensor the manifest does not list (refused: a test runner reads "
            "every tensor of a test-data set, and nothing verified this one)"
        )
    return None


def _size_limit(name: str, limits: Limits) -> int:
    if name == MODEL:
        return limits.model_bytes
    return limits.external_data_bytes if name == EXTERNAL_DATA else limits.test_data_bytes


def _read_listed(
    folder: Path, listed: Mapping[str, str], limits: Limits, *, copy_to: Path | None = None
) -> tuple[dict[str, bytes], list[str], list[str]]:
    """Read every listed file once, within the size bounds, and hash those bytes.

    Returns the contents of the files whose hash matched, every problem found (paths outside the
    folder, links, pipes and devices, missing, oversized or modified files, unlisted model files and
    test-data tensors, and folders the manifest does not account for, an empty ``test_data_set_x/``
    included), and the other regular files the manifest does not list: never opened, not part of
    what was verified, reported as a warning (see :func:`_unlisted_problem`).

    ``model.onnx.data`` (ONNX external data, up to gigabytes) is never held in memory: it is hashed
    as it streams, and written as it streams into the private folder ``copy_to`` when given, where
    it stays only if its hash matched. It is not in the returned contents.
    """
    problems = [p for p in map(_listed_name_problem, listed) if p]
    if problems:
        return {}, problems, []
    scan = _scan(folder, limits)
    problems += scan.problems
    present = set(scan.files)
    unlisted = []
    for name in sorted(present - set(listed)):
        problem = _unlisted_problem(name)
        if problem is None:
            unlisted.append(name)
        else:
            problems.append(problem)
    for name in sorted(set(listed) - present):
        if name not in scan.dirs and name not in scan.refused:
            problems.append(f"'{name}' is listed in the manifest but missing")
    needed = {PurePosixPath(name).parent.as_posix() for name in listed} | {
        p.as_posix() for name in listed for p in PurePosixPath(name).parents
    }
    for name in sorted(scan.dirs - needed):
        problems.append(f"'{name}/' is a folder the manifest does not account for (empty or unexpected)")
    total = 0
    for name in sorted(present & set(listed)):
        limit = _size_limit(name, limits)
        total += scan.files[name]
        if scan.files[name] > limit:
            problems.append(
                f"'{name}' is {scan.files[name]:,} bytes, over the limit of {limit:,} bytes (refused)"
            )
    if total > limits.artifact_bytes and not problems:
        problems.append(
            f"the files add up to {format_bytes(total)}, over the limit of "
            f"{format_bytes(limits.artifact_bytes)}"
        )
    if problems:
        return {}, problems, unlisted
    contents: dict[str, bytes] = {}
    for name in sorted(present & set(listed)):
        limit = _size_limit(name, limits)
        if name == EXTERNAL_DATA:
            copy = None if copy_to is None else copy_to / name
            if copy is not None and os.path.lexists(copy):
                copy.unlink()  # from an earlier read of a folder that was replaced meanwhile
            digest, _ = copy_bounded(
                folder / name, copy, limit=limit, what="artifact file", error=ArtifactError
            )
            if digest != listed[name]:
                problems.append(f"'{name}' was modified: its sha256 does not match the manifest")
                if copy is not None:
                    copy.unlink()
            continue
        data = read_bounded(folder / name, limit=limit, what="artifact file", error=ArtifactError)
        if hashlib.sha256(data).hexdigest() != listed[name]:
            problems.append(f"'{name}' was modified: its sha256 does not match the manifest")
        else:
            contents[name] = data
    return contents, problems, unlisted


def check_files(folder: Path, listed: Mapping[str, str], *, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Every way the folder departs from the manifest's file list that makes it untrustworthy.

    Links are reported, never followed. Harmless unlisted files (``.DS_Store``) are not problems:
    they are no part of the artifact; an unlisted model file or test-data tensor is.
    """
    return _read_listed(folder, listed, limits)[1]


def _tensors_of_nodes(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    """Every tensor in the nodes' attributes, their subgraphs' (Loop, If, Scan bodies) included."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [
                *attr.sparse_tensors,
                *([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []),
            ]:
                yield sparse.values
                yield sparse.indices
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                yield from _tensors_of_graph(sub)


def _tensors_of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers (sparse ones too) and node attributes, recursively."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _tensors_of_nodes(graph.node)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _not_followed(tensor: onnx.TensorProto) -> str:
    """Today's refusal of an external reference, in words; the location is judged by its text alone
    (nothing is resolved, so no link on the way is followed and nothing outside is examined)."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
    pure = PurePosixPath(location.replace("\\", "/"))
    outside = pure.is_absolute() or ".." in pure.parts or location.startswith("\\")
    where = "outside the artifact folder" if outside else "a side file"
    return f"tensor '{tensor.name}' points at external data '{location}' ({where}); it was not read"


_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")


def _reference_problem(tensor: onnx.TensorProto, data_size: int) -> str | None:
    """Why ``tensor``'s reference into ``model.onnx.data`` (``data_size`` bytes) is not one rnnexport
    writes, or None: exactly the keys location, offset and length, the location that very file, and
    the region the tensor's dims and type call for, inside the file."""
    keys = [e.key for e in tensor.external_data]
    if sorted(keys) != sorted(_EXTERNAL_KEYS) or tensor.data_location != TensorProto.EXTERNAL:
        odd = sorted(set(keys) - set(_EXTERNAL_KEYS)) or sorted(set(_EXTERNAL_KEYS) - set(keys)) or keys
        return (
            f"tensor '{tensor.name}' refers to external data with the keys {keys} (refused: rnnexport "
            f"writes exactly {list(_EXTERNAL_KEYS)}, each once; {odd} is not that); it was not read"
        )
    entry = {e.key: e.value for e in tensor.external_data}
    if entry["location"] != EXTERNAL_DATA:
        return f"{_not_followed(tensor)}; the only external data an artifact may hold is '{EXTERNAL_DATA}'"
    if not (_DIGITS.fullmatch(entry["offset"]) and _DIGITS.fullmatch(entry["length"])):
        return (
            f"tensor '{tensor.name}' gives the offset {entry['offset']!r} and length {entry['length']!r} "
            f"into '{EXTERNAL_DATA}'; expected whole numbers; it was not read"
        )
    offset, length = int(entry["offset"]), int(entry["length"])
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 0
    dims = list(tensor.dims)
    wanted = math.prod(dims) * itemsize if all(d >= 0 for d in dims) else -1
    if itemsize == 0 or tensor.data_type == TensorProto.STRING or length != wanted:
        return (
            f"tensor '{tensor.name}' (dims {dims}, type {tensor.data_type}) takes {length} bytes of "
            f"'{EXTERNAL_DATA}'; its dims and type call for {wanted}; it was not read"
        )
    if offset + length > data_size:
        return (
            f"tensor '{tensor.name}' refers to bytes {offset}..{offset + length} of '{EXTERNAL_DATA}', "
            f"which holds {data_size} bytes; it was not read"
        )
    held = [f.name for f, _ in tensor.ListFields() if f.name.endswith("_data") and f.name != "external_data"]
    if held:
        return f"tensor '{tensor.name}' refers to external data and also holds values in {held}"
    return None


def _external_data_problems(model: onnx.ModelProto, *, data_size: int | None) -> tuple[list[str], int]:
    """Every tensor, anywhere in the model, whose external-data reference is not one rnnexport
    writes, and how many tensors refer to ``model.onnx.data``.

    ``data_size`` is the size of the verified ``model.onnx.data``, or None when the artifact has
    none. Only the main graph's initializers may refer to it (that is where rnnexport puts them);
    any other external reference is refused as it always was, and none is ever followed.
    """
    problems = []
    referring = 0
    for tensor in model.graph.initializer:
        if not _is_external(tensor):
            continue
        problem = _not_followed(tensor) if data_size is None else _reference_problem(tensor, data_size)
        if problem:
            problems.append(problem)
        else:
            referring += 1
    others = itertools.chain(
        (t for sparse in model.graph.sparse_initializer for t in (sparse.values, sparse.indices)),
        _tensors_of_nodes(model.graph.node),
        *(_tensors_of_nodes(f.node) for f in model.functions),
    )
    problems += [_not_followed(tensor) for tensor in others if _is_external(tensor)]
    return problems, referring


# -- destination handling --------------------------------------------------------------------------

_OWNED = re.compile(
    r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>[0-9]{1,10})"
    r"(?:-(?P<start>[0-9]{1,20}))?(?:-[A-Za-z0-9_]{1,32})?"
)


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, from /proc), or None when unknown."""
    try:
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return text.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_token() -> str:
    """``PID-START`` of this process: unique among live processes, and across PID reuse."""
    return f"{os.getpid()}-{_start_time(os.getpid()) or 0}"


def _owner_alive(pid: int, start: str | None) -> bool:
    """Whether the process that named a folder ``pid``/``start`` is still running."""
    if f"{pid}-{start}" == _owner_token():
        return True  # our own folder
    if pid == os.getpid():
        return False  # our PID, but another (earlier) process: the PID was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = _start_time(pid)
    # A recorded start time that differs means the PID now belongs to another process.
    return not (start is not None and start != "0" and current is not None and current != start)


@dataclass(frozen=True)
class _Leftover:
    path: Path
    kind: str
    pid: int
    start: str | None


def _leftovers(destination: Path) -> list[_Leftover]:
    """Staging and swap folders of dead processes beside ``destination`` (for its name only)."""
    found = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return []
    for entry in entries:
        match = _OWNED.fullmatch(entry.name)
        if match is None or match["name"] != destination.name:
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue  # only our own kind of folder, never a link or a file of the same name
        pid, start = int(match["pid"]), match["start"]
        if not _owner_alive(pid, start):
            found.append(_Leftover(Path(entry.path), match["kind"], pid, start))
    return sorted(found, key=lambda f: f.path.name)


def recover_destination(destination: Path, *, clean: bool = True) -> list[str]:
    """Finish or undo what a killed build left beside ``destination``; return what was done, in words.

    - ``destination`` missing and a dead ``--force`` swap's ``.NAME.old-*`` beside it: the previous
      artifact is moved back (the swap was interrupted between its two renames);
    - ``destination`` present and such a folder beside it: the swap had finished; with ``clean``
      the leftover is removed;
    - with ``clean``, dead builds' ``.NAME.partial-*`` staging folders are removed.

    Only folders named like rnnexport's own, and only when their owning process is gone.
    """
    notes = []
    leftovers = _leftovers(destination)
    olds = [f for f in leftovers if f.kind == "old"]
    if olds and not os.path.lexists(destination):
        newest = max(olds, key=lambda f: f.path.lstat().st_mtime)
        newest.path.rename(destination)
        olds.remove(newest)
        notes.append(
            f"restored the previous artifact {destination} from {newest.path.name}: a --force rebuild "
            f"(pid {newest.pid}) was interrupted after moving it aside and before moving the new one in"
        )
    if clean:
        for leftover in olds:
            shutil.rmtree(leftover.path, ignore_errors=True)
            notes.append(
                f"removed {leftover.path.name}, the old artifact a finished but interrupted --force rebuild "
                f"(pid {leftover.pid}) left behind"
            )
        for leftover in leftovers:
            if leftover.kind != "partial":
                continue
            if not _holds_only_build_output(leftover.path):
                notes.append(
                    f"left {leftover.path.name} in place: it is named like a staging folder of a dead "
                    "build, but holds files rnnexport does not write"
                )
                continue
            shutil.rmtree(leftover.path, ignore_errors=True)
            notes.append(
                f"removed the staging folder {leftover.path.name} of a build (pid {leftover.pid}) "
                "that is no longer running"
            )
    return notes


def _holds_only_build_output(folder: Path) -> bool:
    """True when ``folder`` holds nothing but what a build writes into its staging folder, or what
    an artifact holds (a ``--force`` exchange leaves the old artifact under the staging folder's name)."""
    artifact_files = {
        MODEL,
        EXTERNAL_DATA,
        MANIFEST,
        REQUIRED_OPERATORS,
        BENCH_FILE,
        *(variant_file(p, f) for p in PRECISIONS for f in FORMATS),
    }
    try:
        for entry in os.scandir(folder):
            mode = entry.stat(follow_symlinks=False).st_mode
            if entry.name in artifact_files and stat.S_ISREG(mode):
                continue
            initial = entry.name == INITIAL_FOLDER
            if not ((_TEST_SET.fullmatch(entry.name) or initial) and stat.S_ISDIR(mode)):
                return False
            for inner in os.scandir(entry.path):
                expected = (
                    inner.name.startswith(STATE_IN) and inner.name.endswith(".pb")
                    if initial
                    else _TEST_FILE.fullmatch(inner.name)
                )
                if not (expected and inner.is_file(follow_symlinks=False)):
                    return False
    except OSError:
        return False
    return True


def _first_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    while not os.path.lexists(path):
        path = path.parent
    return path


def _replaceable_problem(destination: Path) -> str | None:
    """Why ``--force`` must not replace ``destination``, or None when it holds an rnnexport artifact."""
    mode = destination.lstat().st_mode
    if not stat.S_ISDIR(mode):
        return f"it is {file_kind(mode)}, not an artifact folder"
    if not os.path.lexists(destination / MANIFEST):
        return f"it has no {MANIFEST}"
    try:
        data = read_bounded(
            destination / MANIFEST, limit=DEFAULT_LIMITS.manifest_bytes, what="manifest", error=ArtifactError
        )
        parse_manifest(data, path=destination / MANIFEST)
    except ArtifactError as exc:
        reason = str(exc).removesuffix(f" {_REBUILD}").rstrip(".")
        return f"its {MANIFEST} is not valid ({reason})"
    return None


def prepare_destination(out: Path, name: str, *, force: bool) -> tuple[Path, list[str]]:
    """Check that ``out/name`` can receive an artifact, before any work is done.

    Returns the destination and notes on what a killed earlier build left there and this one
    restored or removed (see :func:`recover_destination`).
    """
    check_path(out / name, what="--out")
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(
            f"--out must be a folder, but {out} is a file. Pass a folder path (it is created if missing)."
        )
    destination = out / name
    notes = recover_destination(destination) if out.is_dir() else []
    if destination.is_symlink():
        raise UsageError(
            f"{destination} is a symbolic link; refusing to write through it. "
            "Remove it or choose another --out."
        )
    if os.path.lexists(destination):
        if not force:
            done = "".join(f" (Before this check, rnnexport {note}.)" for note in notes)
            raise UsageError(
                f"{destination} already exists. rnnexport never overwrites silently: pass --force to "
                f"replace it completely, or choose another --out.{done}"
            )
        problem = _replaceable_problem(destination)
        if problem:
            raise UsageError(
                f"--force replaces only an rnnexport artifact, and {destination} is not one: {problem}. "
                "Nothing was deleted. Move it away yourself, or choose another --out."
            )
    probe = _first_existing(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write under {out}: {probe} is not writable. Choose another --out.")
    return destination, notes


@contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A temporary folder beside ``destination``, removed on exit unless it was published.

    Its name records this process (``.NAME.partial-PID-START-XXXX``) so that, if this process is
    killed outright, the next build can tell it is stale. On any exit, including Ctrl-C and the
    signals :mod:`rnnexport.signals` handles, folders this created on the way (a missing ``--out``)
    are removed again if they are still empty, so a failed build leaves the disk as it was.
    """
    existing = _first_existing(destination.parent)
    # Folders this creates on the way, innermost first, so they can be removed again.
    created = list(
        itertools.takewhile(lambda p: p != existing, [destination.parent, *destination.parent.parents])
    )
    staging: Path | None = None
    try:
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(
                tempfile.mkdtemp(
                    prefix=f".{destination.name}.partial-{_owner_token()}-", dir=destination.parent
                )
            )
        except OSError as exc:
            raise UsageError(
                f"Cannot write under {destination.parent}: {describe_os_error(exc)}. "
                "Choose an --out folder you can write to."
            ) from None
        staging.chmod(0o755)  # mkdtemp makes it private; the published artifact should read like any folder
        yield staging
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


def _aside_name(destination: Path) -> Path:
    """A free ``.NAME.old-PID-START`` name beside ``destination`` (a suffix added if it is taken)."""
    base = f".{destination.name}.old-{_owner_token()}"
    for n in itertools.count():
        candidate = destination.with_name(base if n == 0 else f"{base}-{n}")
        if not os.path.lexists(candidate):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def publish(staging: Path, destination: Path, *, force: bool) -> None:
    """Move a complete artifact into place; with ``force`` the old one is replaced as a whole.

    Each step is a rename within one folder, so a reader sees the old artifact or the new one, never
    a mix. Where the operating system swaps two folders atomically (:func:`~rnnexport.safeio.exchange`),
    ``force`` is that one step: the destination holds a complete artifact at every moment, and the
    old one, left in the staging folder's place, is then removed. Elsewhere it takes two renames: an
    interruption leaves the old artifact in place, and a kill between them leaves it in
    ``.NAME.old-PID-START``, which the next build or verify moves back.
    """
    old = None
    if os.path.lexists(destination):  # checked again: someone may have written it meanwhile
        problem = _replaceable_problem(destination) if force else "pass --force to replace it"
        if problem:
            raise UsageError(
                f"{destination} appeared or changed while building ({problem}); nothing was replaced."
            )
        if exchange(staging, destination):
            # A kill from here on leaves the old artifact under the staging folder's name, which the
            # next build removes like any dead build's staging folder.
            shutil.rmtree(staging, ignore_errors=True)
            return
        old = _aside_name(destination)
    # Both renames inside one try: Ctrl-C (or a handled signal) can only strike between statements,
    # and wherever it does, the old artifact goes back unless the new one is already in place.
    try:
        if old is not None:
            destination.rename(old)
        staging.rename(destination)
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(destination):
            old.rename(destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- re-verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactReport:
    """The outcome of :func:`verify_artifact`: one result per requested device."""

    directory: Path
    manifest: Manifest
    results: dict[Device, ProviderResult]
    notes: list[str] = field(default_factory=list)
    manifest_sha256: str = ""
    # Every shipped variant other than model.onnx, by file name.
    variants: dict[str, VariantResult] = field(default_factory=dict)
    # The size of model.onnx.data (verified) when the weights are external data; None otherwise.
    external_data_bytes: int | None = None
    # Regular files in the folder that the manifest does not list and nothing loads (.DS_Store): not
    # part of what was verified, so reported, never opened.
    unlisted: list[str] = field(default_factory=list)
    # The test cases and float64 references read (hash-checked) and run: what a deploy target reuses.
    cases: list[Case] = field(default_factory=list)
    float64: dict[str, Feeds] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every requested device verified, for model.onnx and every shipped variant."""
        ran = bool(self.results) and all(r.status == "passed" for r in self.results.values())
        return ran and all(v.passed for v in self.variants.values())

    def to_json(self) -> dict[str, Any]:
        """Machine-readable summary."""
        return {
            "artifact": str(self.directory),
            "arch": self.manifest.arch,
            "passed": self.passed,
            "files": "ok",
            # Capped: a folder may hold thousands of stray files, the report names the first few.
            "unlisted": self.unlisted[:UNLISTED_SHOWN],
            "unlisted_more": max(0, len(self.unlisted) - UNLISTED_SHOWN),
            "manifest_sha256": self.manifest_sha256,
            "notes": self.notes,
            "tolerance": {d: r.tolerance.to_json() for d, r in self.results.items()},
            "providers": {
                r.provider: {
                    **r.to_json(),
                    "axes": axis_ranges(self.manifest.contract, r.to_json()["shapes"]),
                }
                for r in self.results.values()
            },
            "variants": {name: v.to_json() for name, v in self.variants.items()},
            "external_data": None
            if self.external_data_bytes is None
            else {"file": EXTERNAL_DATA, "bytes": self.external_data_bytes},
        }


def _read_manifest(folder: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Manifest, bytes]:
    path = folder / MANIFEST
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is None or not stat.S_ISREG(mode):
        raise ArtifactError(
            f"{folder} is not an rnnexport artifact: expected a plain file {MANIFEST} in it"
            + (f", found {file_kind(mode)}" if mode is not None else "")
            + ". Pass the folder that 'rnnexport build' wrote (for example dist/attention)."
        )
    data = read_bounded(path, limit=limits.manifest_bytes, what="manifest", error=ArtifactError, fix=_REBUILD)
    return parse_manifest(data, path=path), data


def _template_problems(manifest: Manifest) -> list[str]:
    """How a registered architecture's manifest contract departs from what its sizes make of it.

    The declarations are torch-free (:mod:`rnnexport.archs.catalog`), so a target install checks
    exactly: the contract an architecture declares for the manifest's sizes, tensor by tensor.
    """
    from rnnexport.registry import get_arch

    try:
        spec = get_arch(manifest.arch)
        expected = spec.contract(ArchConfig.from_mapping(manifest.config, origin="the manifest's config"))
    except UsageError as exc:  # an unknown architecture, or sizes it does not take
        return [str(exc).split(". ")[0]]
    if set(manifest.config) != set(spec.sizes):
        return [
            f"the config {manifest.config} is not the sizes '{spec.name}' takes ({', '.join(spec.sizes)})"
        ]
    if manifest.streaming is not None:
        # The recurrent states follow from the module (torch), the section lists them; the
        # architecture's own streaming states follow from its declaration, and are checked here.
        streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
        expected = streaming.contract(expected)
        declared = {s.key: s.shape for s in streaming.states}
        own = spec.streaming.states if spec.streaming is not None else ()
        config = ArchConfig.from_mapping(manifest.config, origin="the manifest's config")
        for t in own:
            want = spec.resolve(t, config).shape
            if declared.get(t.name) != want:
                return [
                    f"'{spec.name}' streams with the state '{t.name}' {list(want)}, the manifest says "
                    f"{declared.get(t.name)}"
                ]
    if expected.to_json() != manifest.contract.to_json():
        return [
            f"'{spec.name}' with {manifest.config} has the contract {expected.to_json()}, "
            f"the manifest says {manifest.contract.to_json()}"
        ]
    return []


def _metadata_problems(model: onnx.ModelProto, manifest: Manifest) -> list[str]:
    """Every way the model's own metadata, its graph, and the manifest disagree."""
    problems = []
    props: dict[str, str] = {}
    for prop in model.metadata_props:
        if prop.key in props:
            problems.append(f"metadata key '{prop.key}' appears twice")
        props[prop.key] = prop.value
    expected = {
        "rnnexport.arch": manifest.arch,
        "rnnexport.version": manifest.versions.get("rnnexport"),
        "rnnexport.config": manifest.config,
        "rnnexport.contract": manifest.contract.to_json(),
    }
    if manifest.streaming is not None:
        # The model carries the states; the chains name the artifact's test-data folders.
        expected["rnnexport.streaming"] = {k: v for k, v in manifest.streaming.items() if k != "chains"}
    elif "rnnexport.streaming" in props:
        problems.append(
            "the model carries 'rnnexport.streaming' metadata, but the manifest has no streaming section"
        )
    for key, want in expected.items():
        if key not in props:
            problems.append(f"the model has no '{key}' metadata")
            continue
        got: Any = props[key]
        if isinstance(want, dict):
            try:
                got = loads_strict(got, what=f"metadata '{key}'", error=ArtifactError)
            except ArtifactError as exc:
                problems.append(str(exc))
                continue
        if got != want:
            problems.append(f"metadata '{key}' is {got!r}, the manifest says {want!r}")
    if manifest.source is None:  # a registered architecture: its contract follows from its sizes
        problems += _template_problems(manifest)
    actual = read_contract(model)
    # Roles and integer ranges are the manifest's alone: a graph carries names, dtypes and shapes.
    declared = Contract(
        tuple(dataclasses.replace(t, role=None, range=None) for t in manifest.contract.inputs),
        manifest.contract.outputs,
    )
    if actual != declared:
        problems.append(
            f"the graph's inputs/outputs are {actual.to_json()}, "
            f"the manifest says {manifest.contract.to_json()}"
        )
    return problems


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    try:
        info = folder.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _read_consistently(
    folder: Path, limits: Limits, attempts: int = 3, *, copy_to: Path | None = None
) -> tuple[Manifest, bytes, dict[str, bytes], list[str], list[str]]:
    """The manifest and every listed file, all read from one and the same folder.

    A ``--force`` rebuild publishes by renaming a new folder into place; if that happens while this
    reads, the manifest and the files may come from different artifacts. The folder's identity
    (device, inode) is compared before and after, and everything is read again when it changed.
    """
    for _ in range(attempts):
        before = _folder_identity(folder)
        manifest, manifest_bytes = _read_manifest(folder, limits)
        contents, problems, unlisted = _read_listed(folder, manifest.files, limits, copy_to=copy_to)
        if before is not None and _folder_identity(folder) == before:
            break
    return manifest, manifest_bytes, contents, problems, unlisted


def _unaccounted(folder: Path, manifest: Manifest) -> list[str]:
    """The listed files nothing verifies, sorted.

    Each listed file must be ``model.onnx``, its external data, a test-data file, a shipped variant
    (verified like ``model.onnx``) or a side file rnnexport writes (``required_operators.config``,
    ``bench.json``) or a learned initial state the ``streaming`` section names. A model under any
    other name, or a variant whose ``variants`` entry was removed, would otherwise ship in a verified
    artifact unverified.
    """
    variants = {v.file for v in shipped_variants(folder, manifest.variants, manifest.files)}
    initial: set[str] = set()
    if manifest.streaming is not None:  # learned initial states, checked against the stream starts
        streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
        initial = {entry.file for entry in streaming.shipped.values()}
    known = {MODEL, EXTERNAL_DATA, REQUIRED_OPERATORS, BENCH_FILE, *variants, *initial}

    def accounted(name: str) -> bool:
        head, _, tail = name.partition("/")
        return name in known or bool(_TEST_SET.fullmatch(head) and _TEST_FILE.fullmatch(tail))

    return sorted(name for name in manifest.files if not accounted(name))


def _refuse_unaccounted(folder: Path, manifest: Manifest) -> None:
    names = _unaccounted(folder, manifest)
    if names:
        raise ArtifactError(
            f"The manifest of {folder} lists {capped(map(repr, names), sep=', ')}, which no shipped "
            "variant entry or other part of an rnnexport artifact accounts for: nothing would verify "
            f"{'it' if len(names) == 1 else 'them'}. Every model file in an artifact is verified (its "
            f"'variants' entry gives its precision and format) or refused. {_REBUILD}"
        )


def check_publishable(folder: Path, *, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise :class:`ArtifactError` unless ``verify`` would accept the manifest and files of the
    staged artifact in ``folder``: the build's last step before publishing it.

    These are verify's own checks, run before it runs anything: the manifest parsed and validated
    (:func:`parse_manifest`), every listed file read within its bound and hashed, nothing extra or
    unaccounted for, and the model's metadata against the manifest. A build that would publish what
    verify refuses is a bug in rnnexport; the caller publishes nothing.
    """
    try:
        manifest, _ = _read_manifest(folder, limits)
        contents, problems, _unlisted = _read_listed(folder, manifest.files, limits)
        if not problems:
            problems = [
                f"'{name}' is listed, but nothing verifies it" for name in _unaccounted(folder, manifest)
            ]
            if MODEL in contents:
                problems += _metadata_problems(onnx.load_from_string(contents[MODEL]), manifest)
            else:
                problems.append(f"{MODEL} is not listed")
    except ArtifactError as exc:
        problems = [str(exc).removesuffix(f" {_REBUILD}").rstrip(".")]
    if problems:
        raise ArtifactError(
            f"This build made an artifact that 'rnnexport verify' would refuse ({capped(problems)}), so "
            "nothing was published. This is a bug in rnnexport: please report it with this message."
        )


@dataclass(frozen=True)
class CheckedArtifact:
    """An artifact as :func:`checked_artifact` read it: every file bounded, hashed and checked.

    Nothing here is to be read from the artifact folder again: ``contents`` holds the bytes of the
    listed files that were hashed (``model.onnx``, variants, test data, initial states), and
    ``source`` is what ONNX Runtime loads: ``model.onnx``'s bytes, or, with external data, the path
    of its private copy, beside the private copy of ``model.onnx.data``.
    """

    folder: Path
    manifest: Manifest
    manifest_sha256: str
    contents: dict[str, bytes]
    unlisted: list[str]
    notes: list[str]
    source: bytes | Path
    # The size of the verified model.onnx.data, or None without external data.
    data_size: int | None
    cases: list[Case]
    float64: dict[str, Feeds]
    # A streaming artifact's initial states (zeros or the shipped tensors); empty otherwise.
    initial: Feeds

    @property
    def model_bytes(self) -> int:
        """The model's size, its external data included: what its time bounds scale with."""
        return len(self.contents[MODEL]) + (self.data_size or 0)


@contextmanager
def checked_artifact(
    folder: Path | str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect_sha256: str | None = None,
    prefix: str = "rnnexport-verify-",
) -> Iterator[CheckedArtifact]:
    """Everything ``verify`` checks before it runs anything, and what it read; ``bench`` reads the same way.

    The folder must be a folder (a ``--force`` rebuild killed between its renames is put back first).
    The manifest and every listed file are read once within their size bounds (links, pipes and
    devices refused unopened) and hashed; the model is parsed from those bytes, its external-data
    references confined to ``model.onnx.data`` (copied, as it was hashed, into a private folder named
    ``prefix``..., which lives as long as the block), and its metadata, contract, test data and stream
    starts are checked against the manifest. Raises :class:`ArtifactError` for any departure and
    :class:`UsageError` for what is not a folder.
    """
    folder = check_path(Path(folder), what="The artifact folder")
    notes = []
    if not os.path.lexists(folder) and folder.parent.is_dir():
        # A --force rebuild killed between its two renames leaves the artifact aside: put it back.
        notes = recover_destination(folder, clean=False)
    notes += first_of(
        f"{leftover.path.name} beside it was left by a build (pid {leftover.pid}) that was killed; "
        "the next 'rnnexport build' into this folder removes it"
        for leftover in _leftovers(folder)
    )
    try:
        mode = folder.lstat().st_mode
    except OSError as exc:
        raise UsageError(
            f"{folder} is not a folder ({describe_os_error(exc)}). "
            "Pass the artifact folder that 'rnnexport build' wrote."
        ) from None
    if not stat.S_ISDIR(mode):
        raise UsageError(
            f"{folder} is {file_kind(mode)}, not a folder. "
            "Pass the artifact folder that 'rnnexport build' wrote."
        )
    # A private folder for what ONNX Runtime must read from files (a model with external data): it
    # gets copies of the verified bytes, never the artifact's own files.
    with tempfile.TemporaryDirectory(prefix=prefix) as private:
        scratch = Path(private)
        manifest, manifest_bytes, contents, problems, unlisted = _read_consistently(
            folder, limits, copy_to=scratch
        )
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        if expect_sha256 is not None and digest != expect_sha256.strip().lower():
            raise ArtifactError(
                f"{folder / MANIFEST} has sha256 {digest}, expected {expect_sha256.strip().lower()}: "
                "this is not the artifact you pinned. Get it again from where it was built."
            )
        if problems:
            raise ArtifactError(
                f"The artifact in {folder} does not match its manifest: " + capped(problems) + f". {_REBUILD}"
            )
        if MODEL not in contents:
            raise ArtifactError(f"The manifest in {folder} does not list {MODEL}. {_REBUILD}")
        data = contents[MODEL]
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
            raise ArtifactError(
                f"{folder / MODEL} is not a readable ONNX model ({exc}). {_REBUILD}"
            ) from None
        copied = scratch / EXTERNAL_DATA
        data_size = copied.stat().st_size if EXTERNAL_DATA in manifest.files and copied.exists() else None
        external, referring = _external_data_problems(model, data_size=data_size)
        if external:
            raise ArtifactError(
                f"{folder / MODEL} refers to data it may not: " + capped(external) + ". An rnnexport "
                f"artifact holds its weights in {MODEL}, or in the one file {EXTERNAL_DATA} beside it, "
                f"listed and hashed in the manifest, at offsets inside it. {_REBUILD}"
            )
        layout = manifest.export.get("external_data")
        recorded = isinstance(layout, dict) and layout.get("file") == EXTERNAL_DATA
        if data_size is not None and (referring == 0 or not recorded):
            raise ArtifactError(
                f"The manifest of {folder} lists {EXTERNAL_DATA}, but "
                + (f"no tensor of {MODEL} refers to it" if referring == 0 else "does not record that layout")
                + f" ('export.external_data'). {_REBUILD}"
            )
        if data_size is None and layout is not None:
            raise ArtifactError(
                f"The manifest of {folder} records weights in external data ('export.external_data'), but "
                f"does not list {EXTERNAL_DATA}. {_REBUILD}"
            )
        source: bytes | Path = data
        if data_size is not None:
            # onnx.checker and ONNX Runtime find the data file beside the model they load (an in-memory
            # model's beside the current folder), so both load the private copies: model.onnx from the
            # bytes hashed and checked above, model.onnx.data as written while it was hashed. A file
            # swapped in the artifact after its check is never read, and nothing outside is looked at.
            write_file(scratch / MODEL, data)
            source = scratch / MODEL
        try:
            check_contract(
                model,
                manifest.contract,
                stage=f"in {folder / MODEL}",
                path=source if isinstance(source, Path) else None,
            )
        except RnnExportError as exc:
            raise ArtifactError(f"{exc} {_REBUILD}") from None
        claims = _metadata_problems(model, manifest)
        if claims:
            raise ArtifactError(
                f"The manifest of {folder} does not describe its model: " + capped(claims) + f". {_REBUILD}"
            )
        listed_sets = sorted({n.split("/", 1)[0] for n in manifest.files if n.startswith("test_data_set_")})
        declared = [e["dir"] for e in manifest.test_data]
        if sorted(declared) != listed_sets:
            raise ArtifactError(
                f"The manifest of {folder} declares the test-data sets "
                f"[{capped(map(repr, sorted(declared)), sep=', ')}] but lists files for "
                f"[{capped(map(repr, listed_sets), sep=', ')}]. {_REBUILD}"
            )
        for name in manifest.files:
            head, _, tail = name.partition("/")
            if _TEST_SET.fullmatch(head) and not _TEST_FILE.fullmatch(tail):
                raise ArtifactError(
                    f"The manifest of {folder} lists '{name}', which no test-data set holds. {_REBUILD}"
                )
        _refuse_unaccounted(folder, manifest)
        cases = _cases_from(contents, declared, manifest.contract, folder=folder)
        if not cases:
            raise ArtifactError(f"{folder} has no test_data_set_N folders to verify against. {_REBUILD}")
        float64 = _float64_from(contents, declared, manifest.contract, folder=folder)
        initial: Feeds = {}
        if manifest.streaming is not None:
            streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
            initial = _initial_from(contents, streaming, folder=folder)
            starts = _start_problems(cases, streaming, initial)
            if starts:
                raise ArtifactError(
                    f"The test data of {folder} does not start its streams where the manifest says a stream "
                    f"starts: {'; '.join(starts[:3])}. {_REBUILD}"
                )
        yield CheckedArtifact(
            folder, manifest, digest, contents, unlisted, notes, source, data_size, cases, float64, initial
        )


def verify_artifact(
    folder: Path | str,
    *,
    device: str = "auto",
    expect_sha256: str | None = None,
    time_limit: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
    runtime: str = "onnxruntime",
) -> ArtifactReport:
    """Re-check a shipped artifact: file hashes, I/O contract, and outputs on the provider that runs.

    Raises :class:`ArtifactError` when the folder itself is wrong (tampered, extra, missing or
    oversized files, links, pipes or devices, external data, a manifest that disagrees with the
    model); returns a report with one :class:`ProviderResult` per device otherwise. The caller
    decides what a non-passing result means. ``expect_sha256`` pins the manifest (and through its
    hashes, every file); ``time_limit`` bounds each provider's run in seconds (default: a base plus
    time in proportion to the model's size, see :class:`~rnnexport.limits.Limits`). ``runtime``
    "openvino" runs the test data on OpenVINO's CPU plugin instead (:mod:`rnnexport.deploy.openvino`).
    """
    from rnnexport.runtime.worker import verify_with_deadline

    run_one: Callable[..., ProviderResult] = verify_with_deadline
    if runtime == "openvino":
        from rnnexport.deploy.openvino import verify_openvino

        run_one = verify_openvino

    with checked_artifact(folder, limits=limits, expect_sha256=expect_sha256) as checked:
        folder, manifest, contents, cases = checked.folder, checked.manifest, checked.contents, checked.cases
        source, data_size, data, float64 = checked.source, checked.data_size, contents[MODEL], checked.float64
        notes, unlisted, digest = checked.notes, checked.unlisted, checked.manifest_sha256
        tf32 = bool(manifest.verification.get("tf32", False))
        criterion = Criterion.from_json(manifest.verification.get("rule"))
        seconds = time_limit if time_limit is not None else limits.run_seconds(len(data) + (data_size or 0))
        devices: list[Device] = ["cpu"] if runtime == "openvino" else resolve_devices(device)
        chained: dict[str, Any] = {}
        if manifest.streaming is not None:
            # Replays each chain: its first call starts from the states' initial values (zeros, or the
            # shipped initial_state/ tensors), every later call from what the provider returned.
            streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
            chained = {"chains": streaming.chains, "state_pairs": streaming.pairs}
        if runtime == "openvino":
            from rnnexport.deploy.openvino import runtime_note

            notes.append(runtime_note())
        results = {
            d: run_one(
                source,
                cases,
                device=d,
                tol=manifest.tolerance(d),
                tf32=tf32 and d == "cuda",
                seconds=seconds,
                criterion=criterion,
                float64=float64,
                seq_axes=seq_axes(manifest.contract),
                **chained,
            )
            for d in devices
        }
        variants = verify_shipped_variants(
            folder,
            manifest.variants,
            contents,
            cases,
            float64,
            run=functools.partial(run_one, seconds=seconds),
            contract=manifest.contract,
            devices=devices,
            own={d: manifest.tolerance(d) for d in devices},
            criterion=criterion,
            tf32=tf32,
        )
        return ArtifactReport(
            folder,
            manifest,
            results,
            notes=notes,
            manifest_sha256=digest,
            variants=variants,
            external_data_bytes=data_size,
            unlisted=unlisted,
            cases=cases,
            float64=float64,
        )
