"""Deploy targets: a verified artifact turned into what another serving runtime loads.

Each target first proves the artifact on the runtime that will serve it, then writes its own folder
(``rnnexport deploy openvino``: OpenVINO IR; ``rnnexport deploy triton``: a Triton model
repository); ``rnnexport deploy web`` writes a static folder for a browser. Torch-free, like
``verify``. This module holds what the targets share: reading the artifact's verified model bytes,
and writing an output folder all at once or not at all (:func:`new_output_folder`, built from
:func:`staging_beside` and :func:`publish_on_success`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnexport.artifact import EXTERNAL_DATA, MODEL, Manifest
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.safeio import check_path, copy_bounded

__all__ = ["copy_verified_model", "new_output_folder", "publish_on_success", "staging_beside"]

_REVERIFY = "The artifact changed after it was verified; copy it again from the build machine."


def copy_verified_model(
    folder: Path, manifest: Manifest, target: Path, *, limits: Limits = DEFAULT_LIMITS
) -> Path:
    """Copy ``model.onnx`` (and ``model.onnx.data``) of a verified artifact into ``target``.

    Each copied file must have the sha256 its manifest lists, the manifest that the verification
    just read: a file swapped in the artifact after the check is refused, never converted.
    Returns the copied model's path.
    """
    names = [MODEL] + ([EXTERNAL_DATA] if EXTERNAL_DATA in manifest.files else [])
    for name in names:
        limit = limits.model_bytes if name == MODEL else limits.external_data_bytes
        digest, _ = copy_bounded(folder / name, target / name, limit=limit, what=name, error=ArtifactError)
        if digest != manifest.files.get(name):
            raise ArtifactError(f"{folder / name} does not match its manifest's sha256. {_REVERIFY}")
    return target / MODEL


@contextmanager
def new_output_folder(out: Path, *, what: str) -> Iterator[Path]:
    """A private folder beside ``out`` to fill; renamed to ``out`` when the block succeeds.

    ``out`` must not exist (a deploy never replaces anything). On any failure the partial folder
    is removed: nothing half-written is left.
    """
    out = check_path(Path(out), what="--out")
    if os.path.lexists(out):
        raise UsageError(f"{out} already exists; {what} never overwrites. Remove it, or pass another --out.")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = staging_beside(out)
    except OSError as exc:
        raise UsageError(f"Cannot write under {parent} ({exc.strerror}). Choose another --out.") from None
    with publish_on_success(staging, out):
        yield staging


def staging_beside(out: Path) -> Path:
    """A new private folder beside ``out`` (whose parent must exist), to fill before it becomes ``out``.

    Beside, so that publishing it is a rename within one folder; hidden (``.NAME.partial-XXXX``), so
    that nothing half-written looks like an output.
    """
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


@contextmanager
def publish_on_success(staging: Path, out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Rename ``staging`` to ``out`` when the block succeeds; on any failure remove ``staging``.

    With ``replace``, an existing ``out`` is moved aside first and removed once the new folder is in
    place (put back if the rename fails); without it, ``out`` must not exist.
    """
    try:
        yield staging
        if replace:
            _replace(staging, out)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; a previous folder is moved aside first and removed after."""
    old = None
    if os.path.lexists(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old is not None and not os.path.lexists(out):
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
