"""``rnnexport bench``: how fast a shipped artifact runs here, against what else could run it.

Runtimes measured side by side on the same inputs:

- ``onnxruntime``: the artifact's ``model.onnx`` with ONNX Runtime's default session options;
- ``pytorch-eager``: the same model rebuilt in PyTorch from the manifest (architecture, sizes and the
  weights' origin: golden weights or the seeded initialisation; a user's checkpoint only when its
  path is given again; a ``--model`` artifact from the source file the user names, checked against
  the recorded sha256), when torch is installed; for a streaming artifact, the streaming wrapper;
- ``plain-export``: that eager module exported as it stands (``torch.onnx.export`` with dynamic axes,
  then onnxsim, none of rnnexport's export rewrites), run by ONNX Runtime: the baseline an artifact
  must never fall below.

The artifact is untrusted: it is read as ``rnnexport verify`` reads it
(:func:`rnnexport.artifact.checked_artifact`), and every runtime runs in one child process
(:func:`rnnexport.runtime.worker.run_bounded`) that is killed when a step overruns its time bound, so that
neither a hostile model nor SIGTERM arriving during a native call can hold the caller. In that
process the runtimes run in alternating rounds (round 1: A, B, C; round 2: B, C, A; ...), timed
there, so that a noisy neighbour slows all of them alike and the ratios hold on a busy machine. Each
burst starts with untimed warm-up calls and a short pause, because PyTorch's OpenMP workers and ONNX
Runtime's thread pool keep spinning for a moment after a call and would otherwise steal the next
runtime's cores.

Also measured, on the artifact only: recommended session settings per regime (see
:data:`REGIMES`), and for models with a lengths input the cost of ragged batches and of
:func:`rnnexport.runtime.bucketed_run`. Recording (:func:`record_bench`) writes ``bench.json`` into
the artifact and lists its sha256 in the manifest, so ``rnnexport verify`` keeps passing and notices
any later change to it.

Torch-free at import, and usable without torch (ONNX Runtime only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport._version import __version__
from rnnexport.artifact import (
    BENCH_FILE,
    EXTERNAL_DATA,
    MANIFEST,
    MODEL,
    CheckedArtifact,
    Manifest,
    check_files,
    checked_artifact,
    sha256_file,
)
from rnnexport.artifact import _read_manifest as _read_bounded_manifest
from rnnexport.errors import ArtifactError, RnnExportError, UsageError
from rnnexport.feeds import OTHER_AXIS_SIZE, Case, Feeds, make_feeds
from rnnexport.limits import DEFAULT_LIMITS, Limits, format_bytes
from rnnexport.runtime import PROVIDERS, Device, ProviderUnavailableError, bucketed_run, probe_provider
from rnnexport.runtime.compare import compare_outputs
from rnnexport.runtime.worker import Progress, Stopped, run_bounded
from rnnexport.safeio import describe_os_error
from rnnexport.spec import BATCH, SEQ, Contract
from rnnexport.streaming import STATE_IN, STATE_OUT, Streaming, start_states
from rnnexport.text import capped
from rnnexport.text import visible as _safe
from rnnexport.variants import shipped_variants, variant_problem

__all__ = [
    "BENCH_FILE",
    "DEFAULT_BATCHES",
    "DEFAULT_SEQS",
    "REGIMES",
    "RUNTIMES",
    "BenchReport",
    "LatencyStats",
    "check_grid",
    "check_recordable",
    "grid_shapes",
    "parse_sizes",
    "plot_latency",
    "record_bench",
    "require_matplotlib",
    "run_bench",
    "session_options",
]

BENCH_FORMAT = 1
DEFAULT_BATCHES = (1, 32)
DEFAULT_SEQS = (1, 10, 100, 1000)
ONNXRUNTIME, EAGER, PLAIN = "onnxruntime", "pytorch-eager", "plain-export"
RUNTIMES = (ONNXRUNTIME, EAGER, PLAIN)
# The workloads session settings are chosen for: (batch, seq). Latency is one request at a time;
# throughput is a full batch. The advice differs between them (one thread wins at batch 1 for
# small models, all cores win at batch 32), so each gets its own.
REGIMES: dict[str, tuple[int, int]] = {"latency": (1, 100), "throughput": (32, 100)}
# A setting is recommended over ONNX Runtime's defaults only when it beats them by more than this.
SIGNIFICANT_GAIN = 1.05
# Ragged-batch scenario: batch and padded length (the measurements).
RAGGED_BATCH, RAGGED_SEQ = 32, 200
# Pause before each burst, so that the previous runtime's spinning worker threads go to sleep.
SETTLE_SECONDS = 0.005
WARMUP_CALLS = 2


# -- inputs ----------------------------------------------------------------------------------------


def parse_sizes(text: str, *, option: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; sorted, without repeats; anything else is a usage error."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or any(v < 1 or v > 1_000_000 for v in values):
        raise UsageError(
            f"{option} takes a comma-separated list of whole numbers from 1 to 1000000, got {text!r}; "
            f"for example {option} 1,32."
        )
    return tuple(values)


def grid_shapes(batches: Sequence[int], seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Every ``(batch, seq)`` of the grid, batch-major."""
    return [(b, s) for b in batches for s in seqs]


def _call_bytes(contract: Contract, batch: int, seq: int) -> int:
    """Bytes of one call's inputs and outputs at ``batch`` x ``seq`` (what any runtime must hold)."""
    sizes = {BATCH: batch, SEQ: seq}
    total = 0
    for spec in contract.inputs + contract.outputs:
        elements = 1
        for d in spec.shape:
            elements *= sizes.get(d, OTHER_AXIS_SIZE) if isinstance(d, str) else d
        total += elements * np.dtype(spec.dtype).itemsize
    return total


def check_grid(
    contract: Contract, shapes: Sequence[tuple[int, int]], *, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Refuse, before anything is allocated, a shape whose inputs and outputs exceed the bound.

    Raises :class:`UsageError` naming the largest shape, its bytes, and the bound.
    """
    if not shapes:
        return
    batch, seq = max(shapes, key=lambda shape: _call_bytes(contract, *shape))
    needed = _call_bytes(contract, batch, seq)
    if needed > limits.bench_tensor_bytes:
        raise UsageError(
            f"--batch {batch} with --seq {seq} needs {format_bytes(needed)} for one call's inputs and "
            f"outputs ({batch} x {seq} x the model's sizes), over the bound of "
            f"{format_bytes(limits.bench_tensor_bytes)} a benchmark call may use. Choose smaller "
            "batches or sequence lengths."
        )


def _feeds(contract: Contract, start: Callable[[int], Feeds], *, batch: int, seq: int) -> Feeds:
    """Seeded inputs of one call; a streaming model's state inputs are a new stream's (``start``)."""
    return {**make_feeds(contract, batch=batch, seq=seq, rng=np.random.default_rng(0)), **start(batch)}


def _no_states(batch: int) -> Feeds:
    return {}


def _lengths_name(contract: Contract) -> str | None:
    """The input holding each row's valid steps, if the model has one."""
    for t in contract.inputs:
        if getattr(t, "role", None) == "lengths" or t.name == "lengths":
            return t.name
    return None


# -- timing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """One runtime's call latency at one shape.

    Percentiles are over every timed call of every round. ``best_round_p50_ms`` is the lowest of the
    rounds' medians: load from other processes only ever adds time, so on a busy machine it is the
    figure closest to the unloaded one, and the one speedups are computed from.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    best_round_p50_ms: float
    samples: int

    @classmethod
    def of(cls, rounds: Sequence[Sequence[float]]) -> LatencyStats:
        """Statistics of call times in seconds, given round by round."""
        ms = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds if len(r)]) * 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        best = min(float(np.median(r)) for r in rounds if len(r)) * 1e3
        return cls(p50, p90, p99, float(ms.mean()), float(ms.min()), best, int(ms.size))

    def to_json(self) -> dict[str, Any]:
        """For reports."""
        return dataclasses.asdict(self)


def _burst(
    call: Callable[[], object], *, repeats: int, burst_seconds: float, sync: Callable[[], None]
) -> list[float]:
    """Untimed warm-up calls after a short pause, then up to ``repeats`` timed calls (seconds each)."""
    time.sleep(SETTLE_SECONDS)
    for _ in range(WARMUP_CALLS):
        start = time.perf_counter()
        call()
        sync()
        if time.perf_counter() - start > burst_seconds / 4:
            break  # a slow call warms up in one go; a second one would only cost time
    burst: list[float] = []
    burst_start = time.perf_counter()
    for k in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        burst.append(time.perf_counter() - start)
        if k >= 1 and time.perf_counter() - burst_start > burst_seconds:
            break
    return burst


def _interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    sync: Callable[[], None] = lambda: None,
    tick: Callable[[], None] = lambda: None,
    where: str = "",
) -> dict[str, LatencyStats]:
    """Time every call in alternating rounds; the order rotates each round so none is always first.

    A burst is ``repeats`` timed calls, cut short after ``burst_seconds`` (but never fewer than 2), so
    a slow shape does not take minutes. ``tick()`` is called before each burst, outside the timed
    calls (the child process's report to its parent: a new time bound). A call that raises is an
    :class:`ArtifactError` naming the runtime and ``where``.
    """
    names = list(calls)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            tick()
            try:
                times[name].append(
                    _burst(calls[name], repeats=repeats, burst_seconds=burst_seconds, sync=sync)
                )
            except RnnExportError:
                raise
            except Exception as exc:  # ONNX Runtime and PyTorch raise many types; all mean "cannot run"
                raise ArtifactError(
                    f"{f'{name} {where}'.strip()} failed, so nothing was measured: {_first_line(exc)}. A "
                    "model that cannot run at these shapes (one that asks for more memory than the "
                    "machine has, for example) is not one rnnexport builds; 'rnnexport verify' checks it."
                ) from None
    return {n: LatencyStats.of(t) for n, t in times.items()}


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, capped: what a runtime's failure says, without its dump."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return _safe(f"{type(exc).__name__}: {first[:500]}")


# -- ONNX Runtime sessions -------------------------------------------------------------------------

_EXECUTION_MODES = ("sequential", "parallel")
_OPTIMISATION_LEVELS = ("disabled", "basic", "extended", "all")


def session_options(settings: Mapping[str, Any] | None = None) -> Any:
    """An ``onnxruntime.SessionOptions`` with the settings ``rnnexport bench`` recommends (or records).

    ``settings`` keys (all optional; a missing key keeps ONNX Runtime's default):
    ``intra_op_num_threads`` and ``inter_op_num_threads`` (0 = ONNX Runtime's choice),
    ``execution_mode`` (``sequential`` or ``parallel``: independent branches on separate threads) and
    ``graph_optimization_level`` (``disabled``, ``basic``, ``extended`` or ``all``). Example, with
    the settings an artifact's ``bench.json`` recorded for batch-1 latency::

        import json, onnxruntime as ort
        from rnnexport.bench import session_options
        settings = json.load(open("dist/attention/bench.json"))["settings"]["latency"]["recommended"]
        session = ort.InferenceSession("dist/attention/model.onnx", session_options(settings))
    """
    import onnxruntime as ort

    settings = dict(settings or {})
    unknown = sorted(
        set(settings)
        - {"intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level"}
    )
    if unknown:
        raise UsageError(
            f"Unknown session setting(s) {unknown}: expected intra_op_num_threads, inter_op_num_threads, "
            "execution_mode, graph_optimization_level."
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if key in settings:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"Session setting {key} must be a whole number >= 0, got {value!r}.")
            setattr(options, key, value)
    if "execution_mode" in settings:
        mode = settings["execution_mode"]
        if mode not in _EXECUTION_MODES:
            raise UsageError(f"execution_mode must be one of {_EXECUTION_MODES}, got {mode!r}.")
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
    if "graph_optimization_level" in settings:
        level = settings["graph_optimization_level"]
        if level not in _OPTIMISATION_LEVELS:
            raise UsageError(
                f"graph_optimization_level must be one of {_OPTIMISATION_LEVELS}, got {level!r}."
            )
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel,
            "ORT_DISABLE_ALL" if level == "disabled" else f"ORT_ENABLE_{level.upper()}",
        )
    return options


def _session(
    model: bytes | str,
    device: Device,
    settings: Mapping[str, Any] | None = None,
    *,
    ort_format: bool = False,
) -> Any:
    """A session on ``device``'s provider with ``settings``; refused if it fell back elsewhere.

    ``model`` is the model's bytes, or its path when its weights are external data beside it.

    ``ort_format``: ``model`` is in ONNX Runtime's own format (a ``.ort`` variant), which ONNX
    Runtime cannot tell from the bytes alone.
    """
    import onnxruntime as ort

    probe = probe_provider(device)
    if not probe.available:
        raise ProviderUnavailableError(probe.reason)
    provider: str | tuple[str, dict[str, str]] = PROVIDERS[device]
    if device == "cuda":
        provider = (PROVIDERS[device], {"use_tf32": "0"})
    options = session_options(settings)
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(
            f"ONNX Runtime could not load the model on {PROVIDERS[device]}: {_first_line(exc)}."
        ) from None
    if session.get_providers()[0] != PROVIDERS[device]:
        raise ProviderUnavailableError(
            f"onnxruntime created the session on {session.get_providers()}, not {PROVIDERS[device]}"
        )
    return session


def _ort_call(session: Any, feeds: Feeds) -> Callable[[], object]:
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feeds)


# -- runtimes --------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """A runtime that cannot be measured here; the message says why (it goes into the report)."""


@dataclass
class _Runtime:
    """One way of running the model: how to make a timed call for given feeds."""

    name: str
    prepare: Callable[[Feeds], Callable[[], object]]
    sync: Callable[[], None] = lambda: None
    detail: dict[str, Any] = field(default_factory=dict)


def _variant_runtimes(job: _Job) -> list[tuple[_Runtime, dict[str, Any]]]:
    """A runtime per shipped variant other than ``model.onnx`` whose build verified it, from the bytes
    that were hashed; a variant file that is not what its entry says is reported, never loaded."""
    found = []
    passed = {e.get("file") for e in job.manifest.variants if e.get("status") == "passed"}
    for variant in shipped_variants(job.folder, job.manifest.variants, job.manifest.files):
        if variant.file not in passed:
            continue
        name, data = f"{ONNXRUNTIME}:{variant.file}", job.variants[variant.file]
        detail = {"precision": variant.precision, "format": variant.format, "bytes": len(data)}
        problem = variant_problem(
            variant.file, variant.precision, variant.format, data, contract=job.manifest.contract
        )
        if problem:
            found.append((_Runtime(name, _no_call), {"available": False, "reason": problem, **detail}))
            continue
        session = _session(data, job.device, ort_format=variant.format == "ort")
        runtime = _Runtime(name, functools.partial(_ort_call, session), detail=detail)
        found.append((runtime, {"available": True, "provider": PROVIDERS[job.device], **detail}))
    return found


def _no_call(feeds: Feeds) -> Callable[[], object]:
    raise AssertionError("an unavailable runtime is never timed")


def _builtin_model(folder: Path, manifest: Manifest, weights: Path | None) -> tuple[Any, str]:
    """A registered architecture rebuilt from the manifest's sizes and weights' origin, and that origin."""
    import torch

    from rnnexport.builder.reference import build_model
    from rnnexport.registry import get_arch
    from rnnexport.spec import ArchConfig

    try:
        spec = get_arch(manifest.arch)
    except UsageError:
        raise _Unavailable(f"'{manifest.arch}' is not a built-in architecture of this rnnexport") from None
    config = ArchConfig.from_mapping(manifest.config, origin=str(folder / MANIFEST))
    origin = manifest.weights
    source = origin.get("source")
    if weights is not None and source != "user":
        raise UsageError(
            f"--weights was given, but {folder} was built from {source} weights, which rnnexport rebuilds "
            "by itself. Drop --weights."
        )
    if source == "golden":
        from rnnexport.builder.golden import load_golden

        golden = load_golden(spec)
        if golden.meta["weights"]["sha256"] != origin.get("sha256"):
            raise _Unavailable(
                "the golden weights in this rnnexport differ from those the artifact was built with"
            )
        state = {k: torch.from_numpy(v) for k, v in golden.weights.items()}
        return build_model(spec, config, state_dict=state), "golden"
    if source == "seeded":
        return build_model(spec, config, seed=int(origin.get("seed", 0))), "seeded"
    if source == "user":
        _check_weights_file(folder, manifest, weights)
        assert weights is not None
        from rnnexport.builder.weights import load_state_dict

        return build_model(spec, config, state_dict=load_state_dict(weights)), "user"
    raise _Unavailable(f"the manifest records weights of unknown origin {source!r}")


def _check_weights_file(folder: Path, manifest: Manifest, weights: Path | None) -> None:
    """``--weights`` must be given, and be the checkpoint the artifact was built from (its sha256)."""
    origin = manifest.weights
    if weights is None:
        raise _Unavailable(
            f"the artifact was built from the user's weights ({origin.get('file', 'a checkpoint')}); "
            "pass --weights FILE to include PyTorch eager and the plain export"
        )
    if not weights.is_file():
        raise UsageError(f"--weights {weights} does not exist (or is not a file). Pass the checkpoint.")
    if sha256_file(weights) != origin.get("sha256"):
        raise UsageError(
            f"--weights {weights} is not the checkpoint {folder} was built from: its sha256 differs "
            f"from the manifest's ({origin.get('file', '?')}). Pass that checkpoint."
        )


def _source_target(folder: Path, manifest: Manifest, model: str | None) -> str:
    """``--model`` checked against the manifest's ``source``: ``FILE.py:NAME`` (or ``module:NAME``) to load.

    ``--model`` may name the file alone (``models.py``) or the file and the class or factory
    (``models.py:Tagger``); a file must have the sha256 the manifest records for the one the
    artifact was built from. Nothing is ever imported unless the user names it: code found beside
    an artifact (which may come from anywhere) is not run.
    """
    source = manifest.source or {}
    name = source.get("class", source.get("factory"))
    recorded_file, module = source.get("file"), source.get("module")
    where_recorded = _safe(recorded_file if recorded_file is not None else module)
    if model is None:
        digest = f" (sha256 {source.get('file_sha256')})" if recorded_file is not None else ""
        raise _Unavailable(
            f"'{_safe(manifest.arch)}' was built from your model {where_recorded}:{_safe(name)}; pass "
            f"--model PATH/TO/{where_recorded}{digest} to rebuild it in PyTorch (rnnexport does not "
            "import code it was not pointed at)"
        )
    where, sep, given = model.rpartition(":")
    if not sep or not given.isidentifier():
        where, given = model, str(name)
    if given != name:
        raise UsageError(
            f"--model {_safe(model)} names {_safe(given)!r}, but {folder} was built from "
            f"{where_recorded}:{_safe(name)}. Pass --model {where_recorded} (the name is read from the "
            "manifest), or the artifact that was built from this model."
        )
    if recorded_file is None:
        if where != module:
            raise UsageError(
                f"--model {_safe(model)}: {folder} was built from the module {_safe(module)!r}, not "
                f"{_safe(where)!r}. Pass --model {_safe(module)}:{_safe(name)}."
            )
        return f"{where}:{name}"
    path = Path(where)
    if not path.is_file():
        raise UsageError(
            f"--model {_safe(model)}: no such file. Pass the model file {folder} was built from "
            f"({where_recorded}, sha256 {source.get('file_sha256')})."
        )
    digest = sha256_file(path)
    if digest != source.get("file_sha256"):
        raise UsageError(
            f"--model {_safe(where)} is not the file {folder} was built from: its sha256 is {digest}, the "
            f"manifest records {source.get('file_sha256')} for {where_recorded}. Pass that version of the "
            "file (timing another model against this artifact would compare different things), or "
            "rebuild the artifact from this one."
        )
    return f"{where}:{name}"


def _user_model(folder: Path, manifest: Manifest, weights: Path | None, model: str | None) -> tuple[Any, str]:
    """A ``--model`` artifact's module, rebuilt from its source file, config and weights."""
    from rnnexport.builder.usermodel import instantiate, load_factory, load_user_weights, state_sha256
    from rnnexport.builder.weights import read_checkpoint

    if model is None and weights is not None:
        source = manifest.source or {}
        where = _safe(source.get("file", source.get("module")))
        raise UsageError(
            f"--weights {weights} serves to rebuild {folder}'s model in PyTorch, which also needs the model "
            f"it was built from: add --model PATH/TO/{where} (a --model artifact is rebuilt from its source)."
        )
    target = _source_target(folder, manifest, model)
    if manifest.weights.get("source") == "user":
        _check_weights_file(folder, manifest, weights)
    factory, loaded = load_factory(target)
    source = manifest.source or {}
    if loaded.kind not in source:
        raise UsageError(
            f"--model {_safe(target)} is a {loaded.kind}, but {folder} was built from a "
            f"{'factory' if loaded.kind == 'class' else 'class'} of that name. Pass the file it was built "
            "from."
        )
    module = instantiate(factory, dict(source.get("config", manifest.config)), what=loaded.name)
    origin = manifest.weights
    if weights is not None:
        # Read as the build read it: the recorded entry and prefix (none recorded: keys as saved).
        checkpoint = read_checkpoint(
            weights,
            module=module,
            state_dict_key=origin.get("state_dict_key"),
            strip_prefix=origin.get("stripped_prefix", ""),
        )
        load_user_weights(module, checkpoint, ignore_unexpected=bool(origin.get("ignored_keys")))
    if origin.get("source") == "module" and state_sha256(module) != origin.get("state_sha256"):
        if weights is not None:
            raise UsageError(
                f"--weights {weights} does not hold the weights {folder} was built with (the digest of the "
                "loaded state differs from the manifest's state_sha256). Pass a checkpoint of those weights."
            )
        raise _Unavailable(
            f"{_safe(loaded.name)}(**config) does not come out with the weights the artifact was built with "
            "(its initialisation is random and not seeded?); pass --weights with a checkpoint of them "
            "(torch.save(model.state_dict(), 'weights.pt') before building)"
        )
    return module, str(origin.get("source"))


def _as_streaming(model: Any, folder: Path, manifest: Manifest) -> Any:
    """The streaming wrapper around ``model`` (states in and out, as the artifact takes them), checked to
    carry the states the manifest declares, with the same initial values."""
    from rnnexport.builder.stateful import make_streaming
    from rnnexport.registry import get_arch
    from rnnexport.spec import ArchConfig, Contract, TensorSpec

    contract = manifest.contract
    base = Contract(
        tuple(t for t in contract.inputs if not t.name.startswith(STATE_IN)),
        tuple(t for t in contract.outputs if not t.name.startswith(STATE_OUT)),
    )
    method: str = "forward"
    extra: tuple[TensorSpec, ...] = ()
    if manifest.source is None:
        spec = get_arch(manifest.arch)
        if spec.streaming is not None:
            config = ArchConfig.from_mapping(manifest.config, origin=str(folder / MANIFEST))
            method, extra = (
                spec.streaming.method,
                tuple(spec.resolve(t, config) for t in spec.streaming.states),
            )
    stream = make_streaming(model, base, method=method, extra=extra)
    declared = {k: v for k, v in (manifest.streaming or {}).items() if k != "chains"}
    if stream.streaming.to_json(chains=False) != declared:
        raise _Unavailable(
            "the rebuilt model streams with other states or initial values than the artifact declares"
        )
    return stream.module


def _rebuild_eager(
    folder: Path,
    manifest: Manifest,
    weights: Path | None,
    model: str | None,
    device: Device,
    cases: Sequence[Case],
    *,
    torch_here: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The artifact's model in PyTorch, proven to reproduce the artifact's test data.

    A registered architecture is rebuilt from the manifest; a ``--model`` artifact from the source
    file the user passes as ``model`` (see :func:`_source_target`). A streaming artifact's model is
    the streaming wrapper, which takes and returns the states as the artifact does. Raises
    :class:`_Unavailable` when it cannot be rebuilt here (no torch, an architecture this rnnexport
    does not know, no source or weights given), and :class:`UsageError` when ``weights`` or
    ``model`` is not what the artifact was built from. ``cases`` are the artifact's checked test
    data; ``torch_here`` False: the caller found no torch (the check runs in the caller's process).
    """
    try:
        if not torch_here:
            raise ImportError("torch")
        import torch
    except ImportError:
        if model is not None or weights is not None:
            raise UsageError(
                "--model and --weights rebuild the artifact's model in PyTorch, which is not installed "
                "here. Install it (pip install 'rnnexport[build,cpu]') or drop them."
            ) from None
        raise _Unavailable(
            "torch is not installed here (install the build extra: pip install 'rnnexport[build,cpu]')"
        ) from None
    from rnnexport.builder.reference import ModuleRunner

    if manifest.source is not None:
        module, source = _user_model(folder, manifest, weights, model)
    elif model is not None:
        raise UsageError(
            f"--model is for artifacts built from your own model; {folder} holds the built-in architecture "
            f"'{_safe(manifest.arch)}', which rnnexport rebuilds by itself. Drop --model."
        )
    else:
        module, source = _builtin_model(folder, manifest, weights)
    module = module.eval()
    if manifest.streaming is not None:
        module = _as_streaming(module, folder, manifest)
    # Prove the rebuilt model is the artifact's model before timing it against the artifact.
    runner = ModuleRunner(manifest.contract, module)
    for case in cases[:1]:
        with torch.inference_mode():
            got = runner.infer(case.inputs)
        comparisons = compare_outputs(got, case.outputs, manifest.tolerance("cpu"))
        if not all(c.passed for c in comparisons):
            raise _Unavailable(
                "the rebuilt PyTorch model does not reproduce the artifact's test data "
                f"({capped(str(c.problem) for c in comparisons if c.problem)})"
            )
    return module.to(device), {"weights": source}


def _eager_runtime(model: Any, contract: Contract, device: Device, threads: int | None) -> _Runtime:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = torch.device(device)

    def prepare(feeds: Feeds) -> Callable[[], object]:
        args = [torch.from_numpy(feeds[n]).to(torch_device) for n in contract.input_names]

        def call() -> object:
            with torch.inference_mode():
                return model(*args)

        return call

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return _Runtime(EAGER, prepare, sync, {"torch": torch.__version__, "threads": torch.get_num_threads()})


def plain_export(model: Any, contract: Contract, *, opset: int) -> bytes:
    """``model`` exported as it stands: TorchScript ``torch.onnx.export`` with the contract's dynamic
    axes, then onnxsim. No rnnexport rewrite, no verification beyond the contract check; the caller
    compares its outputs before trusting it."""
    import torch

    from rnnexport.graph.contract import check_contract
    from rnnexport.graph.simplify import native_stderr_discarded, simplify_onnx

    example = make_feeds(contract, batch=2, seq=3, rng=np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[n]) for n in contract.input_names)
    dynamic_axes = {t.name: t.dynamic_axes for t in contract.inputs + contract.outputs if t.dynamic_axes}
    buffer = io.BytesIO()
    # The exporter's deprecation and batch-size warnings are noise here, as in rnnexport build.
    # No export patches: the modules trace as they run in eager PyTorch (rnnexport's rewrites are
    # applied from outside the model, by rnnexport.builder.patch, during its own export only).
    # torch's C++ shape inference warns about packed sequences straight to the terminal.
    with (
        native_stderr_discarded(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.cpu(),
            args,
            buffer,  # type: ignore[arg-type]  # file objects work; the stub admits paths only
            dynamo=False,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            input_names=contract.input_names,
            output_names=contract.output_names,
        )
    exported = onnx.load_from_string(buffer.getvalue())
    simplified, _ = simplify_onnx(exported, check_feeds=example)
    check_contract(simplified, contract, stage="plain export")
    return bytes(simplified.SerializeToString())


def _plain_runtime(
    model: Any, manifest: Manifest, device: Device, cases: Sequence[Case]
) -> tuple[_Runtime, bytes]:
    """The plain export as a runtime, refused (as unavailable) unless it matches the artifact's test data."""
    opset = int(manifest.export.get("opset", 17))
    try:
        data = plain_export(model, manifest.contract, opset=opset)
    except RnnExportError as exc:
        raise _Unavailable(f"the plain export could not be built: {exc}") from None
    except Exception as exc:  # the exporter raises many types; all mean "no baseline"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _Unavailable(
            f"torch.onnx could not export the model plainly: {type(exc).__name__}: {first}"
        ) from None
    finally:
        model.to(device)
    try:
        session = _session(data, device)
    except RnnExportError as exc:
        raise _Unavailable(str(exc)) from None
    names = [o.name for o in session.get_outputs()]
    tolerance = manifest.tolerance("cpu")
    for case in cases:
        got = dict(zip(names, session.run(names, case.inputs), strict=True))
        if not all(c.passed for c in compare_outputs(got, case.outputs, tolerance)):
            raise _Unavailable(
                "the plain export computes something else than the model at the artifact's test shapes "
                "(it has no dynamic-shape support for this model), so it is no baseline"
            )
    graph = onnx.load_from_string(data).graph
    detail = {"opset": opset, "nodes": len(graph.node), "bytes": len(data), **_graph_facts(graph)}
    return _Runtime(PLAIN, lambda feeds: _ort_call(session, feeds), detail=detail), data


# -- graph facts -----------------------------------------------------------------------------------

_RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def _readable(tensor: onnx.TensorProto, base: Path | None) -> bool:
    """Whether ``tensor``'s values can be read: inline, or external in ``base``'s model.onnx.data
    (the one file an artifact may hold them in, its private copy, at a region checked to lie inside
    it; any other reference is left unread)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL and not len(tensor.external_data):
        return True
    location = next((e.value for e in tensor.external_data if e.key == "location"), None)
    return base is not None and location == EXTERNAL_DATA


def _graph_facts(graph: onnx.GraphProto, base: Path | None = None) -> dict[str, Any]:
    """Recurrent nodes and their recurrence matrices: bytes and the fraction of exact zeros.

    ``base``: the private folder holding the checked copy of a model's model.onnx.data.
    """
    from onnx import numpy_helper

    # Weights are initializers, or Constant nodes where the exporter handed them over as such.
    tensors = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                tensors[node.output[0]] = value
    nodes = []
    for node in graph.node:
        recurrence = (
            tensors.get(node.input[2]) if node.op_type in _RECURRENT_OPS and len(node.input) > 2 else None
        )
        if recurrence is not None and _readable(recurrence, base):
            r = numpy_helper.to_array(recurrence, base_dir=str(base or ""))
            nodes.append(
                {
                    "op": node.op_type,
                    "recurrence_shape": list(r.shape),
                    "recurrence_bytes": int(r.nbytes),
                    "recurrence_zero_fraction": float(np.mean(r == 0)),
                }
            )
    return {"recurrent_nodes": nodes}


# -- session settings ------------------------------------------------------------------------------


def _candidates(recurrent_nodes: int) -> list[dict[str, Any]]:
    """Settings worth trying: threads 1 vs all cores, parallel execution for independent branches,
    and the graph optimisation levels; ``{}`` is ONNX Runtime's defaults (the reference)."""
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    modes = ["sequential", "parallel"] if recurrent_nodes >= 2 else ["sequential"]
    found: list[dict[str, Any]] = [{}]
    for level in ("basic", "extended", "all"):
        for n in threads:
            for mode in modes:
                candidate: dict[str, Any] = {
                    "intra_op_num_threads": n,
                    "execution_mode": mode,
                    "graph_optimization_level": level,
                }
                if mode == "parallel":
                    candidate["inter_op_num_threads"] = cores
                found.append(candidate)
    return found


def _label(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "onnxruntime defaults"
    text = f"threads {settings['intra_op_num_threads']}, {settings['execution_mode']}"
    if "inter_op_num_threads" in settings:
        text += f" (inter-op {settings['inter_op_num_threads']})"
    return f"{text}, optimisation {settings['graph_optimization_level']}"


def _settings_sweep(
    model: bytes | str,
    contract: Contract,
    recurrent_nodes: int,
    *,
    start: Callable[[int], Feeds] = _no_states,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    bound: Callable[[int, int], Callable[[], None]] = lambda batch, seq: lambda: None,
) -> dict[str, Any]:
    """Measure each candidate in each regime; recommend the fastest where it beats the defaults.

    ``bound(batch, seq)`` is the ``tick`` of :func:`_interleaved` at that shape.
    """
    candidates = _candidates(recurrent_nodes)
    sessions = [_session(model, "cpu", c) for c in candidates]
    out: dict[str, Any] = {}
    for regime, (batch, seq) in REGIMES.items():
        feeds = _feeds(contract, start, batch=batch, seq=seq)
        calls = {str(k): _ort_call(s, feeds) for k, s in enumerate(sessions)}
        stats = _interleaved(
            calls,
            rounds=rounds,
            repeats=repeats,
            burst_seconds=burst_seconds,
            tick=bound(batch, seq),
            where=f"(session settings candidate, {regime} regime, batch {batch}, seq {seq})",
        )
        measured = [
            {"settings": c, "label": _label(c), **stats[str(k)].to_json()} for k, c in enumerate(candidates)
        ]
        key = "best_round_p50_ms"
        default = measured[0][key]
        fastest = min(measured, key=lambda m: m[key])
        # Both figures must agree: on a busy machine one unlucky set of rounds can make either alone
        # name a winner that is not faster.
        pooled = measured[0]["p50_ms"] / fastest["p50_ms"]
        chosen = fastest if min(default / fastest[key], pooled) > SIGNIFICANT_GAIN else measured[0]
        out[regime] = {
            "batch": batch,
            "seq": seq,
            "recommended": chosen["settings"],
            "label": chosen["label"],
            "p50_ms": chosen[key],
            "defaults_p50_ms": default,
            "gain_over_defaults": default / chosen[key],
            "candidates": measured,
        }
    out["rule"] = (
        f"per regime, the candidate with the lowest best-round median, if it beats onnxruntime's defaults "
        f"by more than {SIGNIFICANT_GAIN:.2f}x in both best-round and overall median; otherwise the defaults"
    )
    return out


# -- ragged batches --------------------------------------------------------------------------------


def _ragged(
    session: Any,
    contract: Contract,
    lengths_name: str,
    *,
    start: Callable[[int], Feeds] = _no_states,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    bound: Callable[[int, int], Callable[[], None]] = lambda batch, seq: lambda: None,
) -> dict[str, Any]:
    """What ``sequence_lens`` costs when rows differ in length, and what bucketing saves."""
    batch, seq = RAGGED_BATCH, RAGGED_SEQ
    base = _feeds(contract, start, batch=batch, seq=seq)
    rng = np.random.default_rng(1)
    scenarios: dict[str, np.ndarray] = {
        f"all rows {seq}": np.full(batch, seq),
        f"one row {seq}, {batch - 1} rows of 1": np.r_[seq, np.ones(batch - 1)],
        f"all rows {seq // 2} (padded to {seq})": np.full(batch, seq // 2),
        f"lengths uniform in 1..{seq}": rng.integers(1, seq + 1, size=batch),
    }
    calls: dict[str, Callable[[], object]] = {}
    for name, lengths in scenarios.items():
        feeds = {**base, lengths_name: lengths.astype(base[lengths_name].dtype)}
        calls[name] = _ort_call(session, feeds)
        if lengths.min() != lengths.max():
            calls[f"{name}, bucketed"] = functools.partial(
                bucketed_run, session, feeds, lengths_input=lengths_name
            )
    # The same short rows with no long one: what the batch would cost if it were not padded.
    unpadded = _feeds(contract, start, batch=batch, seq=seq // 2)
    unpadded[lengths_name] = np.full(batch, seq // 2, dtype=unpadded[lengths_name].dtype)
    calls[f"all rows {seq // 2} (seq {seq // 2}, no padding)"] = _ort_call(session, unpadded)
    stats = _interleaved(
        calls,
        rounds=rounds,
        repeats=repeats,
        burst_seconds=burst_seconds,
        tick=bound(batch, seq),
        where=f"(ragged batches, batch {batch}, seq {seq})",
    )
    return {
        "batch": batch,
        "seq": seq,
        "scenarios": {name: s.to_json() for name, s in stats.items()},
        "note": (
            "ONNX Runtime steps the whole batch through max(lengths) steps: rows stop contributing at "
            "their length, but the time follows the longest row; bucketed_run groups rows by length"
        ),
    }


# -- the whole benchmark ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchReport:
    """Everything ``rnnexport bench`` measured; :meth:`to_json` is the ``--json`` document."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return self.data

    def rows(self) -> list[dict[str, Any]]:
        """One row per shape and runtime."""
        rows: list[dict[str, Any]] = self.data["results"]
        return rows


def _machine() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "rnnexport": __version__,
    }


@dataclass(frozen=True)
class _Job:
    """What the measuring child process gets: the checked artifact's bytes, never its folder, and the
    options. ``folder`` names the artifact in messages and the report; nothing is read from it."""

    folder: Path
    manifest: Manifest
    model: bytes  # model.onnx, as hashed
    source: bytes | Path  # what ONNX Runtime loads: those bytes, or their private copy's path
    private: Path | None  # the private folder holding the checked model.onnx.data, if any
    variants: dict[str, bytes]
    cases: list[Case]
    initial: Feeds
    shapes: list[tuple[int, int]]
    device: Device
    weights: Path | None
    user_model: str | None
    runtimes: tuple[str, ...]
    variant_runtimes: bool
    settings: bool
    ragged: bool
    rounds: int
    repeats: int
    burst_seconds: float
    torch_threads: int | None
    torch_here: bool
    limits: Limits
    time_limit: float | None

    def setup_seconds(self) -> tuple[float, str]:
        """The bound of a step that loads or rebuilds the model (verify's for running its test data),
        and how it was chosen."""
        if self.time_limit is not None:
            return self.time_limit, "--time-limit"
        size = len(self.model) + self.external_bytes()
        return self.limits.run_seconds(size), f"the bound 'rnnexport verify' gives a {size:,}-byte model"

    def external_bytes(self) -> int:
        return 0 if self.private is None else (self.private / EXTERNAL_DATA).stat().st_size

    def burst_seconds_bound(self, batch: int, seq: int) -> tuple[float, str]:
        """The bound of one burst at ``batch`` x ``seq``, and how it was derived: the burst's own time
        plus 4 calls (2 untimed warm-up calls, one started just before the burst's time ends, and the
        2nd timed call of a slow shape), each within :meth:`Limits.bench_call_seconds`."""
        if self.time_limit is not None:
            return self.time_limit, "--time-limit"
        size = len(self.model) + self.external_bytes()
        call = self.limits.bench_call_seconds(size, batch, seq)
        why = (
            f"derived from the grid: a {self.burst_seconds:g} s burst of up to {self.repeats} timed calls "
            f"plus 4 calls of at most {call:.3g} s at batch {batch}, seq {seq} "
            f"({self.limits.bench_call_seconds_base:g} s + {self.limits.bench_call_seconds_per_byte_step:g} "
            f"s per byte of the {size:,}-byte model per row and step)"
        )
        return self.burst_seconds + SETTLE_SECONDS + 4 * call, why


def run_bench(
    folder: Path | str,
    *,
    shapes: Sequence[tuple[int, int]] | None = None,
    device: Device = "cpu",
    weights: Path | None = None,
    model: str | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    variants: bool = True,
    settings: bool = True,
    ragged: bool = True,
    rounds: int = 5,
    repeats: int = 20,
    burst_seconds: float = 0.5,
    torch_threads: int | None = None,
    on_step: Callable[[str], None] = lambda _: None,
    limits: Limits = DEFAULT_LIMITS,
    time_limit: float | None = None,
) -> BenchReport:
    """Benchmark an artifact folder; see the module docstring for what runs and how it is timed.

    ``shapes`` are ``(batch, seq)`` pairs (default: the :data:`DEFAULT_BATCHES` x
    :data:`DEFAULT_SEQS` grid). ``runtimes`` selects among :data:`RUNTIMES`; ``onnxruntime`` always
    runs, and with ``variants`` every other shipped model file too (``onnxruntime:model.int8.onnx``).
    ``torch_threads`` sets PyTorch's intra-op threads for eager (default: PyTorch's own choice).
    ``model`` is the source of an artifact built from the user's own model (``FILE.py`` or
    ``FILE.py:NAME``, checked against the manifest's sha256) and ``weights`` the checkpoint it was
    built with, when it was; both only serve to rebuild it in PyTorch, and are refused where they do
    not. A runtime that cannot run here is reported with the reason, not raised. A streaming
    artifact is timed on a new stream's first chunk: its state inputs are the initial state.

    The artifact is untrusted, and read as ``rnnexport verify`` reads it
    (:func:`~rnnexport.artifact.checked_artifact`: bounded, hashed, external data only from a
    private copy). Every runtime runs in one child process (:func:`~rnnexport.runtime.worker.run_bounded`),
    timed there, and killed when a step overruns its bound: loading, within ``limits.run_seconds``;
    each burst, within a bound derived from its shape (see :meth:`_Job.burst_seconds_bound`);
    ``time_limit`` replaces both. One call's inputs and outputs must fit
    ``limits.bench_tensor_bytes`` (:func:`check_grid`).
    """
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise UsageError(f"Unknown runtime(s) {unknown}: expected some of {', '.join(RUNTIMES)}.")
    if torch_threads is not None and torch_threads < 1:
        raise UsageError(f"--torch-threads must be at least 1, got {torch_threads}.")
    if rounds < 1 or repeats < 1:
        raise UsageError(f"rounds and repeats must be at least 1, got {rounds} and {repeats}.")
    if time_limit is not None and not 0 < time_limit < float("inf"):
        raise UsageError(f"--time-limit must be a positive number of seconds, got {time_limit}.")
    if (model is not None or weights is not None) and EAGER not in runtimes and PLAIN not in runtimes:
        raise UsageError(
            "--model and --weights rebuild the artifact's model in PyTorch, for pytorch-eager and "
            "plain-export, but neither is requested (--no-eager --no-plain). Drop them, or time those too."
        )
    shapes = list(shapes or grid_shapes(DEFAULT_BATCHES, DEFAULT_SEQS))
    with checked_artifact(folder, limits=limits, prefix="rnnexport-bench-") as checked:
        lengths = _lengths_name(checked.manifest.contract) if ragged else None
        extra = [
            *(REGIMES.values() if settings and device == "cpu" else ()),
            *([(RAGGED_BATCH, RAGGED_SEQ)] if lengths is not None else []),
        ]
        check_grid(checked.manifest.contract, [*shapes, *extra], limits=limits)
        job = _job(
            checked,
            shapes=shapes,
            device=device,
            weights=weights,
            user_model=model,
            runtimes=tuple(runtimes),
            variant_runtimes=variants,
            settings=settings,
            ragged=ragged,
            rounds=rounds,
            repeats=repeats,
            burst_seconds=burst_seconds,
            torch_threads=torch_threads,
            limits=limits,
            time_limit=time_limit,
        )
        try:
            data = run_bounded(_measure, job, seconds=job.setup_seconds()[0], on_step=on_step, progress=True)
        except Stopped as stopped:
            where = f"'{stopped.step}'" if stopped.step else "loading the model"
            if stopped.timed_out:
                raise ArtifactError(
                    f"The benchmark of {checked.folder} did not finish {where} within the time bound of "
                    f"{stopped.seconds:.3g} s ({stopped.why or 'for starting'}), and was stopped. A model "
                    "that runs this long (a Loop with an enormous trip count, for example) is not one "
                    "rnnexport builds: run 'rnnexport verify' on it. If it is legitimately that slow, "
                    "pass a larger --time-limit (seconds per step)."
                ) from None
            raise ArtifactError(
                f"The benchmark of {checked.folder} stopped during {where}: the process running the "
                f"model {stopped.how} ({_safe(stopped.last_words)}). A model that exhausts the machine's "
                "memory, for example, ends this way; run 'rnnexport verify' on it."
            ) from None
    assert isinstance(data, dict)
    return BenchReport(data)


def _job(checked: CheckedArtifact, **options: Any) -> _Job:
    """The child's job: the checked bytes (``model.onnx`` from the private copy when it has external
    data beside it) and the options; whether torch is importable is decided here, in the caller."""
    try:
        torch_here = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a module entry without a spec: not importable
        torch_here = False
    variants = {
        v.file: checked.contents[v.file]
        for v in shipped_variants(checked.folder, checked.manifest.variants, checked.manifest.files)
    }
    return _Job(
        folder=checked.folder,
        manifest=checked.manifest,
        model=checked.contents[MODEL],
        source=checked.source,
        private=checked.source.parent if isinstance(checked.source, Path) else None,
        variants=variants,
        cases=checked.cases,
        initial=checked.initial,
        torch_here=torch_here,
        **options,
    )


def _measure(job: _Job, progress: Progress) -> dict[str, Any]:
    """The benchmark itself, in the child process: every session created and timed here.

    ``progress(step, seconds)`` starts each step with its bound (see :func:`run_bounded`).
    """
    folder, manifest, device = job.folder, job.manifest, job.device
    streaming = (
        None
        if manifest.streaming is None
        else Streaming.from_json(manifest.streaming, lambda condition, what: None)
    )

    def start(batch: int) -> Feeds:
        return {} if streaming is None else start_states(streaming, batch, job.initial)

    def step(text: str) -> None:
        progress(text, *job.setup_seconds())

    def bound(batch: int, seq: int) -> Callable[[], None]:
        seconds, why = job.burst_seconds_bound(batch, seq)
        return lambda: progress(None, seconds, why)

    contract = manifest.contract
    runtimes = job.runtimes
    step(f"loading {MODEL} on {PROVIDERS[device]}")
    artifact_session = _session(str(job.source) if isinstance(job.source, Path) else job.source, device)
    artifact_facts = _graph_facts(onnx.load_from_string(job.model).graph, base=job.private)
    active = [_Runtime(ONNXRUNTIME, lambda feeds: _ort_call(artifact_session, feeds), detail=artifact_facts)]
    status: dict[str, dict[str, Any]] = {
        ONNXRUNTIME: {"available": True, "provider": PROVIDERS[device], **artifact_facts}
    }
    # The artifact's other shipped model files (fp16, int8, .ort) are timed too, each as a runtime
    # named after its file, so that a variant's speed is measured beside its accuracy.
    if job.variant_runtimes:
        for runtime, extra in _variant_runtimes(job):
            if extra["available"]:
                active.append(runtime)
            status[runtime.name] = extra
    eager_model = None
    if EAGER in runtimes or PLAIN in runtimes:
        step("rebuilding the model in PyTorch")
        try:
            eager_model, origin = _rebuild_eager(
                folder, manifest, job.weights, job.user_model, device, job.cases, torch_here=job.torch_here
            )
        except _Unavailable as exc:
            for name in (EAGER, PLAIN):
                if name in runtimes:
                    status[name] = {"available": False, "reason": str(exc)}
    for name in (EAGER, PLAIN):
        if name not in runtimes:
            status[name] = {"available": False, "reason": "not requested"}
    if eager_model is not None and EAGER in runtimes:
        eager = _eager_runtime(eager_model, contract, device, job.torch_threads)
        active.append(eager)
        status[EAGER] = {"available": True, **origin, **eager.detail}
    if eager_model is not None and PLAIN in runtimes:
        step("exporting the model plainly (torch.onnx.export + onnxsim)")
        try:
            plain, _ = _plain_runtime(eager_model, manifest, device, job.cases)
            active.append(plain)
            status[PLAIN] = {"available": True, "provider": PROVIDERS[device], **plain.detail}
        except _Unavailable as exc:
            status[PLAIN] = {"available": False, "reason": str(exc)}

    def sync() -> None:
        for runtime in active:
            runtime.sync()

    results: list[dict[str, Any]] = []
    for batch, seq in job.shapes:
        progress(f"batch {batch}, seq {seq}", *job.burst_seconds_bound(batch, seq))
        feeds = _feeds(contract, start, batch=batch, seq=seq)
        calls = {r.name: r.prepare(feeds) for r in active}
        stats = _interleaved(
            calls,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            sync=sync,
            tick=bound(batch, seq),
            where=f"at batch {batch}, seq {seq}",
        )
        for name, s in stats.items():
            results.append(
                {
                    "runtime": name,
                    "batch": batch,
                    "seq": seq,
                    **s.to_json(),
                    "sequences_per_s": batch / (s.p50_ms / 1e3),
                    "steps_per_s": batch * seq / (s.p50_ms / 1e3),
                }
            )
    speedups = []
    by_key = {(r["runtime"], r["batch"], r["seq"]): r for r in results}
    for batch, seq in job.shapes:
        artifact = by_key[(ONNXRUNTIME, batch, seq)]["best_round_p50_ms"]
        entry: dict[str, Any] = {"batch": batch, "seq": seq}
        for name in (EAGER, PLAIN, *(n for n in status if n.startswith(f"{ONNXRUNTIME}:"))):
            if (name, batch, seq) in by_key:
                entry[f"vs_{name}"] = by_key[(name, batch, seq)]["best_round_p50_ms"] / artifact
        speedups.append(entry)
    data: dict[str, Any] = {
        "format": BENCH_FORMAT,
        "artifact": str(folder),
        "arch": manifest.arch,
        "config": manifest.config,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "device": device,
        "grid": {
            "shapes": [list(s) for s in job.shapes],
            "batch": sorted({b for b, _ in job.shapes}),
            "seq": sorted({s for _, s in job.shapes}),
        },
        "method": {
            "rounds": job.rounds,
            "repeats": job.repeats,
            "burst_seconds": job.burst_seconds,
            "interleaved": (
                "alternating rounds in one process (a child of rnnexport's, under a time bound), "
                "order rotated each round"
            ),
            "statistic": (
                "percentiles over every timed call of every round; speedup = the other runtime's "
                "best-round median / onnxruntime's best-round median"
            ),
        },
        "runtimes": status,
        "results": results,
        "speedup": speedups,
    }
    if job.settings and device == "cpu":
        step("session settings per regime")
        data["settings"] = _settings_sweep(
            str(job.source) if isinstance(job.source, Path) else job.source,
            contract,
            len(artifact_facts["recurrent_nodes"]),
            start=start,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            bound=bound,
        )
    lengths_name = _lengths_name(contract)
    if job.ragged and lengths_name is not None:
        step(f"ragged batches (batch {RAGGED_BATCH}, seq {RAGGED_SEQ})")
        data["ragged"] = _ragged(
            artifact_session,
            contract,
            lengths_name,
            start=start,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            bound=bound,
        )
    return data


# -- recording and plotting ------------------------------------------------------------------------


def check_recordable(folder: Path | str) -> None:
    """Refuse, before anything is measured, to ``--record`` into a folder that cannot take the result.

    ``bench.json`` and the manifest are replaced through temporary files beside them: one is created
    and removed here, as the recording will, so a read-only artifact is refused up front.
    """
    folder = Path(folder)
    present = folder / BENCH_FILE
    if (os.path.lexists(present) and not present.is_file()) or present.is_symlink():
        raise UsageError(
            f"--record writes {present}, which is not a plain file. Remove it, or drop --record."
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{BENCH_FILE}.", dir=folder)
        os.close(handle)
        Path(temporary).unlink()
    except OSError as exc:
        raise UsageError(
            f"--record writes {BENCH_FILE} into {folder} and lists it in the manifest, but the folder "
            f"cannot be written ({describe_os_error(exc)}). Make it writable, or drop --record "
            "(--json prints every figure)."
        ) from None


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it and a rename: readers see old or new, never half."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise UsageError(
            f"Cannot write {path} ({describe_os_error(exc)}). Make the folder writable, or drop --record."
        ) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def record_bench(folder: Path | str, report: BenchReport) -> Path:
    """Write ``bench.json`` into the artifact and list its sha256 in the manifest; return its path.

    Only ``bench.json``'s entry in the manifest changes: every other file must still match the
    manifest first (re-hashing a tampered artifact would hide the tampering), so this refuses an
    artifact that ``rnnexport verify`` would refuse. Afterwards verify passes and catches any later
    change to ``bench.json``.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise UsageError(f"{folder} is not a folder. Pass the artifact folder that 'rnnexport build' wrote.")
    manifest, _ = _read_bounded_manifest(folder)
    others = {k: v for k, v in manifest.files.items() if k != BENCH_FILE}
    present = folder / BENCH_FILE
    if present.is_symlink():
        raise ArtifactError(f"{present} is a symbolic link; refusing to write through it.")
    problems = [p for p in check_files(folder, others) if f"'{BENCH_FILE}'" not in p]
    if problems:
        raise ArtifactError(
            f"Not recording into {folder}: it does not match its manifest ({capped(problems)}), and "
            "re-hashing would hide that. Rebuild the artifact or copy it again, then record."
        )
    text = json.dumps(report.to_json(), indent=2) + "\n"
    _replace_atomically(present, text)
    files = dict(sorted({**others, BENCH_FILE: sha256_file(present)}.items()))
    _replace_atomically(
        folder / MANIFEST, json.dumps(dataclasses.replace(manifest, files=files).to_json(), indent=2) + "\n"
    )
    return present


def require_matplotlib() -> None:
    """Raise :class:`UsageError` naming the package when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed here: pip install matplotlib (or "
            "pip install 'rnnexport[bench]'). The benchmark itself runs without it; drop --plot."
        ) from None


def plot_latency(report: BenchReport, path: Path) -> Path:
    """A PNG of latency (best-round median) against sequence length: one panel per batch, one line
    per runtime. The best round is the figure speedups use, and the one load disturbs least."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = report.rows()
    batches = sorted({r["batch"] for r in rows})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        for runtime in dict.fromkeys(r["runtime"] for r in rows):
            points = sorted(
                (r["seq"], r["best_round_p50_ms"])
                for r in rows
                if r["runtime"] == runtime and r["batch"] == batch
            )
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=runtime)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel("latency, best-round median (ms)")
        axis.set_title(f"{report.data['arch']}, batch {batch}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        raise UsageError(
            f"Cannot write the plot to {path}: {exc.strerror or exc}. Choose another path."
        ) from None
    finally:
        plt.close(figure)
    return path
