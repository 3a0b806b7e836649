"""Build every architecture with every variant and print the variant x architecture table (Markdown).

    python scripts/variants_report.py [--out DIR] [--device cpu|cuda|auto]

Each row: file size, largest and 99th-percentile error against the float64 reference, the gate's
verdict, and where the file can run (nodes taken / nodes, per execution provider; "-" where that
provider cannot be checked on this machine, with the reason in manifest.json).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rnnexport.builder.pipeline import build
from rnnexport.errors import RnnExportError
from rnnexport.registry import list_architectures


def _runs_on(entry: dict[str, Any]) -> str:
    cells = []
    for provider, info in entry.get("runs_on", {}).items():
        taken = f"{info['taken']}/{info['nodes']}" if info.get("status") == "checked" else "-"
        cells.append(f"{provider} {taken}")
    return ", ".join(cells)


def main() -> None:
    """Build, then print one Markdown row per architecture and variant."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rnnexport-variants-"))
    print("| arch | file | bytes | max err (f64) | p99 err (f64) | err/allowed | status | runs on (nodes) |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for spec in list_architectures():
        try:
            manifest = build(
                spec.name,
                out=out,
                device=args.device,
                precisions="fp32,fp16,int8",
                formats="onnx,ort",
                force=True,
            )
        except RnnExportError as exc:
            print(f"| {spec.name} | - | - | - | - | - | build failed: {exc} | - |")
            continue
        for entry in manifest.variants:
            errors = entry["errors"]
            exact = errors.get("artifact_vs_float64", {})
            nan = float("nan")
            worst, p99 = exact.get("max", nan), exact.get("p99", nan)
            print(
                f"| {spec.name} | {entry['file']} | {entry['bytes']} | {worst:.2e} | {p99:.2e} | "
                f"{errors.get('err_allowed', nan):.3f} | {entry['status']} | {_runs_on(entry)} |"
            )
    print(f"\nartifacts in {out}")


if __name__ == "__main__":
    main()
