"""Steps per second for N concurrent streams: one session batching them (StreamPool) against one
ONNX Runtime session per stream, each stream one step per call. Figures only; nothing asserted.

    python scripts/bench_many_streams.py dist/many-to-many --streams 1,8,64 --steps 200
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnexport.serving import StreamPool


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def pooled(folder: Path, streams: int, steps: int, x: np.ndarray) -> float:
    """Steps/s (over all streams) with every stream's step batched into one call."""
    pool = StreamPool.from_artifact(folder, threads=1)
    ids = [pool.open() for _ in range(streams)]
    chunk = {"x": x}  # one step: [steps, input]
    pool.step(dict.fromkeys(ids, chunk))
    started = time.perf_counter()
    for _ in range(steps):
        pool.step(dict.fromkeys(ids, chunk))
    return streams * steps / (time.perf_counter() - started)


def separate(folder: Path, streams: int, steps: int, x: np.ndarray) -> float:
    """Steps/s with one session per stream, each called at batch 1 with its state fed from Python."""
    manifest = json.loads((folder / "manifest.json").read_text())
    states = manifest["streaming"]["states"]
    masked = any(t.get("role") == "lengths" for t in manifest["inputs"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        for _ in range(streams)
    ]
    names = [o.name for o in sessions[0].get_outputs()]
    carried = [{s["input"]: np.zeros([1, *s["shape"][1:]], np.float32) for s in states} for _ in sessions]
    feeds = {"x": x[None]} | ({"lengths": np.ones(1, np.int64)} if masked else {})

    def one_round() -> None:
        for k, session in enumerate(sessions):
            result = dict(zip(names, session.run(names, {**feeds, **carried[k]}), strict=True))
            carried[k] = {s["input"]: result[s["output"]] for s in states}

    one_round()
    started = time.perf_counter()
    for _ in range(steps):
        one_round()
    return streams * steps / (time.perf_counter() - started)


def main() -> None:
    """Print one line per stream count, with the CPU."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--streams", default="1,8,64")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    manifest = json.loads((args.artifact / "manifest.json").read_text())
    size = next(t["shape"][-1] for t in manifest["inputs"] if t["name"] == "x")
    x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
    print(f"{manifest['arch']} on {_cpu()}, ONNX Runtime {ort.__version__}, one thread, one step per call")
    for n in (int(v) for v in args.streams.split(",")):
        steps = max(20, args.steps // max(1, n // 8))
        one = pooled(args.artifact, n, steps, x)
        apart = separate(args.artifact, n, steps, x)
        print(f"{n:>3} streams: one session {one:>9.0f} steps/s   a session per stream {apart:>9.0f} steps/s")


if __name__ == "__main__":
    main()
