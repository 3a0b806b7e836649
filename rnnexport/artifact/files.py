"""An artifact folder's files, read as untrusted: listed with ``lstat`` only, read once within their
size bounds, and hashed from the bytes read. Links, pipes and devices are refused unopened.
Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rnnexport.artifact.manifest import _TEST_FILE, _TEST_SET, EXTERNAL_DATA, MANIFEST, MODEL
from rnnexport.errors import ArtifactError
from rnnexport.limits import DEFAULT_LIMITS, Limits, format_bytes
from rnnexport.safeio import (
    copy_bounded,
    describe_os_error,
    file_kind,
    read_bounded,
)

__all__ = ["check_files", "hash_files", "read_listed", "sha256_file"]

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


def read_listed(
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
    return read_listed(folder, listed, limits)[1]
