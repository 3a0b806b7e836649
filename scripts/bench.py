#!/usr/bin/env python3
"""Speed targets, measured (never asserted by timed unit tests).

    python scripts/bench.py                  # build-time targets + CPU latency, exit 1 if a target is missed
    python scripts/bench.py --device cuda    # also CUDA provider vs PyTorch CUDA latency (GPU machine)
    python scripts/bench.py --json out.json  # write every figure as JSON too

Targets:
- ``rnnexport build --arch attention`` end to end within 3x ``python -c "import torch, onnxruntime"``;
- ``rnnexport build --all`` within 30 s;
- the shipped artifact on ONNX Runtime's CPU provider no slower than PyTorch eager (ratio <= 1.0) at
  batch 1 and 64, seq 1 and 100, for every architecture.

Latency is the median of ``--repeats`` timed runs after warm-up, best of ``--rounds`` alternating
rounds, each side in its own process at the same (default) thread count. CUDA figures are
reported, not held to a target: they depend on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHAPES = ((1, 1), (1, 100), (64, 1), (64, 100))


def _wall(command: list[str], repeats: int) -> float:
    """Median wall time of a command (its output discarded); fails loudly if it fails."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _median_call(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_targets(repeats: int) -> dict[str, Any]:
    """Time the imports baseline, one build, and --all."""
    rnnexport = str(Path(sys.executable).with_name("rnnexport"))
    baseline = _wall([sys.executable, "-c", "import torch, onnxruntime"], repeats)
    with tempfile.TemporaryDirectory() as tmp:
        one = _wall(
            [rnnexport, "build", "--arch", "attention", "--device", "cpu", "--force", "--out", tmp], repeats
        )
        every = _wall([rnnexport, "build", "--all", "--device", "cpu", "--force", "--out", tmp], 1)
    return {
        "import_torch_onnxruntime_s": baseline,
        "build_attention_s": one,
        "build_attention_ratio": one / baseline,
        "build_all_s": every,
        "targets": {"build_attention_ratio <= 3": one / baseline <= 3.0, "build_all_s <= 30": every <= 30.0},
    }


def _worker(side: str, device: str, artifacts: Path, repeats: int) -> list[dict[str, Any]]:
    """Time one side (``ort`` or ``torch``) for every architecture and shape, in this process alone."""
    import torch

    from rnnexport.feeds import make_feeds
    from rnnexport.golden import load_golden
    from rnnexport.reference import build_model
    from rnnexport.registry import list_architectures
    from rnnexport.runtime import OrtRunner, create_session
    from rnnexport.spec import ArchConfig

    torch_device = torch.device(device)
    if device == "cuda":
        # Same policy as verification: no TF32 on either side.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for spec in list_architectures():
        contract = spec.contract(ArchConfig())
        if side == "ort":
            runner = OrtRunner(create_session(artifacts / spec.name / "model.onnx", device))  # type: ignore[arg-type]
        else:
            weights = {k: torch.from_numpy(v) for k, v in load_golden(spec).weights.items()}
            model = build_model(spec, ArchConfig(), state_dict=weights).to(torch_device)
        for batch, seq in SHAPES:
            feeds = make_feeds(contract, batch=batch, seq=seq, rng=np.random.default_rng(0))
            if side == "ort":

                def call(feeds: dict[str, np.ndarray] = feeds, runner: OrtRunner = runner) -> object:
                    return runner.infer(feeds)

                seconds = _median_call(call, repeats)
            else:
                args = [torch.from_numpy(feeds[n]).to(torch_device) for n in contract.input_names]

                def eager(args: list[torch.Tensor] = args, model: torch.nn.Module = model) -> object:
                    with torch.inference_mode():
                        return model(*args)

                seconds = _median_call(eager, repeats, sync)
            rows.append({"arch": spec.name, "batch": batch, "seq": seq, "ms": seconds * 1e3})
    return rows


def latency(device: str, repeats: int, rounds: int) -> list[dict[str, Any]]:
    """ONNX Runtime (the built artifact) vs PyTorch eager, per architecture and shape.

    Each side runs in its own process: PyTorch's OpenMP threads keep spinning after an eager call
    and would steal the cores from ONNX Runtime's threads if both ran in one process. The sides
    alternate for ``rounds`` rounds and each figure is the best round's median, which keeps a
    noisy neighbour on a small machine from deciding a comparison.
    """
    from rnnexport.pipeline import build
    from rnnexport.registry import list_architectures

    best: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in list_architectures():
            build(spec.name, out=tmp, device=device)
        for _ in range(rounds):
            for side in ("torch", "ort"):
                command = [sys.executable, __file__, "--worker", side, "--device", device, "--artifacts", tmp,
                           "--repeats", str(repeats)]  # fmt: skip
                rows = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                times = [r["ms"] for r in rows]
                best[side] = (
                    [min(a, b) for a, b in zip(best[side], times, strict=True)] if side in best else times
                )
    return [
        {**row, "device": device, "torch_ms": t, "ort_ms": o, "ratio": o / t}
        for row, t, o in zip(rows, best["torch"], best["ort"], strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print a table, return 1 if a CPU target was missed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="also time this device's provider"
    )
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per latency figure")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per side (best round counts)"
    )
    parser.add_argument("--build-repeats", type=int, default=3, help="timed runs per build figure")
    parser.add_argument("--skip-build", action="store_true", help="only the latency comparison")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--worker", choices=["ort", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.device, args.artifacts, args.repeats)))
        return 0

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    report: dict[str, Any] = {"threads": threads}
    if not args.skip_build:
        report["build"] = build_targets(args.build_repeats)
        b = report["build"]
        print(f"import torch, onnxruntime : {b['import_torch_onnxruntime_s']:.2f} s")
        ratio = b["build_attention_ratio"]
        print(f"build --arch attention    : {b['build_attention_s']:.2f} s  ({ratio:.2f}x, target <= 3x)")
        print(f"build --all               : {b['build_all_s']:.2f} s  (target <= 30 s)")
    devices = ["cpu"] + (["cuda"] if args.device == "cuda" else [])
    report["latency"] = [row for d in devices for row in latency(d, args.repeats, args.rounds)]
    print(
        f"\n{'arch':<24} {'device':<6} {'batch':>5} {'seq':>4} {'torch ms':>9} {'ort ms':>9} {'ort/torch':>9}"
    )
    for r in report["latency"]:
        print(
            f"{r['arch']:<24} {r['device']:<6} {r['batch']:>5} {r['seq']:>4} "
            f"{r['torch_ms']:>9.3f} {r['ort_ms']:>9.3f} {r['ratio']:>9.2f}"
        )
    missed = [k for k, ok in report.get("build", {}).get("targets", {}).items() if not ok]
    missed += [
        f"{r['arch']} b{r['batch']} s{r['seq']}: ort/torch {r['ratio']:.2f} > 1"
        for r in report["latency"]
        if r["device"] == "cpu" and r["ratio"] > 1.0
    ]
    report["missed"] = missed
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("\nall targets met" if not missed else "\nmissed targets:\n  " + "\n  ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
