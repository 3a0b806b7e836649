"""One streaming step (batch 1, one step per call, one thread) on OpenVINO and ONNX Runtime.

    python scripts/bench_openvino_step.py dist/many-to-many       # a --streaming artifact

Runs, interleaved over rounds, in one process: OpenVINO stateful IR as `deploy openvino` writes it
(fixed [1, 1] shape and dynamic), OpenVINO's own MakeStateful at the fixed shape (for comparison:
its states start empty after reset_state() at a dynamic batch), OpenVINO with the state fed from
Python, and ONNX Runtime with I/O binding (two state buffer sets, as in the README). Figures only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov

from rnnexport.deploy.openvino import COMPILE_CONFIG, make_stateful
from rnnexport.spec import Contract
from rnnexport.streaming import Streaming

ONE = {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def runners(folder: Path) -> dict[str, Callable[[], None]]:
    """Name -> one step."""
    manifest = json.loads((folder / "manifest.json").read_text())
    contract = Contract.from_json(manifest)
    streaming = Streaming.from_json(manifest["streaming"], lambda condition, what: None)
    states = {s.input: np.zeros([1, *(int(d) for d in s.shape[1:])], np.float32) for s in streaming.states}
    data = {
        t.name: np.ones([1 if isinstance(d, str) else d for d in t.shape], t.dtype)
        for t in contract.inputs
        if t.name not in states
    }
    core = ov.Core()
    steps: dict[str, Callable[[], None]] = {}
    for fixed in (True, False):
        model = core.read_model(str(folder / "model.onnx"))
        make_stateful(model, contract, streaming, {})
        if fixed:
            model.reshape({k: list(v.shape) for k, v in data.items()})
        request = core.compile_model(model, "CPU", ONE).create_infer_request()
        request.reset_state()
        steps[f"openvino stateful {'fixed [1, 1]' if fixed else 'dynamic'}"] = (
            lambda r=request: r.infer(data)  # type: ignore[misc]
        )
    model = core.read_model(str(folder / "model.onnx"))
    model.reshape(
        {**{k: list(v.shape) for k, v in data.items()}, **{k: list(v.shape) for k, v in states.items()}}
    )
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(model, {s.input: s.output for s in streaming.states})
    request = core.compile_model(model, "CPU", ONE).create_infer_request()
    steps["openvino MakeStateful fixed [1, 1]"] = lambda r=request: r.infer(data)  # type: ignore[misc]

    compiled = core.compile_model(str(folder / "model.onnx"), "CPU", ONE)
    request = compiled.create_infer_request()
    carried = dict(states)
    outputs = {s.output: s.input for s in streaming.states}

    def python_state() -> None:
        result = request.infer({**data, **carried})
        for port, value in result.items():
            if port.get_any_name() in outputs:
                carried[outputs[port.get_any_name()]] = value

    steps["openvino state fed from Python"] = python_state

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    sets = [{k: v.copy() for k, v in states.items()} for _ in range(2)]
    outs = {
        t.name: np.zeros([1 if isinstance(d, str) else d for d in t.shape], t.dtype)
        for t in contract.outputs
        if t.name not in outputs
    }
    bindings = []
    for k in range(2):
        binding = session.io_binding()
        for name, array in {**data, **sets[k]}.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        written = {s.output: sets[1 - k][s.input] for s in streaming.states}
        for name, array in {**outs, **written}.items():
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        bindings.append(binding)
    turn = [0]

    def bound() -> None:
        session.run_with_iobinding(bindings[turn[0] % 2])
        turn[0] += 1

    steps["onnxruntime I/O binding"] = bound
    return steps


def main() -> None:
    """Best round's mean per step, each runtime interleaved with the others."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    steps = runners(args.artifact)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - started) / args.steps)
    print(
        f"{args.artifact.name} on {_cpu()}, OpenVINO {ov.get_version().split('-')[0]}, "
        f"ONNX Runtime {ort.__version__}"
    )
    for name, seconds in best.items():
        print(f"  {name:<40} {seconds * 1e6:8.1f} us per step")


if __name__ == "__main__":
    main()
