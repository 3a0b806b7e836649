"""rnnexport: export recurrent PyTorch models to ONNX and prove them on ONNX Runtime.

The public API mirrors the command line::

    import rnnexport
    rnnexport.list_architectures()
    manifest = rnnexport.build("attention", out="dist")
    report = rnnexport.verify("dist/attention")

Importing the package is cheap: torch and onnxruntime load only when a function needs them.
"""

from __future__ import annotations

from rnnexport._version import __version__
from rnnexport.errors import RnnExportError
from rnnexport.registry import get_arch, list_architectures
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = [
    "ArchConfig",
    "ArchSpec",
    "RnnExportError",
    "__version__",
    "get_arch",
    "list_architectures",
]
