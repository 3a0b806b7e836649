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
    "bucketed_run",
    "create_session",
    "onnxruntime_module",
    "plan_buckets",
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


# -- ragged batches --------------------------------------------------------------------------------


def plan_buckets(
    lengths: np.ndarray, *, step_overhead: float = 8.0, call_overhead: float = 32.0
) -> list[np.ndarray]:
    """Split a batch's rows into groups that cost least to run one group per call.

    ONNX recurrent ops stop each row at its ``sequence_lens``, but they step the whole batch through
    ``max(lengths)`` steps: one long row makes every other row's call as slow as its own. The cost of
    one call over rows ``R`` is modelled as ``call_overhead + max(lengths[R]) * (step_overhead + |R|)``,
    in units of one row for one step: ``step_overhead`` is what a step costs whatever the batch (reading
    the recurrent weights once; about 8-16 rows' worth at hidden 256 on a CPU), ``call_overhead`` what
    a ``session.run`` costs whatever its size. Rows are sorted by length (longest first) and cut into
    contiguous groups by dynamic programming under that model. Returns the groups as arrays of row
    indices into the original batch, longest group first; every row appears exactly once.
    """
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.size == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order].astype(np.float64)
    # Cut points only where the length changes: rows of equal length always share a group.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    bounds = np.r_[starts, ordered.size]  # candidate group boundaries, as row positions
    m = len(starts)
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    previous = np.zeros(m + 1, dtype=np.int64)
    for j in range(1, m + 1):
        # A group of runs i..j-1 spans rows bounds[i]..bounds[j]-1; its longest row is the first.
        i = np.arange(j)
        cost = best[:j] + call_overhead + ordered[bounds[i]] * (step_overhead + (bounds[j] - bounds[i]))
        k = int(np.argmin(cost))
        best[j], previous[j] = cost[k], k
    groups = []
    end = m
    while end > 0:
        begin = int(previous[end])
        groups.append(order[bounds[begin] : bounds[end]])
        end = begin
    return groups[::-1]


def bucketed_run(
    session: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    lengths_input: str = "lengths",
    step_overhead: float = 8.0,
    call_overhead: float = 32.0,
    pad_value: float = 0.0,
) -> Feeds:
    """``session.run`` over a ragged batch, one call per group of rows of similar length.

    Equal to one direct call on every valid step, for models whose rows are independent (every
    built-in architecture): rows are grouped by :func:`plan_buckets`, each group's inputs are cut to
    its longest row along the sequence axis, and the outputs are put back in the original row order.
    Outputs with a sequence axis are padded back to the batch's length with ``pad_value`` (0.0 is what
    the masked built-ins return on padded steps). Batch is axis 0 and the sequence axis is found from
    the session's symbolic input shapes. Pays when lengths differ a lot (one long row among many
    short ones); ``rnnexport bench`` measures it for an artifact.
    """
    seq_axes, seq_symbol, seq_len = _sequence_axes(session, feeds, lengths_input)
    lengths = np.asarray(feeds[lengths_input]).reshape(-1)
    outputs_meta = session.get_outputs()
    names = [o.name for o in outputs_meta]
    out_seq_axes = {
        o.name: next((a for a, d in enumerate(o.shape) if d == seq_symbol), None) for o in outputs_meta
    }
    batch = lengths.size
    results: dict[str, np.ndarray] = {}
    for rows in plan_buckets(lengths, step_overhead=step_overhead, call_overhead=call_overhead):
        steps = int(lengths[rows].max())
        part: dict[str, np.ndarray] = {}
        for name, array in feeds.items():
            taken = np.take(array, rows, axis=0)
            if name in seq_axes:
                taken = np.take(taken, np.arange(steps), axis=seq_axes[name])
            part[name] = np.ascontiguousarray(taken)
        for name, value in zip(names, session.run(names, part), strict=True):
            axis = out_seq_axes[name]
            if name not in results:
                shape = list(value.shape)
                shape[0] = batch
                if axis is not None:
                    shape[axis] = seq_len
                results[name] = np.full(shape, pad_value, dtype=value.dtype)
            index: list[Any] = [slice(None)] * value.ndim
            index[0] = rows
            if axis is not None:
                index[axis] = slice(0, steps)
            results[name][tuple(index)] = value
    return {name: results[name] for name in names}


def _sequence_axes(
    session: Any, feeds: Mapping[str, np.ndarray], lengths_input: str
) -> tuple[dict[str, int], str, int]:
    """For :func:`bucketed_run`: each input's sequence axis, that axis's symbol and the feeds' length.

    The sequence axis is a named dimension after the batch axis of an input other than the lengths;
    raises :class:`UsageError` unless the model has exactly one such symbol and the feeds agree on it.
    """
    inputs = {i.name: i for i in session.get_inputs()}
    if lengths_input not in feeds or lengths_input not in inputs:
        raise UsageError(
            f"bucketed_run needs the lengths input {lengths_input!r} in both the feeds and the model; "
            f"the model's inputs are {sorted(inputs)}, the feeds' {sorted(feeds)}. Pass "
            "lengths_input=NAME for the input holding each row's valid steps."
        )
    lengths = np.asarray(feeds[lengths_input]).reshape(-1)
    seq_axes = {
        name: axis
        for name, meta in inputs.items()
        if name != lengths_input
        for axis, dim in enumerate(meta.shape)
        if axis >= 1 and isinstance(dim, str)
    }
    symbols = {inputs[name].shape[axis] for name, axis in seq_axes.items()}
    if len(symbols) != 1:
        raise UsageError(
            "bucketed_run needs exactly one dynamic sequence axis (a named dimension after the batch "
            f"axis) shared by the model's inputs; found {sorted(symbols) or 'none'}."
        )
    (seq_symbol,) = symbols
    seq = {int(np.shape(feeds[name])[axis]) for name, axis in seq_axes.items()}
    if (
        len(seq) != 1
        or lengths.size != np.shape(feeds[lengths_input])[0]
        or lengths.max(initial=0) > min(seq)
    ):
        raise UsageError(
            f"bucketed_run: the feeds disagree on the batch or sequence size, or a row's length exceeds the "
            f"sequence axis ({sorted(seq)}); expected 1 <= {lengths_input}[b] <= seq for every row."
        )
    return seq_axes, seq_symbol, next(iter(seq))
