"""Everything ``verify`` checks before it runs anything: :func:`checked_artifact`.

The folder is untrusted: the manifest and every listed file are read once within bounds and hashed
(:mod:`rnnexport.artifact.files`), the model is parsed from those bytes, its external data confined
to ``model.onnx.data`` (:mod:`rnnexport.artifact.external`), and everything the manifest claims
about the model is checked against the graph and its metadata. Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from rnnexport.artifact.external import external_data_problems
from rnnexport.artifact.files import read_listed
from rnnexport.artifact.manifest import (
    _REBUILD,
    _TEST_FILE,
    _TEST_SET,
    BENCH_FILE,
    EXTERNAL_DATA,
    MANIFEST,
    MODEL,
    Manifest,
    parse_manifest,
)
from rnnexport.artifact.publishing import _leftovers, recover_destination
from rnnexport.artifact.testdata import _cases_from, _float64_from, _initial_from, _start_problems
from rnnexport.errors import ArtifactError, RnnExportError, UsageError
from rnnexport.feeds import Case, Feeds
from rnnexport.graph.contract import check_contract, read_contract
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.safeio import (
    check_path,
    describe_os_error,
    file_kind,
    loads_strict,
    read_bounded,
    write_file,
)
from rnnexport.spec import ArchConfig, Contract
from rnnexport.streaming import Streaming
from rnnexport.text import capped, first_of
from rnnexport.variants.check import shipped_variants
from rnnexport.variants.make import REQUIRED_OPERATORS

__all__ = ["CheckedArtifact", "check_publishable", "checked_artifact", "read_manifest"]


def read_manifest(folder: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Manifest, bytes]:
    """``folder``'s manifest, parsed and validated, and its bytes: a plain file (no link, pipe or
    device), read once within ``limits.manifest_bytes``; anything else raises :class:`ArtifactError`."""
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
        manifest, manifest_bytes = read_manifest(folder, limits)
        contents, problems, unlisted = read_listed(folder, manifest.files, limits, copy_to=copy_to)
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
        manifest, _ = read_manifest(folder, limits)
        contents, problems, _unlisted = read_listed(folder, manifest.files, limits)
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


def _artifact_folder(folder: Path | str) -> tuple[Path, list[str]]:
    """The folder, checked to be a folder (a ``--force`` rebuild killed between its renames is put
    back first), and notes on what killed builds left beside it."""
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
    return folder, notes


def _checked_model(
    folder: Path, manifest: Manifest, data: bytes, scratch: Path
) -> tuple[bytes | Path, int | None]:
    """``model.onnx`` (``data``, hashed) checked against the manifest: its external data confined to
    the private copy of ``model.onnx.data`` in ``scratch``, its contract and its metadata. Returns
    what ONNX Runtime loads and the size of the verified data file (None without one)."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise ArtifactError(f"{folder / MODEL} is not a readable ONNX model ({exc}). {_REBUILD}") from None
    copied = scratch / EXTERNAL_DATA
    data_size = copied.stat().st_size if EXTERNAL_DATA in manifest.files and copied.exists() else None
    external, referring = external_data_problems(model, data_size=data_size)
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
    return source, data_size


def _checked_test_data(
    folder: Path, manifest: Manifest, contents: Mapping[str, bytes]
) -> tuple[list[Case], dict[str, Feeds], Feeds]:
    """The test-data sets the manifest declares (and nothing it does not account for), parsed from
    their hashed bytes, with their float64 references and a streaming model's initial states; every
    set that starts a stream starts from those states."""
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
    return cases, float64, initial


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
    folder, notes = _artifact_folder(folder)
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
        source, data_size = _checked_model(folder, manifest, contents[MODEL], scratch)
        cases, float64, initial = _checked_test_data(folder, manifest, contents)
        yield CheckedArtifact(
            folder, manifest, digest, contents, unlisted, notes, source, data_size, cases, float64, initial
        )
