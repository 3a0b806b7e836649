"""The one exception family rnnexport raises.

The library raises; the CLI reports. Every error a user can cause or fix is a subclass of
:class:`RnnExportError`, carries a one-paragraph message (what was expected, what was got, what to
do) and an exit code. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ArtifactError",
    "ContractError",
    "ExportError",
    "GoldenError",
    "InputError",
    "RnnExportError",
    "SimplifyError",
    "UsageError",
    "VerificationError",
    "WeightsError",
]


class RnnExportError(Exception):
    """Base of every error rnnexport raises on purpose."""

    exit_code: ClassVar[int] = 1


class UsageError(RnnExportError):
    """The request itself is wrong: unknown names, bad sizes, bad paths or options (exit 2)."""

    exit_code: ClassVar[int] = 2


class InputError(UsageError):
    """Tensors supplied by the user do not fit the architecture's I/O contract."""


class WeightsError(RnnExportError):
    """A checkpoint cannot be read safely or does not fit the architecture."""


class ExportError(RnnExportError):
    """torch.onnx could not produce a model."""


class ContractError(ExportError):
    """An ONNX graph does not carry the declared names, dtypes or (dynamic) shapes."""


class SimplifyError(ExportError):
    """onnxsim failed, or its own check of the simplified graph failed."""


class VerificationError(RnnExportError):
    """ONNX Runtime outputs did not match the PyTorch reference, or a provider could not run."""


class ArtifactError(RnnExportError):
    """A shipped artifact folder is incomplete, tampered with or unsafe to read."""


class GoldenError(RnnExportError):
    """Golden reference data is missing, stale or malformed."""
