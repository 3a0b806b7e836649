"""The shipped artifact: its manifest, test data, atomic publication, and re-verification.

An artifact folder holds ``model.onnx`` (one file, no external data), ONNX test-data sets
(``test_data_set_N/input_K.pb`` / ``output_K.pb``, the layout ``onnx_test_runner`` and
``onnxruntime_perf_test`` read) and ``manifest.json``, which lists the sha256 of every other file.

Everything here is torch-free: :func:`verify_artifact` runs on the target machine with only
ONNX Runtime, onnx and numpy installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from rnnexport.compare import ProviderResult, Tolerance, verify_on_device
from rnnexport.contract import check_contract
from rnnexport.errors import ArtifactError, InputError, RnnExportError, UsageError
from rnnexport.feeds import Case, validate_feeds
from rnnexport.runtime import DEVICES, Device, resolve_devices
from rnnexport.spec import Contract

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MODEL",
    "ArtifactReport",
    "Manifest",
    "check_files",
    "hash_files",
    "prepare_destination",
    "publish",
    "read_test_data",
    "sha256_file",
    "staging_folder",
    "verify_artifact",
    "write_test_data",
]

MODEL = "model.onnx"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


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
    # A user model's origin (module, class or factory, config); None for a registered architecture.
    source: dict[str, Any] | None = None

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
            "simplification": self.simplification,
            "weights": self.weights,
            "verification": self.verification,
            "test_data": self.test_data,
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError on a malformed document."""
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
            source=None if data.get("source") is None else dict(data["source"]),
        )

    def tolerance(self, device: Device) -> Tolerance:
        """The tolerance recorded for ``device``."""
        return Tolerance(**self.verification["tolerance"][device])

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder``."""
        (folder / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


# -- test data -------------------------------------------------------------------------------------


def _write_tensor(path: Path, name: str, array: np.ndarray) -> None:
    path.write_bytes(numpy_helper.from_array(np.ascontiguousarray(array), name=name).SerializeToString())


def _read_tensor(path: Path) -> tuple[str, np.ndarray]:
    tensor = TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return tensor.name, numpy_helper.to_array(tensor)


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


def read_test_data(folder: Path, contract: Contract) -> list[Case]:
    """Read every ``test_data_set_N`` folder back into cases (sorted by N)."""
    cases = []
    sets = sorted(folder.glob("test_data_set_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    for directory in sets:
        inputs = dict(_read_tensor(directory / f"input_{k}.pb") for k in range(len(contract.inputs)))
        outputs = dict(_read_tensor(directory / f"output_{k}.pb") for k in range(len(contract.outputs)))
        validate_feeds(contract, inputs, origin=str(directory))
        cases.append(Case(directory.name, inputs, outputs))
    return cases


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


def check_files(folder: Path, listed: Mapping[str, str]) -> list[str]:
    """Every way the folder departs from the manifest's file list. Symlinks are reported, never followed."""
    problems = []
    for name in listed:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            problems.append(f"the manifest lists '{name}', a path outside the artifact folder (refused)")
    if problems:
        return problems
    present: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in dirs + files:
            path = Path(root) / entry
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"'{relative}' is a symbolic link (refused: artifacts hold plain files only)")
            elif entry in files and relative != MANIFEST:
                present.add(relative)
    for name in sorted(present - set(listed)):
        problems.append(f"'{name}' is in the folder but not in the manifest")
    for name in sorted(set(listed) - present):
        if not (folder / name).is_symlink():
            problems.append(f"'{name}' is listed in the manifest but missing")
    for name in sorted(present & set(listed)):
        if sha256_file(folder / name) != listed[name]:
            problems.append(f"'{name}' was modified: its sha256 does not match the manifest")
    return problems


def _external_data_problems(model: onnx.ModelProto, folder: Path) -> list[str]:
    problems = []
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node for attr in node.attribute if attr.HasField("t")
    ]
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            target = (folder / location).resolve()
            where = (
                "outside the artifact folder"
                if not target.is_relative_to(folder.resolve())
                else "a side file"
            )
            problems.append(
                f"tensor '{tensor.name}' points at external data '{location}' ({where}); it was not read"
            )
    return problems


# -- destination handling --------------------------------------------------------------------------


def _first_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    while not path.exists():
        path = path.parent
    return path


def prepare_destination(out: Path, name: str, *, force: bool) -> Path:
    """Check that ``out/name`` can receive an artifact, before any work is done; return it."""
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out must be a folder, but {out} is a file. Pass a folder path (it is created if missing)."
        )
    destination = out / name
    if destination.is_symlink():
        raise UsageError(
            f"{destination} is a symbolic link; refusing to write through it. "
            "Remove it or choose another --out."
        )
    if destination.exists() and not force:
        raise UsageError(
            f"{destination} already exists. rnnexport never overwrites silently: pass --force to replace it "
            "completely, or choose another --out."
        )
    probe = _first_existing(out)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write under {out}: {probe} is not writable. Choose another --out.")
    return destination


@contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A temporary folder beside ``destination``, removed on exit unless it was published.

    On any exit, including Ctrl-C, folders this created on the way (a missing ``--out``) are removed
    again if they are still empty, so a failed build leaves the disk as it was.
    """
    existing = _first_existing(destination.parent)
    # Folders this creates on the way, innermost first, so they can be removed again.
    created = list(
        itertools.takewhile(lambda p: p != existing, [destination.parent, *destination.parent.parents])
    )
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    except OSError as exc:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UsageError(
            f"Cannot write under {destination.parent}: {exc.strerror or exc}. "
            "Choose an --out folder you can write to."
        ) from exc
    staging.chmod(0o755)  # mkdtemp makes it private; the published artifact should read like any folder
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


def publish(staging: Path, destination: Path, *, force: bool) -> None:
    """Move a complete artifact into place; with ``force`` the old one is replaced as a whole.

    Each step is a rename within one folder, so a reader sees the old artifact or the new one, never
    a mix, and an interruption leaves the old artifact in place.
    """
    if destination.exists() and not force:  # checked again: someone may have written it meanwhile
        raise UsageError(f"{destination} appeared while building; pass --force to replace it.")
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        destination.rename(old)
    try:
        staging.rename(destination)
    except BaseException:
        if old is not None:
            old.rename(destination)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


# -- re-verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactReport:
    """The outcome of :func:`verify_artifact`: one result per requested device."""

    directory: Path
    manifest: Manifest
    results: dict[Device, ProviderResult]

    @property
    def passed(self) -> bool:
        """True when every requested device verified."""
        return bool(self.results) and all(r.status == "passed" for r in self.results.values())

    def to_json(self) -> dict[str, Any]:
        """Machine-readable summary."""
        return {
            "artifact": str(self.directory),
            "arch": self.manifest.arch,
            "passed": self.passed,
            "files": "ok",
            "providers": {r.provider: r.to_json() for r in self.results.values()},
        }


def _read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(
            f"{folder} is not an rnnexport artifact: expected a plain file {MANIFEST} in it. Pass the folder "
            "that 'rnnexport build' wrote (for example dist/attention)."
        )
    try:
        manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
        # The manifest is not hashed itself, so the parts that verification reads are type-checked.
        tolerances = [manifest.tolerance(device) for device in DEVICES]
        if not all(isinstance(v, float) for t in tolerances for v in (t.atol, t.rtol)):
            raise TypeError("tolerances must be numbers")
        if not all(isinstance(v, str) for v in manifest.files.values()):
            raise TypeError("file hashes must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"{path} is not a valid rnnexport manifest ({type(exc).__name__}: {exc}). Rebuild the artifact."
        ) from exc
    if manifest.format != MANIFEST_FORMAT:
        raise ArtifactError(
            f"{path} has manifest format {manifest.format}; this rnnexport reads {MANIFEST_FORMAT}."
        )
    return manifest


def verify_artifact(folder: Path | str, *, device: str = "auto") -> ArtifactReport:
    """Re-check a shipped artifact: file hashes, I/O contract, and outputs on the provider that runs.

    Raises :class:`ArtifactError` when the folder itself is wrong (tampered, extra or missing files,
    symlinks, external data); returns a report with one :class:`ProviderResult` per device otherwise.
    The caller decides what a non-passing result means.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise UsageError(f"{folder} is not a folder. Pass the artifact folder that 'rnnexport build' wrote.")
    manifest = _read_manifest(folder)
    problems = check_files(folder, manifest.files)
    if problems:
        raise ArtifactError(
            f"The artifact in {folder} does not match its manifest: "
            + "; ".join(problems)
            + ". Rebuild it, or copy it again from the build machine."
        )
    if MODEL not in manifest.files:
        raise ArtifactError(f"The manifest in {folder} does not list {MODEL}. Rebuild the artifact.")
    data = (folder / MODEL).read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise ArtifactError(
            f"{folder / MODEL} is not a readable ONNX model ({exc}). Rebuild the artifact."
        ) from exc
    external = _external_data_problems(model, folder)
    if external:
        raise ArtifactError(
            f"{folder / MODEL} is not self-contained: "
            + "; ".join(external)
            + ". rnnexport artifacts are a single file; rebuild it."
        )
    try:
        check_contract(model, manifest.contract, stage=f"in {folder / MODEL}")
    except RnnExportError as exc:
        raise ArtifactError(str(exc)) from exc
    declared_arch = {p.key: p.value for p in model.metadata_props}.get("rnnexport.arch")
    if declared_arch != manifest.arch:
        raise ArtifactError(
            f"{folder / MODEL} says it is {declared_arch!r}, the manifest says {manifest.arch!r}. "
            "Rebuild the artifact."
        )
    try:
        cases = read_test_data(folder, manifest.contract)
    except (OSError, DecodeError, InputError) as exc:
        raise ArtifactError(
            f"The test data in {folder} cannot be read ({exc}). Rebuild the artifact."
        ) from exc
    if not cases:
        raise ArtifactError(
            f"{folder} has no test_data_set_N folders to verify against. Rebuild the artifact."
        )
    tf32 = bool(manifest.verification.get("tf32", False))
    results = {
        d: verify_on_device(data, cases, device=d, tol=manifest.tolerance(d), tf32=tf32 and d == "cuda")
        for d in resolve_devices(device)
    }
    return ArtifactReport(folder, manifest, results)
