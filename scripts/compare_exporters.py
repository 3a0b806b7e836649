"""Compare the two exporters' artifacts, model by model: correct first, then size, then speed.

Builds every registered architecture, and every model of the test zoo (tests/zoo, through the
API), with ``--exporter torchscript`` and ``--exporter dynamo``, verified on the CPU provider, and
prints one row per model and exporter: verified or not (with the reason), the worst error over
what the rule allows, the node count of the shipped ``model.onnx``, and the median latency that
``rnnexport bench`` measures at batch 1 and 32 (sequence 100, ONNX Runtime on CPU).

    PYTHONPATH=$PWD python scripts/compare_exporters.py [--out DIR] [--only NAME ...] [--no-bench]

Latencies depend on the machine and its load: compare the two exporters within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch

from rnnexport import build, build_model_artifact
from rnnexport.bench import run_bench
from rnnexport.errors import RnnExportError
from rnnexport.export import EXPORTERS
from rnnexport.registry import list_architectures

REPO = Path(__file__).resolve().parent.parent
SEQ = 100


def _zoo() -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.test_zoo import ZOO

    return dict(ZOO)


def _latency(folder: Path, batch: int) -> float:
    report = run_bench(folder, shapes=[(batch, SEQ)], runtimes=["onnxruntime"], variants=False,
                       settings=False, ragged=False, rounds=3, repeats=10)  # fmt: skip
    times = [r["p50_ms"] for r in report.rows() if r["runtime"] == "onnxruntime"]
    return statistics.median(times) if times else float("nan")


def _row(name: str, exporter: str, out: Path, make: Any, bench: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "exporter": exporter}
    try:
        manifest = make(exporter, out)
    except RnnExportError as exc:
        return {**row, "verified": f"no: {str(exc)[:90]}"}
    provider = manifest.verification["providers"]["CPUExecutionProvider"]
    folder = out / name
    row["verified"] = "yes" if provider["status"] == "passed" else provider["status"]
    row["ratio"] = provider.get("max_error_ratio")
    row["nodes"] = len(onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node)
    if bench:
        row["b1"], row["b32"] = _latency(folder, 1), _latency(folder, 32)
    return row


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec and isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Build, verify and time every model with both exporters; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="Where the artifacts go (default: a temp dir)."
    )
    parser.add_argument("--only", nargs="*", default=None, help="Model names to compare (default: all).")
    parser.add_argument("--no-bench", action="store_true", help="Skip the latency columns.")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="compare-exporters-"))
    makers: dict[str, Any] = {}
    for arch in (spec.name for spec in list_architectures()):
        makers[arch] = lambda exporter, where, arch=arch: build(
            arch, out=where, device="cpu", exporter=exporter, force=True
        )
    for name, entry in _zoo().items():
        makers[name] = lambda exporter, where, name=name, entry=entry: build_model_artifact(
            entry.make(), io=entry.io, name=name, out=where, device="cpu", exporter=exporter, force=True
        )
    names = args.only or list(makers)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}; latency: ORT CPU, seq {SEQ}, median ms")
    header = (
        f"{'model':26} {'exporter':12} {'verified':9} {'err/allowed':>11} {'nodes':>5} {'b1 ms':>8} "
        f"{'b32 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        for exporter in EXPORTERS:
            r = _row(name, exporter, out / exporter, makers[name], not args.no_bench)
            print(
                f"{name:26} {exporter:12} {r['verified'][:9]:9} {_cell(r.get('ratio'), '.3f'):>11} "
                f"{_cell(r.get('nodes')):>5} {_cell(r.get('b1'), '.3f'):>8} {_cell(r.get('b32'), '.3f'):>8}"
            )
            if not r["verified"].startswith("yes"):
                print(f"    {r['verified']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
