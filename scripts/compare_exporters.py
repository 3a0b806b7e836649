"""Compare the two exporters' artifacts, model by model: correct first, then size, then speed.

Builds every registered architecture, and every model of the test zoo (tests/zoo, through the
API), with ``exporter="torchscript"`` and ``exporter="dynamo"``, verified on the CPU provider, and
prints one row per model and exporter:

- the build: verified or not (with the reason), the worst error over what the rule allows, the
  node count and opset of the shipped ``model.onnx``, and the time the export stage took;
- its fp16 and int8 variants (``precisions="fp32,fp16"`` and ``"fp32,int8"``), each built in a
  process of its own so that a crash inside ONNX Runtime is reported as ``crash``;
- the streaming build (``streaming=True``): verified, or refused (a bidirectional model is, by
  either exporter);
- the median latency that ``rnnexport bench`` measures (ONNX Runtime on CPU, sequence 100) at
  batch 1 and 32, over ``--repeats`` paired runs: each run times both exporters' ``model.onnx``
  one right after the other (the order alternating), so that a neighbour's load slows both alike;
  ``dyn/ts`` is the median of the per-run ratios, with their range.

    PYTHONPATH=$PWD nice python scripts/compare_exporters.py [--out DIR] [--only NAME ...]
        [--repeats N] [--no-bench] [--no-streaming]

Latencies depend on the machine and its load: compare the two exporters within one run only, and
quote the CPU model (printed first) beside them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import onnx
import onnxscript
import torch

from rnnexport import build, build_model_artifact
from rnnexport.bench import run_bench
from rnnexport.builder.export import EXPORTERS, Exporter
from rnnexport.errors import RnnExportError
from rnnexport.registry import list_architectures

REPO = Path(__file__).resolve().parent.parent
SEQ = 100
BATCHES = (1, 32)


def _zoo() -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.scenarios.test_zoo import ZOO

    return dict(ZOO)


def _cpu() -> str:
    """The CPU model and core count, as lscpu reports them (the platform's name where it cannot)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown CPU").strip()
    family, number = fields.get("CPU family", "").strip(), fields.get("Model", "").strip()
    return f"{model} (family {family}, model {number}), {fields.get('CPU(s)', '?').strip()} CPUs"


class _ExportTime:
    """A progress sink that keeps the export stage's seconds."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def stage_started(self, stage: str, total: int | None = None) -> None:
        """Ignored."""

    def advanced(self, done: int) -> None:
        """Ignored."""

    def stage_finished(
        self, stage: str, ok: bool, detail: str, seconds: float, more: Sequence[str] = ()
    ) -> None:
        """Keep the export stage's time."""
        if stage == "export":
            self.seconds = seconds


def _verdict(manifest: Any) -> tuple[str, float | None]:
    provider = manifest.verification["providers"]["CPUExecutionProvider"]
    return ("yes" if provider["status"] == "passed" else provider["status"]), provider.get("max_error_ratio")


def _row(name: str, exporter: str, out: Path, make: Any, streaming: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "exporter": exporter, "folder": out / exporter / name}
    timer = _ExportTime()
    try:
        manifest = make(exporter, out / exporter, progress=timer)
    except RnnExportError as exc:
        row["verified"] = f"no: {str(exc)[:200]}"
    else:
        row["verified"], row["ratio"] = _verdict(manifest)
        model = onnx.load(str(row["folder"] / "model.onnx"), load_external_data=False)
        row["nodes"] = len(model.graph.node)
        row["opset"] = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        row["export_s"] = timer.seconds
        for precision in ("fp16", "int8"):
            row[precision] = _variant(name, exporter, out / f"{exporter}-{precision}", precision)
    if streaming:
        try:
            stream = make(exporter, out / f"{exporter}-streaming", progress=None, streaming=True)
        except RnnExportError as exc:
            text = str(exc)
            row["stream"] = "refused" if "bidirectional" in text else "no"
            row["stream_reason"] = text[:200]
        else:
            verdict, ratio = _verdict(stream)
            row["stream"] = verdict if ratio is None else f"{verdict} {ratio:.3f}"
    return row


def _variant_child(name: str, exporter: str, where: str, precision: str) -> str:
    try:
        manifest = _makers(Path(where))[name](exporter, Path(where), precisions=f"fp32,{precision}")
    except RnnExportError as exc:
        return f"no: {str(exc)[:60]}"
    return next(str(v.get("status")) for v in manifest.variants if v["file"] == f"model.{precision}.onnx")


def _variant(name: str, exporter: str, where: Path, precision: str) -> str:
    """The ``precision`` variant's verdict, from a build in a process of its own: a crash in ONNX
    Runtime (a segfault while it partitions a variant) is reported as one, not the end of the run."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_variant_child, name, exporter, str(where), precision).result()
        except BrokenProcessPool:
            return "crash"


def _p50(folder: Path) -> dict[int, float]:
    """bench's median call latency of ``model.onnx`` at each batch (ONNX Runtime, CPU)."""
    report = run_bench(folder, shapes=[(b, SEQ) for b in BATCHES], runtimes=["onnxruntime"], variants=False,
                       settings=False, ragged=False, rounds=3, repeats=10)  # fmt: skip
    return {r["batch"]: r["p50_ms"] for r in report.rows() if r["runtime"] == "onnxruntime"}


def _latencies(rows: dict[Exporter, dict[str, Any]], repeats: int) -> dict[str, Any]:
    """``repeats`` paired runs of both exporters' artifacts; medians and the ratios' median and range."""
    folders = {e: rows[e]["folder"] for e in EXPORTERS}
    runs: dict[str, list[dict[int, float]]] = {e: [] for e in EXPORTERS}
    for k in range(repeats):
        for exporter in EXPORTERS if k % 2 == 0 else EXPORTERS[::-1]:
            runs[exporter].append(_p50(folders[exporter]))
    result: dict[str, Any] = {}
    for b in BATCHES:
        for e in EXPORTERS:
            result[f"{e}:b{b}"] = statistics.median(run[b] for run in runs[e])
        ratios = sorted(d[b] / t[b] for d, t in zip(runs["dynamo"], runs["torchscript"], strict=True))
        result[f"ratio:b{b}"] = (statistics.median(ratios), ratios[0], ratios[-1])
    return result


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec and isinstance(value, float) else str(value)


def _makers(out: Path) -> dict[str, Any]:
    makers: dict[str, Any] = {}
    for arch in (spec.name for spec in list_architectures()):
        makers[arch] = lambda exporter, where, arch=arch, **kw: build(
            arch, out=where, device="cpu", exporter=exporter, force=True, **kw
        )
    for name, entry in _zoo().items():
        makers[name] = lambda exporter, where, name=name, entry=entry, **kw: build_model_artifact(
            entry.make(), io=entry.io, name=name, out=where, device="cpu", exporter=exporter, force=True, **kw
        )
    return makers


def main(argv: list[str] | None = None) -> int:
    """Build, verify and time every model with both exporters; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="Where the artifacts go (default: a temp dir)."
    )
    parser.add_argument("--only", nargs="*", default=None, help="Model names to compare (default: all).")
    parser.add_argument("--repeats", type=int, default=7, help="Paired latency runs per model (default 7).")
    parser.add_argument("--no-bench", action="store_true", help="Skip the latency columns.")
    parser.add_argument("--no-streaming", action="store_true", help="Skip the streaming builds.")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="compare-exporters-"))
    makers = _makers(out)
    names = args.only or list(makers)
    print(f"CPU: {_cpu()}")
    print(
        f"torch {torch.__version__}, onnx {onnx.__version__}, onnxscript {onnxscript.__version__}; "
        f"latency: rnnexport bench, ONNX Runtime CPU, seq {SEQ}, median of {args.repeats} paired runs (ms)"
    )
    header = (
        f"{'model':26} {'exporter':11} {'verified':8} {'err/allow':>9} {'fp16':6} {'int8':6} "
        f"{'stream':12} {'nodes':>5} {'opset':>5} {'export s':>8} {'b1 ms':>7} {'b32 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        rows = {e: _row(name, e, out, makers[name], not args.no_streaming) for e in EXPORTERS}
        both = all(r["verified"] == "yes" for r in rows.values())
        timing = _latencies(rows, args.repeats) if both and not args.no_bench else {}
        for exporter, r in rows.items():
            b1, b32 = timing.get(f"{exporter}:b1"), timing.get(f"{exporter}:b32")
            print(
                f"{name:26} {exporter:11} {r['verified'][:8]:8} {_cell(r.get('ratio'), '.3f'):>9} "
                f"{_cell(r.get('fp16')):6} {_cell(r.get('int8')):6} {_cell(r.get('stream')):12} "
                f"{_cell(r.get('nodes')):>5} {_cell(r.get('opset')):>5} {_cell(r.get('export_s'), '.1f'):>8} "
                f"{_cell(b1, '.3f'):>7} {_cell(b32, '.3f'):>7}"
            )
            for key in ("verified", "stream_reason"):
                if key in r and not str(r[key]).startswith("yes"):
                    print(f"    {r[key]}")
        for b in BATCHES if timing else ():
            mid, low, high = timing[f"ratio:b{b}"]
            print(f"    dyn/ts at batch {b}: {mid:.3f} (runs {low:.3f} to {high:.3f})")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
