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

The package's modules, in the order a benchmark uses them: :mod:`~rnnexport.bench.inputs` (the grid,
its bound, seeded feeds), :mod:`~rnnexport.bench.timing` (bursts, rounds, statistics),
:mod:`~rnnexport.bench.sessions` (ONNX Runtime sessions and the session settings sweep),
:mod:`~rnnexport.bench.runtimes` and :mod:`~rnnexport.bench.rebuild` (what is timed against the
artifact), :mod:`~rnnexport.bench.facts` (graph facts), :mod:`~rnnexport.bench.ragged` (ragged
batches), :mod:`~rnnexport.bench.job` and :mod:`~rnnexport.bench.run` (the whole benchmark, in a
bounded child process), :mod:`~rnnexport.bench.report` and :mod:`~rnnexport.bench.record` (the
report, ``bench.json`` and the plot).
"""

from __future__ import annotations

from rnnexport.artifact import BENCH_FILE
from rnnexport.bench.inputs import DEFAULT_BATCHES, DEFAULT_SEQS, check_grid, grid_shapes, parse_sizes
from rnnexport.bench.ragged import RAGGED_BATCH as RAGGED_BATCH
from rnnexport.bench.ragged import RAGGED_SEQ as RAGGED_SEQ
from rnnexport.bench.record import check_recordable, plot_latency, record_bench, require_matplotlib
from rnnexport.bench.report import BENCH_FORMAT as BENCH_FORMAT
from rnnexport.bench.report import BenchReport
from rnnexport.bench.run import run_bench
from rnnexport.bench.runtimes import EAGER as EAGER
from rnnexport.bench.runtimes import ONNXRUNTIME as ONNXRUNTIME
from rnnexport.bench.runtimes import PLAIN as PLAIN
from rnnexport.bench.runtimes import RUNTIMES
from rnnexport.bench.runtimes import plain_export as plain_export
from rnnexport.bench.sessions import REGIMES, session_options
from rnnexport.bench.sessions import SIGNIFICANT_GAIN as SIGNIFICANT_GAIN
from rnnexport.bench.timing import SETTLE_SECONDS as SETTLE_SECONDS
from rnnexport.bench.timing import WARMUP_CALLS as WARMUP_CALLS
from rnnexport.bench.timing import LatencyStats

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
