#!/usr/bin/env python3
"""Streaming speed, measured here (never by timed unit tests).

    python scripts/bench_streaming.py                    # every architecture, default sizes, CPU
    python scripts/bench_streaming.py --arch attention --rounds 7 --json figures.json

For each architecture at the default sizes it builds the stateless and the streaming artifact
(``rnnexport build`` and ``build --streaming``) and times, on ONNX Runtime's CPU provider at batch 1
with one intra-op thread (the batch-1 latency setting; more threads only synchronise here), two
ways of calling the model:

- **bound**: the device loop. ONNX Runtime I/O binding with every buffer bound once; two bindings
  alternate so that a call writes its state outputs straight into the buffers the next call reads
  (no copy, no allocation). This is how a C, C++ or Java runtime drives a stream, and the README's
  fast loop. The step is the ``run_with_iobinding`` call, with the chunk already in its bound input
  buffer (where a device writes its samples; a memcpy of a few bytes in C): copying it in from
  Python (``np.copyto``, about 0.5 us per input here) is timed on its own, as ``copy``.
- **run**: ``session.run`` with a dict of numpy arrays, which converts every input and allocates
  every output on each call (about 1-2 us per tensor here).

Figures, per architecture:

- one streaming step (a chunk of one step, state in and out), bound and run: median over many calls;
- the stateless artifact's one-step call, bound: the same model with no state at all;
- an empty call, bound: a graph with the streaming artifact's inputs and outputs that computes
  nothing (each output an ``Identity``), what ONNX Runtime and the binding charge any call with that
  interface on this machine before a single operator of the model runs;
- a 1,000-step bound stream against 1,000 x the bound step, and a 100-step stream per step, so that
  "linear in T" is a measured ratio;
- the stateless artifact re-running the growing prefix (``session.run``), the only way to stream
  without state: one call at prefix 1, 100 and 1,000 steps (the cost of step T), and the whole
  1,000-step stream that way (the sum over every prefix, by the trapezoidal rule on the 3 points).

Targets (exit 1 if one is missed): one bound step <= 25 us median; a 1,000-step stream within 1.2x
of 1,000 single steps. Each figure is the best round's median (rounds interleave the architectures),
the figure that moves least on a loaded machine; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

STEP_TARGET_US = 25.0
STREAM_RATIO_TARGET = 1.2
PREFIXES = (1, 100, 1000)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if session.get_providers()[0] != "CPUExecutionProvider":  # the figures say which provider ran
        raise SystemExit(f"onnxruntime ran {path} on {session.get_providers()}, not the CPU provider")
    return session


def _shape(spec: dict[str, Any], steps: int) -> list[int]:
    """A manifest tensor's shape at batch 1 and ``steps`` steps."""
    return [1 if d == "batch" else steps if d == "seq" else d for d in spec["shape"]]


def _feeds(manifest: dict[str, Any], steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Batch-1 inputs of ``steps`` steps for the model's own inputs (by role and shape)."""
    feeds = {}
    for t in manifest["inputs"]:
        if t["name"].startswith("state_in."):
            continue
        if t.get("role") == "lengths":
            feeds[t["name"]] = np.array([steps], dtype=t["dtype"])
        else:
            feeds[t["name"]] = rng.standard_normal(_shape(t, steps)).astype(np.float32)
    return feeds


def _empty_model(manifest: dict[str, Any], path: Path) -> Path:
    """Save, at ``path``, a graph with the manifest's inputs and outputs that computes nothing: each
    state output an ``Identity`` of its state input, every other output one of a constant of its
    batch-1, one-step shape."""
    import onnx
    from onnx import helper, numpy_helper

    pairs = {s["output"]: s["input"] for s in manifest["streaming"]["states"]}
    nodes, constants = [], []
    for t in manifest["outputs"]:
        source = pairs.get(t["name"])
        if source is None:
            source = f"{t['name']}.value"
            constants.append(numpy_helper.from_array(np.zeros(_shape(t, 1), t["dtype"]), source))
        nodes.append(helper.make_node("Identity", [source], [t["name"]]))

    def info(t: dict[str, Any]) -> onnx.ValueInfoProto:
        dtype = helper.np_dtype_to_tensor_dtype(np.dtype(t["dtype"]))
        return helper.make_tensor_value_info(t["name"], dtype, t["shape"])  # "batch", "seq" stay symbolic

    graph = helper.make_graph(
        nodes,
        "empty",
        [info(t) for t in manifest["inputs"]],
        [info(t) for t in manifest["outputs"]],
        constants,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


class BoundLoop:
    """One-step calls with every buffer bound once (ONNX Runtime I/O binding).

    State buffers come in two sets; binding ``k`` reads set ``k`` and writes set ``1 - k``, so
    alternating the bindings carries the state with no copy. A model without state has one binding.
    """

    def __init__(self, session: Any, manifest: dict[str, Any], feeds: dict[str, np.ndarray]) -> None:
        states = manifest.get("streaming", {}).get("states", [])
        pairs = {s["input"]: s["output"] for s in states}
        written = set(pairs.values())
        state = [{s["input"]: np.zeros(_shape(s, 1), s["dtype"]) for s in states} for _ in range(2)]
        self.inputs = {name: np.array(value) for name, value in feeds.items()}  # refilled every call
        self.chunks = dict(feeds)
        outputs = {
            t["name"]: np.zeros(_shape(t, 1), t["dtype"])
            for t in manifest["outputs"]
            if t["name"] not in written
        }
        self.bindings = []
        for k in range(2 if states else 1):
            binding = session.io_binding()
            for name, array in {**self.inputs, **state[k]}.items():
                binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            written_to = {pairs[name]: array for name, array in state[1 - k].items()}
            for name, array in {**outputs, **written_to}.items():
                binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            self.bindings.append(binding)
        # The bindings hold raw pointers: these arrays must live as long as they do.
        self.buffers = (state, outputs)
        self.run = session.run_with_iobinding
        self.calls = 0

    def fill(self) -> None:
        """Copy the chunk into the bound input buffers."""
        for name, chunk in self.chunks.items():
            np.copyto(self.inputs[name], chunk)

    def call(self) -> None:
        """One call on the bound buffers, then switch to the other state set."""
        self.run(self.bindings[self.calls % len(self.bindings)])
        self.calls += 1


def _median_call(call: Callable[[], Any], *, calls: int) -> float:
    """Median seconds of ``call`` over ``calls`` calls (after a warm-up)."""
    for _ in range(min(50, calls)):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Subject:
    """One architecture: its stateless and streaming sessions and their inputs."""

    def __init__(self, name: str, stateless: Path, streaming: Path, empty: Path) -> None:
        self.name = name
        self.plain = _session(stateless / "model.onnx")
        self.stream = _session(streaming / "model.onnx")
        self.plain_manifest = json.loads((stateless / "manifest.json").read_text())
        manifest = json.loads((streaming / "manifest.json").read_text())
        self.states = manifest["streaming"]["states"]
        rng = np.random.default_rng(0)
        self.step = _feeds(manifest, 1, rng)
        self.prefix = {p: _feeds(self.plain_manifest, p, rng) for p in PREFIXES}
        self.zeros = {s["input"]: np.zeros([1, *s["shape"][1:]], np.float32) for s in self.states}
        self.bound = BoundLoop(self.stream, manifest, self.step)
        self.plain_bound = BoundLoop(self.plain, self.plain_manifest, self.prefix[1])
        # Beside the artifacts, not in one: an artifact folder holds what its manifest lists.
        self.empty_bound = BoundLoop(_session(_empty_model(manifest, empty)), manifest, self.step)

    def one_step(self, calls: int) -> float:
        """Median seconds of one bound streaming step."""
        return _median_call(self.bound.call, calls=calls)

    def one_run_step(self, calls: int) -> float:
        """Median seconds of one streaming step through ``session.run``."""
        feeds = {**self.step, **self.zeros}
        return _median_call(lambda: self.stream.run(None, feeds), calls=calls)

    def stateless_step(self, calls: int) -> float:
        """Median seconds of the stateless artifact's bound one-step call."""
        return _median_call(self.plain_bound.call, calls=calls)

    def empty_step(self, calls: int) -> float:
        """Median seconds of a bound call with the same interface that computes nothing."""
        return _median_call(self.empty_bound.call, calls=calls)

    def copy_in(self, calls: int) -> float:
        """Median seconds of copying one step's chunk into the bound input buffers from Python."""
        return _median_call(self.bound.fill, calls=calls)

    def stream_of(self, steps: int) -> float:
        """Seconds for a bound stream of ``steps`` single-step calls, state carried."""
        step = self.bound.call
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - start

    def prefix_call(self, steps: int, calls: int) -> float:
        feeds = self.prefix[steps]
        return _median_call(lambda: self.plain.run(None, feeds), calls=calls)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", action="append", help="architecture (repeatable; default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="calls per median of one step")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    return parser


def _subjects(arch: list[str] | None) -> list[Subject]:
    """Each architecture built plainly and streaming, into a scratch folder."""
    from rnnexport.builder.pipeline import build
    from rnnexport.registry import list_architectures

    names = arch or [s.name for s in list_architectures()]
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    subjects = []
    for name in names:
        build(name, out=work / "plain", device="cpu")
        build(name, out=work / "stream", device="cpu", streaming=True)
        subjects.append(
            Subject(name, work / "plain" / name, work / "stream" / name, work / f"{name}.empty.onnx")
        )
    return subjects


def _measure_rounds(subjects: list[Subject], *, rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    """Every figure of every subject, once per round: per subject, figure -> one value per round."""
    measured: dict[str, dict[str, list[float]]] = {s.name: {} for s in subjects}
    for _ in range(rounds):
        for s in subjects:  # interleaved: a burst of load hits every architecture alike
            figures = {
                "step": s.one_step(calls),
                "run_step": s.one_run_step(calls),
                "stateless_step": s.stateless_step(calls),
                "empty_step": s.empty_step(calls),
                "copy_in": s.copy_in(calls),
                "stream_100": s.stream_of(100),
                "stream_1000": s.stream_of(1000),
                **{f"prefix_{p}": s.prefix_call(p, max(20, calls // (10 * p) + 20)) for p in PREFIXES},
            }
            for key, value in figures.items():
                measured[s.name].setdefault(key, []).append(value)
    return measured


def _print_header() -> None:
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (figures move under load)")
    print(
        f"{'arch':<24} {'step us':>8} {'copy us':>8} {'run us':>7} {'stateless us':>13} {'empty us':>9} "
        f"{'1000-stream/1000 steps':>23} "
        f"{'100 vs 1000 per step':>21} "
        + " ".join(f"{'prefix ' + str(p) + ' us':>14}" for p in PREFIXES)
        + f" {'stateless 1000-stream ms':>25} {'streaming 1000-stream ms':>25}"
    )


def _summarise(name: str, r: dict[str, list[float]]) -> tuple[dict[str, Any], list[str]]:
    """One architecture's figures (best of the rounds): its table entry, printed as a row, and the
    targets it missed."""
    best = int(np.argmin(r["step"]))
    step = r["step"][best]
    run_step, stateless, empty = min(r["run_step"]), min(r["stateless_step"]), min(r["empty_step"])
    copy_in = min(r["copy_in"])
    stream_1000, stream_100 = min(r["stream_1000"]), min(r["stream_100"])
    prefix = {p: min(r[f"prefix_{p}"]) for p in PREFIXES}
    # The stateless stream of 1000 steps runs every prefix 1..1000 once: integrate the cost curve.
    stateless_stream = float(np.trapezoid([prefix[p] for p in PREFIXES], PREFIXES)) + prefix[1]
    ratio = stream_1000 / (1000 * step)
    linear = (stream_1000 / 1000) / (stream_100 / 100)
    entry = {
        "step_us": step * 1e6,
        "run_step_us": run_step * 1e6,
        "stateless_step_us": stateless * 1e6,
        "empty_step_us": empty * 1e6,
        "copy_in_us": copy_in * 1e6,
        "stream_1000_ms": stream_1000 * 1e3,
        "stream_ratio": ratio,
        "per_step_1000_vs_100": linear,
        "prefix_us": {str(p): v * 1e6 for p, v in prefix.items()},
        "stateless_stream_1000_ms": stateless_stream * 1e3,
    }
    print(
        f"{name:<24} {step * 1e6:>8.1f} {copy_in * 1e6:>8.1f} {run_step * 1e6:>7.1f} "
        f"{stateless * 1e6:>13.1f} "
        f"{empty * 1e6:>9.1f} {ratio:>23.2f} "
        f"{linear:>21.2f} "
        + " ".join(f"{prefix[p] * 1e6:>14.1f}" for p in PREFIXES)
        + f" {stateless_stream * 1e3:>25.1f} {stream_1000 * 1e3:>25.1f}"
    )
    failures = []
    if step * 1e6 > STEP_TARGET_US:
        failures.append(
            f"{name}: one step {step * 1e6:.1f} us > {STEP_TARGET_US} us (here the stateless "
            f"one-step call takes {stateless * 1e6:.1f} us, and an empty call with the same "
            f"inputs and outputs {empty * 1e6:.1f} us)"
        )
    if ratio > STREAM_RATIO_TARGET:
        failures.append(f"{name}: 1000-step stream {ratio:.2f}x 1000 single steps > {STREAM_RATIO_TARGET}x")
    return entry, failures


def main() -> int:
    args = _parser().parse_args()
    subjects = _subjects(args.arch)
    rounds = _measure_rounds(subjects, rounds=args.rounds, calls=args.calls)
    _print_header()
    failures, table = [], {}
    for s in subjects:
        table[s.name], missed = _summarise(s.name, rounds[s.name])
        failures += missed
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    for line in failures:
        print("MISSED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
