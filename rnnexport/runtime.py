"""ONNX Runtime sessions that run where they say they run.

ONNX Runtime silently falls back to the CPU when the CUDA provider cannot load (missing CUDA or
cuDNN libraries, no driver, no device): the session is created, ``run`` works, and only
``session.get_providers()`` tells. This module is the one place that handles it: a session whose
first provider is not the requested one is never handed out, and the reason is kept for the report.
Torch-free, so shipped artifacts can be checked on machines without PyTorch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnx import TensorProto, helper

from rnnexport.errors import UsageError, VerificationError
from rnnexport.feeds import Feeds

__all__ = [
    "DEVICES",
    "PROVIDERS",
    "Device",
    "OrtRunner",
    "ProviderProbe",
    "ProviderUnavailableError",
    "create_session",
    "onnxruntime_module",
    "probe_provider",
    "resolve_devices",
]

Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = ("cpu", "cuda")
PROVIDERS: dict[Device, str] = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# ORT's C++ logger prints provider-loading failures as errors on stderr. rnnexport reports them
# itself (as "unavailable", with the reason), so only fatal messages get through.
_ORT_FATAL_ONLY = 4
_ORT_DEFAULT_SEVERITY = 2


class ProviderUnavailableError(VerificationError):
    """The requested execution provider could not be used here."""


@dataclass(frozen=True)
class ProviderProbe:
    """Whether a device's provider really runs on this machine, and why not."""

    device: Device
    provider: str
    available: bool
    reason: str = ""


def _identity_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    # IR version 8 pairs with opset 17 and loads in every supported onnxruntime.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def _cuda_library_problem(ort: Any) -> str:
    """Why the CUDA provider library cannot load, read from the dynamic loader (or "")."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.exists():
        return ""
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return ""


@functools.cache
def onnxruntime_module() -> Any:
    """``import onnxruntime``, refusing an environment where it is missing or installed twice.

    ``onnxruntime`` and ``onnxruntime-gpu`` install the same module; with both present, the files
    of whichever was installed last win one by one, and the module reports the GPU wheel's version
    whatever it really runs. Nothing verified with such an install could be trusted.
    """
    from importlib import metadata

    installed = sorted(
        name for name in ("onnxruntime", "onnxruntime-gpu") if _distribution_present(metadata, name)
    )
    if len(installed) > 1:
        raise UsageError(
            "Both onnxruntime and onnxruntime-gpu are installed in this environment; they install the "
            "same 'onnxruntime' module and overwrite each other's files, so neither can be trusted. Keep "
            "one: pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'rnnexport[cpu]' (or "
            "'rnnexport[gpu]' on an NVIDIA GPU machine)."
        )
    try:
        import onnxruntime
    except ImportError as exc:
        raise UsageError(
            f"ONNX Runtime is not installed here ({exc}). Install rnnexport with one runtime: "
            "pip install 'rnnexport[cpu]', or 'rnnexport[gpu]' on an NVIDIA GPU machine."
        ) from None
    return onnxruntime


def _distribution_present(metadata: Any, name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


@functools.cache
def probe_provider(device: Device) -> ProviderProbe:
    """Create a one-node session on ``device``'s provider and report whether it really ran there."""
    ort = onnxruntime_module()

    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        return ProviderProbe(
            device,
            provider,
            False,
            f"this onnxruntime build ({ort.__version__}) has no {provider}; "
            + ("install onnxruntime-gpu on a machine with an NVIDIA GPU" if device == "cuda" else ""),
        )
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        # Loads CUDA/cuDNN from pip-installed nvidia-* wheels (or torch's) when present; harmless otherwise.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()
    ort.set_default_logger_severity(_ORT_FATAL_ONLY)
    try:
        session = ort.InferenceSession(_identity_model(), providers=[provider])
        ran_on = session.get_providers()
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types
        return ProviderProbe(
            device, provider, False, f"onnxruntime could not create a {provider} session: {exc}"
        )
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
    if ran_on[0] != provider:
        detail = _cuda_library_problem(ort) if device == "cuda" else ""
        return ProviderProbe(
            device,
            provider,
            False,
            f"onnxruntime fell back to {ran_on} when asked for {provider}"
            + (f" ({detail})" if detail else "")
            + (
                "; CUDA needs onnxruntime-gpu with matching CUDA and cuDNN 9 libraries and a GPU"
                if device == "cuda"
                else ""
            ),
        )
    return ProviderProbe(device, provider, True)


def resolve_devices(device: str) -> list[Device]:
    """``cpu`` / ``cuda`` -> that one; ``auto`` -> every provider that really works here."""
    if device == "auto":
        return [d for d in DEVICES if probe_provider(d).available]
    if device not in DEVICES:
        raise UsageError(f"Unknown --device {device!r}: expected one of cpu, cuda, auto.")
    return [device]


def create_session(model: bytes | Path, device: Device, *, tf32: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` that is guaranteed to run on ``device``'s provider.

    ``tf32`` applies to CUDA only: ONNX Runtime's CUDA provider uses TF32 matrix maths on Ampere and
    newer GPUs unless told otherwise, which costs about three decimal digits; rnnexport turns it off
    unless asked. Raises :class:`ProviderUnavailableError` when the provider cannot be used.
    """
    ort = onnxruntime_module()

    probe = probe_provider(device)
    if not probe.available:
        raise ProviderUnavailableError(probe.reason)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    provider: str | tuple[str, dict[str, str]] = PROVIDERS[device]
    if device == "cuda":
        provider = (PROVIDERS[device], {"use_tf32": "1" if tf32 else "0"})
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, sess_options=options, providers=[provider])
    ran_on = session.get_providers()
    if ran_on[0] != PROVIDERS[device]:
        raise ProviderUnavailableError(
            f"onnxruntime created the session on {ran_on}, not {PROVIDERS[device]}"
        )
    return session


class OrtRunner:
    """Runs a session: ``infer(feeds) -> outputs``, the same signature as the PyTorch runner."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    @property
    def provider(self) -> str:
        """The provider the session actually runs on."""
        return str(self.session.get_providers()[0])

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Feeds:
        """Outputs keyed by ONNX output name."""
        results = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, results, strict=True))
