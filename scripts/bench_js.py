#!/usr/bin/env python3
"""One streaming step per call, batch 1, in the browser and in Node, beside ONNX Runtime Python.

    python scripts/bench_js.py               # many-to-many and parallel-gru, default and 64/256 sizes
    python scripts/bench_js.py --arch attention --calls 5000 --json figures.json

For each architecture and size it builds the streaming artifact (``rnnexport build --streaming``) and
times one step (a chunk of one step, state in and out) three ways on this machine's CPU, one thread each:

- **python bound**: ONNX Runtime Python with I/O binding, every buffer bound once and two bindings
  alternating so the state is never copied (``scripts/bench_streaming.py``'s loop): median call;
- **node**: the JavaScript package's ``Stream.step`` on onnxruntime-node: median call, and a whole loop's
  time per call (``js/test/bench-node.mjs``);
- **browser**: ``Stream.step`` on onnxruntime-web (WebAssembly, 1 thread) in headless Chromium, on the
  page ``rnnexport deploy web`` writes, served from 127.0.0.1: a whole loop's time per call (browsers
  coarsen their timer to 0.1 ms, so single calls cannot be timed there).

Needs scripts/setup_js.sh (node, Chromium, js/ installed). Timings, not tests: nothing here fails on a figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
SIZES = {"default": {}, "64/256": {"input_size": 64, "hidden_size": 256}}


def _bench_streaming() -> Any:
    """scripts/bench_streaming.py as a module (its bound loop is the Python figure)."""
    spec = importlib.util.spec_from_file_location("bench_streaming", REPO / "scripts" / "bench_streaming.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def _python_us(folder: Path, calls: int) -> float:
    bench = _bench_streaming()
    manifest = json.loads((folder / "manifest.json").read_text())
    loop = bench.BoundLoop(
        bench._session(folder / "model.onnx"), manifest, bench._feeds(manifest, 1, np.random.default_rng(0))
    )
    loop.fill()
    return float(bench._median_call(loop.call, calls=calls)) * 1e6


def _node_us(folder: Path, calls: int) -> dict[str, float]:
    done = subprocess.run(
        ["node", "test/bench-node.mjs", str(folder), str(calls)],
        cwd=REPO / "js",
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def _browser_us(folders: dict[str, Path], calls: int, site: Path) -> dict[str, float]:
    from rnnexport.deploy.web import deploy_web
    from tests.scenarios.test_js import _served

    for name, folder in folders.items():
        deploy_web(folder, site / name)
    with _served(site) as base:
        done = subprocess.run(
            ["node", "test/browser.mjs", "--steps", str(calls), *[f"{base}/{n}/index.html" for n in folders]],
            cwd=REPO / "js",
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    pages = json.loads(done.stdout)
    found = {}
    for name, page in zip(folders, pages, strict=True):
        if page["error"] or not page["report"]["passed"]:
            raise SystemExit(f"{name}: the page did not pass verification: {page['error'] or page['report']}")
        found[name] = page["stream"]["ms_per_step"] * 1e3
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", action="append", help="architecture (repeatable; default: many-to-many, parallel-gru)"
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per figure")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    from rnnexport.builder.pipeline import build

    archs = args.arch or ["many-to-many", "parallel-gru"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-js-") as scratch:
        root = Path(scratch)
        folders = {}
        for arch in archs:
            for label, config in SIZES.items():
                key = f"{arch}-{label.replace('/', 'x')}"
                build(arch, out=root / key, device="cpu", streaming=True, config=config or None)
                folders[key] = root / key / arch
        browser = _browser_us(folders, args.calls, root / "site")
        for arch in archs:
            for label in SIZES:
                key = f"{arch}-{label.replace('/', 'x')}"
                node = _node_us(folders[key], args.calls)
                rows.append(
                    {
                        "arch": arch,
                        "sizes": label,
                        "python_bound_us": _python_us(folders[key], args.calls),
                        "node_median_us": node["median_us"],
                        "node_loop_us": node["loop_us"],
                        "browser_loop_us": browser[key],
                    }
                )
    cpu = _cpu()
    print(f"one streaming step per call, batch 1, one thread; CPU: {cpu}; {args.calls} calls per figure")
    print(
        f"{'arch':<24}{'sizes':<9}{'python bound':>14}{'node median':>13}{'node loop':>11}"
        f"{'browser loop':>14}  (us)"
    )
    for r in rows:
        print(
            f"{r['arch']:<24}{r['sizes']:<9}{r['python_bound_us']:>14.1f}{r['node_median_us']:>13.1f}"
            f"{r['node_loop_us']:>11.1f}{r['browser_loop_us']:>14.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "calls": args.calls, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
