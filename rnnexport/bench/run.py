"""The whole benchmark: ``run_bench`` in the caller, checking the artifact and bounding the child, and
``_measure`` in that child, which loads every runtime and times it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx

from rnnexport.artifact import MODEL, checked_artifact
from rnnexport.bench.facts import _graph_facts
from rnnexport.bench.inputs import (
    DEFAULT_BATCHES,
    DEFAULT_SEQS,
    _feeds,
    _lengths_name,
    check_grid,
    grid_shapes,
)
from rnnexport.bench.job import _Job, _job
from rnnexport.bench.ragged import RAGGED_BATCH, RAGGED_SEQ, _ragged
from rnnexport.bench.rebuild import _rebuild_eager
from rnnexport.bench.report import BenchReport, _report_data
from rnnexport.bench.runtimes import (
    EAGER,
    ONNXRUNTIME,
    PLAIN,
    RUNTIMES,
    _eager_runtime,
    _plain_runtime,
    _Runtime,
    _Unavailable,
    _variant_runtimes,
)
from rnnexport.bench.sessions import REGIMES, _ort_call, _session, _settings_sweep
from rnnexport.bench.timing import _interleaved
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.feeds import Feeds
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.runtime import PROVIDERS, Device
from rnnexport.runtime.worker import Progress, Stopped, run_bounded
from rnnexport.streaming import Streaming, start_states
from rnnexport.text import visible as _safe


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
    """Benchmark an artifact folder; see :mod:`rnnexport.bench` for what runs and how it is timed.

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
    _check_options(
        runtimes,
        torch_threads=torch_threads,
        rounds=rounds,
        repeats=repeats,
        time_limit=time_limit,
        rebuilds=model is not None or weights is not None,
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
            raise _stopped_error(stopped, checked.folder) from None
    assert isinstance(data, dict)
    return BenchReport(data)


def _check_options(
    runtimes: Sequence[str],
    *,
    torch_threads: int | None,
    rounds: int,
    repeats: int,
    time_limit: float | None,
    rebuilds: bool,
) -> None:
    """Refuse options that cannot be honoured, before the artifact is read. ``rebuilds``: ``--model``
    or ``--weights`` was given."""
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise UsageError(f"Unknown runtime(s) {unknown}: expected some of {', '.join(RUNTIMES)}.")
    if torch_threads is not None and torch_threads < 1:
        raise UsageError(f"--torch-threads must be at least 1, got {torch_threads}.")
    if rounds < 1 or repeats < 1:
        raise UsageError(f"rounds and repeats must be at least 1, got {rounds} and {repeats}.")
    if time_limit is not None and not 0 < time_limit < float("inf"):
        raise UsageError(f"--time-limit must be a positive number of seconds, got {time_limit}.")
    if rebuilds and EAGER not in runtimes and PLAIN not in runtimes:
        raise UsageError(
            "--model and --weights rebuild the artifact's model in PyTorch, for pytorch-eager and "
            "plain-export, but neither is requested (--no-eager --no-plain). Drop them, or time those too."
        )


def _stopped_error(stopped: Stopped, folder: Path) -> ArtifactError:
    """What the caller says when the child was stopped: overran its bound, or ended on its own."""
    where = f"'{stopped.step}'" if stopped.step else "loading the model"
    if stopped.timed_out:
        return ArtifactError(
            f"The benchmark of {folder} did not finish {where} within the time bound of "
            f"{stopped.seconds:.3g} s ({stopped.why or 'for starting'}), and was stopped. A model "
            "that runs this long (a Loop with an enormous trip count, for example) is not one "
            "rnnexport builds: run 'rnnexport verify' on it. If it is legitimately that slow, "
            "pass a larger --time-limit (seconds per step)."
        )
    return ArtifactError(
        f"The benchmark of {folder} stopped during {where}: the process running the "
        f"model {stopped.how} ({_safe(stopped.last_words)}). A model that exhausts the machine's "
        "memory, for example, ends this way; run 'rnnexport verify' on it."
    )


class _Child:
    """The child's side of a job: the bounds it reports to its parent, and a new stream's states."""

    def __init__(self, job: _Job, progress: Progress) -> None:
        self.job, self.progress = job, progress
        manifest = job.manifest
        self.streaming = (
            None
            if manifest.streaming is None
            else Streaming.from_json(manifest.streaming, lambda condition, what: None)
        )

    def start(self, batch: int) -> Feeds:
        """A streaming model's state inputs for a new stream of ``batch`` rows (none: no states)."""
        return {} if self.streaming is None else start_states(self.streaming, batch, self.job.initial)

    def step(self, text: str) -> None:
        """Start a step that loads or rebuilds the model, under the setup bound."""
        self.progress(text, *self.job.setup_seconds())

    def bound(self, batch: int, seq: int) -> Callable[[], None]:
        """The ``tick`` of :func:`_interleaved` at ``batch`` x ``seq``: a new bound for each burst."""
        seconds, why = self.job.burst_seconds_bound(batch, seq)
        return lambda: self.progress(None, seconds, why)


def _measure(job: _Job, progress: Progress) -> dict[str, Any]:
    """The benchmark itself, in the child process: every session created and timed here.

    ``progress(step, seconds)`` starts each step with its bound (see :func:`run_bounded`).
    """
    child = _Child(job, progress)
    contract = job.manifest.contract
    child.step(f"loading {MODEL} on {PROVIDERS[job.device]}")
    artifact_session = _session(job.loadable(), job.device)
    artifact_facts = _graph_facts(onnx.load_from_string(job.model).graph, base=job.private)
    active, status = _artifact_runtimes(job, artifact_session, artifact_facts)
    _torch_runtimes(job, child, active, status)
    data = _report_data(job, status, _time_grid(job, child, active))
    if job.settings and job.device == "cpu":
        child.step("session settings per regime")
        data["settings"] = _settings_sweep(
            job.loadable(),
            contract,
            len(artifact_facts["recurrent_nodes"]),
            start=child.start,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            bound=child.bound,
        )
    lengths_name = _lengths_name(contract)
    if job.ragged and lengths_name is not None:
        child.step(f"ragged batches (batch {RAGGED_BATCH}, seq {RAGGED_SEQ})")
        data["ragged"] = _ragged(
            artifact_session,
            contract,
            lengths_name,
            start=child.start,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            bound=child.bound,
        )
    return data


def _artifact_runtimes(
    job: _Job, session: Any, facts: dict[str, Any]
) -> tuple[list[_Runtime], dict[str, dict[str, Any]]]:
    """The artifact's ``model.onnx`` on ``session``, and its other shipped model files: the runtimes
    to time, and the report's status of each."""
    active = [_Runtime(ONNXRUNTIME, lambda feeds: _ort_call(session, feeds), detail=facts)]
    status: dict[str, dict[str, Any]] = {
        ONNXRUNTIME: {"available": True, "provider": PROVIDERS[job.device], **facts}
    }
    # The artifact's other shipped model files (fp16, int8, .ort) are timed too, each as a runtime
    # named after its file, so that a variant's speed is measured beside its accuracy.
    if job.variant_runtimes:
        for runtime, extra in _variant_runtimes(job):
            if extra["available"]:
                active.append(runtime)
            status[runtime.name] = extra
    return active, status


def _torch_runtimes(
    job: _Job, child: _Child, active: list[_Runtime], status: dict[str, dict[str, Any]]
) -> None:
    """Add PyTorch eager and the plain export to ``active`` where requested and rebuildable here, and
    each one's status (or why it is not timed) to ``status``."""
    runtimes, device = job.runtimes, job.device
    eager_model = None
    if EAGER in runtimes or PLAIN in runtimes:
        child.step("rebuilding the model in PyTorch")
        try:
            eager_model, origin = _rebuild_eager(
                job.folder,
                job.manifest,
                job.weights,
                job.user_model,
                device,
                job.cases,
                torch_here=job.torch_here,
            )
        except _Unavailable as exc:
            for name in (EAGER, PLAIN):
                if name in runtimes:
                    status[name] = {"available": False, "reason": str(exc)}
    for name in (EAGER, PLAIN):
        if name not in runtimes:
            status[name] = {"available": False, "reason": "not requested"}
    if eager_model is not None and EAGER in runtimes:
        eager = _eager_runtime(eager_model, job.manifest.contract, device, job.torch_threads)
        active.append(eager)
        status[EAGER] = {"available": True, **origin, **eager.detail}
    if eager_model is not None and PLAIN in runtimes:
        child.step("exporting the model plainly (torch.onnx.export + onnxsim)")
        try:
            plain, _ = _plain_runtime(eager_model, job.manifest, device, job.cases)
            active.append(plain)
            status[PLAIN] = {"available": True, "provider": PROVIDERS[device], **plain.detail}
        except _Unavailable as exc:
            status[PLAIN] = {"available": False, "reason": str(exc)}


def _time_grid(job: _Job, child: _Child, active: list[_Runtime]) -> list[dict[str, Any]]:
    """Every runtime in ``active`` timed at every shape of the grid: one row per shape and runtime."""

    def sync() -> None:
        for runtime in active:
            runtime.sync()

    results: list[dict[str, Any]] = []
    for batch, seq in job.shapes:
        child.progress(f"batch {batch}, seq {seq}", *job.burst_seconds_bound(batch, seq))
        feeds = _feeds(job.manifest.contract, child.start, batch=batch, seq=seq)
        calls = {r.name: r.prepare(feeds) for r in active}
        stats = _interleaved(
            calls,
            rounds=job.rounds,
            repeats=job.repeats,
            burst_seconds=job.burst_seconds,
            sync=sync,
            tick=child.bound(batch, seq),
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
    return results
