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

The parts: :mod:`~rnnexport.artifact.manifest` (file names, the :class:`Manifest`, its validation),
:mod:`~rnnexport.artifact.testdata`, :mod:`~rnnexport.artifact.external` (external data),
:mod:`~rnnexport.artifact.files` (bounded reading and hashing), :mod:`~rnnexport.artifact.untrusted`
(:func:`checked_artifact`), :mod:`~rnnexport.artifact.publishing` (staging and the atomic swap) and
:mod:`~rnnexport.artifact.verify`. This package re-exports their public names for users, each loaded
from its module on first use (PEP 562, as in :mod:`rnnexport`): the variant checks read the external-data
rule from :mod:`~rnnexport.artifact.external` while this package's verification runs the variant checks,
so importing the package must not import every part of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnnexport.artifact.external import (
        EXTERNAL_TENSOR_BYTES,
        write_external_model,
    )
    from rnnexport.artifact.files import (
        check_files,
        hash_files,
        sha256_file,
    )
    from rnnexport.artifact.manifest import (
        BENCH_FILE,
        EXTERNAL_DATA,
        MANIFEST,
        MANIFEST_FORMAT,
        MODEL,
        Manifest,
        parse_manifest,
    )
    from rnnexport.artifact.publishing import (
        prepare_destination,
        publish,
        recover_destination,
        staging_folder,
    )
    from rnnexport.artifact.testdata import (
        read_initial_states,
        read_test_data,
        write_initial_states,
        write_test_data,
    )
    from rnnexport.artifact.untrusted import (
        CheckedArtifact,
        check_publishable,
        checked_artifact,
    )
    from rnnexport.artifact.verify import (
        UNLISTED_SHOWN,
        ArtifactReport,
        plan_from_manifest,
        verify_artifact,
    )

__all__ = [
    "BENCH_FILE",
    "EXTERNAL_DATA",
    "EXTERNAL_TENSOR_BYTES",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MODEL",
    "UNLISTED_SHOWN",
    "ArtifactReport",
    "CheckedArtifact",
    "Manifest",
    "check_files",
    "check_publishable",
    "checked_artifact",
    "hash_files",
    "parse_manifest",
    "plan_from_manifest",
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

# Each name's module, resolved on first access.
_LAZY = {
    "EXTERNAL_TENSOR_BYTES": "external",
    "write_external_model": "external",
    "check_files": "files",
    "hash_files": "files",
    "sha256_file": "files",
    "BENCH_FILE": "manifest",
    "EXTERNAL_DATA": "manifest",
    "MANIFEST": "manifest",
    "MANIFEST_FORMAT": "manifest",
    "MODEL": "manifest",
    "Manifest": "manifest",
    "parse_manifest": "manifest",
    "prepare_destination": "publishing",
    "publish": "publishing",
    "recover_destination": "publishing",
    "staging_folder": "publishing",
    "read_initial_states": "testdata",
    "read_test_data": "testdata",
    "write_initial_states": "testdata",
    "write_test_data": "testdata",
    "CheckedArtifact": "untrusted",
    "check_publishable": "untrusted",
    "checked_artifact": "untrusted",
    "UNLISTED_SHOWN": "verify",
    "ArtifactReport": "verify",
    "plan_from_manifest": "verify",
    "verify_artifact": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"rnnexport.artifact.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rnnexport.artifact' has no attribute {name!r}")
