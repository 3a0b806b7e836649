"""``manifest.json``: the artifact's file names, the :class:`Manifest` type, and its validation.

The manifest is not hashed itself, so :func:`parse_manifest` checks every part verification relies on.
Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnexport.errors import ArtifactError, UsageError
from rnnexport.limits import check_tolerance
from rnnexport.runtime import DEVICES, Device
from rnnexport.runtime.compare import Criterion, Tolerance
from rnnexport.safeio import (
    loads_strict,
    write_file,
)
from rnnexport.spec import DTYPES, DYNAMIC_AXES, ROLES, ArchConfig, Contract
from rnnexport.streaming import Streaming, streaming_problems
from rnnexport.text import capped

__all__ = [
    "BENCH_FILE",
    "EXTERNAL_DATA",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MODEL",
    "Manifest",
    "parse_manifest",
]

MODEL = "model.onnx"
# A model whose weights do not fit in one protobuf message keeps them in this one file beside it
# (ONNX external data); model.onnx refers to it by this exact name.
EXTERNAL_DATA = "model.onnx.data"
# What `rnnexport bench --record` writes into an artifact (and lists in its manifest).
BENCH_FILE = "bench.json"
# Tensors smaller than this stay inline in model.onnx: shapes and scalars, not worth an indirection.
EXTERNAL_TENSOR_BYTES = 1024
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1

_REBUILD = "Rebuild the artifact, or copy it again from the build machine."
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
