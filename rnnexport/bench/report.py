"""The report: what ``rnnexport bench`` measured, as the ``--json`` document and ``bench.json``."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rnnexport._version import __version__
from rnnexport.bench.job import _Job
from rnnexport.bench.runtimes import EAGER, ONNXRUNTIME, PLAIN

BENCH_FORMAT = 1


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


def _speedups(
    job: _Job, status: dict[str, dict[str, Any]], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per shape, each other runtime's best-round median over the artifact's (above 1: the artifact is
    faster)."""
    speedups = []
    by_key = {(r["runtime"], r["batch"], r["seq"]): r for r in results}
    for batch, seq in job.shapes:
        artifact = by_key[(ONNXRUNTIME, batch, seq)]["best_round_p50_ms"]
        entry: dict[str, Any] = {"batch": batch, "seq": seq}
        for name in (EAGER, PLAIN, *(n for n in status if n.startswith(f"{ONNXRUNTIME}:"))):
            if (name, batch, seq) in by_key:
                entry[f"vs_{name}"] = by_key[(name, batch, seq)]["best_round_p50_ms"] / artifact
        speedups.append(entry)
    return speedups


def _report_data(
    job: _Job, status: dict[str, dict[str, Any]], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """The report's document, less the session settings and ragged batches measured after the grid."""
    speedups = _speedups(job, status, results)
    manifest = job.manifest
    return {
        "format": BENCH_FORMAT,
        "artifact": str(job.folder),
        "arch": manifest.arch,
        "config": manifest.config,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": _machine(),
        "device": job.device,
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
