"""rnnexport: export recurrent PyTorch models to ONNX and prove them on ONNX Runtime.

The public API mirrors the command line::

    import rnnexport
    rnnexport.list_architectures()
    manifest = rnnexport.build("attention", out="dist")
    manifest = rnnexport.build("attention", rnnexport.BuildOptions(out="dist", verify_seqs=[1, 16000]))
    manifest = rnnexport.build_model_artifact(my_module, io="io.json", out="dist")  # any recurrent model
    report = rnnexport.verify("dist/attention")

Importing the package is cheap: torch and onnxruntime load only when a function needs them, and
``verify`` never loads torch at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rnnexport._version import __version__
from rnnexport.errors import RnnExportError
from rnnexport.registry import get_arch, list_architectures
from rnnexport.spec import ArchConfig, ArchSpec

if TYPE_CHECKING:
    from rnnexport.artifact import ArtifactReport, Manifest
    from rnnexport.artifact import verify_artifact as verify
    from rnnexport.builder.options import BuildOptions
    from rnnexport.builder.pipeline import build, build_model_artifact

__all__ = [
    "ArchConfig",
    "ArchSpec",
    "ArtifactReport",
    "BuildOptions",
    "Manifest",
    "RnnExportError",
    "__version__",
    "build",
    "build_model_artifact",
    "get_arch",
    "list_architectures",
    "verify",
]

# Resolved on first access (PEP 562), so that `import rnnexport` does not import torch.
_LAZY = {
    "BuildOptions": ("rnnexport.builder.options", "BuildOptions"),
    "build": ("rnnexport.builder.pipeline", "build"),
    "build_model_artifact": ("rnnexport.builder.pipeline", "build_model_artifact"),
    "verify": ("rnnexport.artifact", "verify_artifact"),
    "Manifest": ("rnnexport.artifact", "Manifest"),
    "ArtifactReport": ("rnnexport.artifact", "ArtifactReport"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rnnexport' has no attribute {name!r}")
