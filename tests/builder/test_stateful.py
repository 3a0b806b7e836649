"""Streaming: chunk by chunk with the state carried equals the whole sequence, on ONNX Runtime.

The expected outputs are the plain (non-streaming) modules run eagerly in PyTorch over the whole
sequence; the expected final states are what each ``nn.LSTM``/``nn.GRU``/``nn.RNN`` returned in that
run, read with a forward hook. Chunks are cut here, per row, from the full inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import rnnexport
from rnnexport.artifact import MANIFEST, verify_artifact
from rnnexport.builder.eager import build_model
from rnnexport.builder.export import export_onnx
from rnnexport.builder.iospec import read_io
from rnnexport.builder.stateful import make_streaming
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.feeds import make_feeds
from rnnexport.graph.simplify import simplify_onnx
from rnnexport.registry import get_arch

from ..helpers import ARCH_NAMES, run_cli, run_without_torch
from ..scenarios.test_zoo import ZOO

ATOL, RTOL = 2e-5, 1e-4
T = 13
# Chunkings of T steps: single steps, even k, uneven, the whole sequence.
CHUNKINGS = {"1": [1] * T, "k=4": [4, 4, 4, 1], "k=6": [6, 6, 1], "uneven": [3, 1, 5, 2, 2], "whole": [T]}


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _export(
    model: nn.Module, contract: Any, **form: Any
) -> tuple[ort.InferenceSession, list[dict[str, Any]]]:
    stream = make_streaming(model, contract, **form)
    proto = export_onnx(stream.module, stream.contract)
    rng = np.random.default_rng(5)
    check = make_feeds(stream.contract, batch=2, seq=4, rng=rng)
    proto, _ = simplify_onnx(proto, check_feeds=check, streaming=True)  # the graph a build ships
    return _session(proto), stream.streaming.to_json()["states"]


def _zeros(states: list[dict[str, Any]], batch: int) -> dict[str, np.ndarray]:
    return {s["input"]: np.zeros([batch, *s["shape"][1:]], np.float32) for s in states}


def _eager(model: nn.Module, feeds: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The plain module over the whole sequence; and each recurrent module's final states, batch-major."""
    finals: dict[str, np.ndarray] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):

            def hook(m: nn.Module, args: Any, output: Any, name: str = name) -> None:
                states = output[1] if isinstance(output[1], tuple) else (output[1],)
                for kind, s in zip("hc", states, strict=False):
                    rows = s.detach().numpy().transpose(1, 0, 2)  # [batch, layers, size]
                    finals[f"{name}.{kind}"] = rows[:, 0] if rows.shape[1] == 1 else rows

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            result = model(*(torch.from_numpy(f) for f in feeds))
    finally:
        for h in handles:
            h.remove()
    outputs = list(result) if isinstance(result, tuple) else [result]
    return [o.detach().numpy() for o in outputs], finals


def _stream(
    session: ort.InferenceSession,
    states: list[dict[str, Any]],
    x: np.ndarray,
    chunks: list[int],
    lengths: np.ndarray | None,
    *,
    lengths_dtype: str = "int64",
    names: tuple[str, str] = ("x", "lengths"),
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray], dict[str, np.ndarray]]:
    """Feed ``x`` chunk by chunk; a row of ``lengths`` ends when its steps are used up (then 0 per call).

    Returns every call's outputs, each call's per-row chunk lengths, and the last state.
    """
    batch = x.shape[0]
    state = _zeros(states, batch)
    outputs, counts, position = [], [], 0
    names_out = [o.name for o in session.get_outputs()]
    for k in chunks:
        feeds = {names[0]: np.ascontiguousarray(x[:, position : position + k]), **state}
        count = np.full(batch, k, np.int64)
        if lengths is not None:
            count = np.clip(lengths - position, 0, k)
            feeds[names[1]] = count.astype(lengths_dtype)
        result = dict(zip(names_out, session.run(None, feeds), strict=True))
        state = {s["input"]: result[s["output"]] for s in states}
        outputs.append(result)
        counts.append(count)
        position += k
    return outputs, counts, {s["output"].removeprefix("state_out."): state[s["input"]] for s in states}


def _per_row(calls: list[dict[str, np.ndarray]], counts: list[np.ndarray], name: str) -> list[np.ndarray]:
    """Each row's valid per-step outputs over all calls, concatenated."""
    rows = len(counts[0])
    return [
        np.concatenate([c[name][b, : n[b]] for c, n in zip(calls, counts, strict=True)]) for b in range(rows)
    ]


def _close(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    return float(np.abs(got - want).max()) if got.size else 0.0


@pytest.fixture(scope="module")
def arch_sessions() -> dict[str, Any]:
    found = {}
    for name in ARCH_NAMES:
        spec = get_arch(name)
        config = spec.default_config
        model = build_model(spec, config, seed=0)
        contract = spec.contract(config)
        form: dict[str, Any] = {}
        if spec.streaming is not None:
            form = {
                "method": spec.streaming.method,
                "extra": tuple(spec.resolve(t, config) for t in spec.streaming.states),
            }
        found[name] = (model, *_export(model, contract, **form))
    return found


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_architecture_chunks_equal_the_whole_sequence(
    arch_sessions: dict[str, Any], name: str, batch: int
) -> None:
    spec = get_arch(name)
    model, session, states = arch_sessions[name]
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, T, 10), dtype=np.float32)
    lengths = None
    if spec.masked:  # rows end at different steps; the last one after a single step
        lengths = np.array([T, 7, 2, 1][:batch] if batch > 1 else [T], np.int64)
    want, finals = _eager(model, [x] if lengths is None else [x, lengths])
    for chunks in CHUNKINGS.values():
        calls, counts, state = _stream(session, states, x, chunks, lengths)
        if spec.per_step:
            valid = lengths if lengths is not None else np.full(batch, T)
            for b, row in enumerate(_per_row(calls, counts, "y")):
                _close(row, want[0][b, : valid[b]])
        else:  # many-to-one: each call returns the pooled output of everything seen so far
            seen = np.cumsum(counts, axis=0)
            for call, upto in zip(calls, seen, strict=True):
                assert lengths is not None
                prefix, _ = _eager(model, [np.ascontiguousarray(x[:, : int(upto.max())]), upto])
                _close(call["y"], prefix[0])
            _close(calls[-1]["y"], want[0])
        for key, value in finals.items():  # recurrent states equal the non-streaming final states
            _close(state[key], value)
        assert set(finals) <= set(state)


def test_masked_row_with_nothing_new_keeps_its_state_exactly(arch_sessions: dict[str, Any]) -> None:
    for name in [n for n in ARCH_NAMES if get_arch(n).masked]:
        _, session, states = arch_sessions[name]
        rng = np.random.default_rng(3)
        state = {s["input"]: rng.standard_normal([3, *s["shape"][1:]]).astype(np.float32) for s in states}
        # A plausible attention state: a positive running sum.
        state = {k: np.abs(v) if k.endswith(".sum") else v for k, v in state.items()}
        feeds = {
            "x": rng.standard_normal((3, 4, 10), dtype=np.float32),
            "lengths": np.array([4, 0, 2]),
            **state,
        }
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        for s in states:
            assert np.array_equal(out[s["output"]][1], state[s["input"]][1]), (name, s["input"])
            assert not np.array_equal(out[s["output"]][0], state[s["input"]][0]), (name, s["input"])
        if get_arch(name).per_step:
            assert np.all(out["y"][1] == 0.0)
            assert np.all(out["y"][2, 2:] == 0.0)


# The unidirectional zoo models whose every part looks across time only through recurrent state.
STREAMING_ZOO = ("article-variable-length", "forecaster", "dropout-rnn")


@pytest.mark.parametrize("name", STREAMING_ZOO)
def test_zoo_model_chunks_equal_the_whole_sequence(name: str) -> None:
    entry = ZOO[name]
    model = entry.make()
    contract, _ = read_io(entry.io)
    session, states = _export(model, contract)
    x_name, features = contract.inputs[0].name, int(contract.inputs[0].shape[2])
    lengths_spec = contract.lengths_input
    lengths_dtype = lengths_spec.dtype if lengths_spec is not None else "int64"
    for batch in (1, 3):
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, T, features), dtype=np.float32)
        lengths = None
        if lengths_spec is not None:
            lengths = np.array([T, 1, 6][:batch] if batch > 1 else [T], np.int64)
        want, finals = _eager(model, [x] if lengths is None else [x, lengths.astype(lengths_dtype)])
        for chunks in CHUNKINGS.values():
            calls, counts, state = _stream(
                session,
                states,
                x,
                chunks,
                lengths,
                lengths_dtype=lengths_dtype,
                names=(x_name, lengths_spec.name if lengths_spec else ""),
            )
            for spec, expected in zip(contract.outputs, want, strict=True):
                if any(d not in ("batch",) and isinstance(d, str) for d in spec.shape):
                    valid = lengths if lengths is not None else np.full(batch, T)
                    for b, row in enumerate(_per_row(calls, counts, spec.name)):
                        _close(row, expected[b, : valid[b]])
                else:
                    _close(calls[-1][spec.name], expected)
            for key, value in finals.items():
                _close(state[key], value)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tagger", "bidirectional"),
        ("pooled-classifier", "bidirectional"),
        ("stateful-lstm", "passes its own (hx)"),
        ("conv-gru-time-major", "does not stream"),
    ],
)
def test_zoo_models_that_cannot_stream_are_refused(name: str, reason: str, tmp_path: Path) -> None:
    entry = ZOO[name]
    with pytest.raises(UsageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        rnnexport.build_model_artifact(entry.make(), io=entry.io, name=name, out=tmp_path, streaming=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_bidirectional_model_with_exit_2(tmp_path: Path) -> None:
    io = tmp_path / "io.json"
    io.write_text(json.dumps(ZOO["tagger"].io))
    out = tmp_path / "dist"
    target = "tests.zoo.models:Tagger"
    result = run_cli("build", "--model", target, "--io", str(io), "--out", str(out), "--streaming")
    assert result.exit_code == 2, result.output
    assert "bidirectional" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_builds_a_streaming_user_model(tmp_path: Path) -> None:
    io = tmp_path / "io.json"
    io.write_text(json.dumps(ZOO["dropout-rnn"].io))
    out = tmp_path / "dist"
    args = ["build", "--model", "tests.zoo.models:DropoutRNN", "--io", str(io), "--out", str(out)]
    result = run_cli(*args, "--streaming", "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "dropoutrnn" / MANIFEST).read_text())
    assert manifest["streaming"]["states"][0]["input"] == "state_in.rnn.h"
    assert manifest["streaming"]["states"][0]["shape"] == ["batch", 2, 24]  # two layers, batch-major


def test_streaming_refuses_variants(tmp_path: Path) -> None:
    result = run_cli(
        "build", "--arch", "many-to-many", "--streaming", "--precision", "fp32,fp16", "--out", str(tmp_path)
    )
    assert result.exit_code == 2, result.output
    assert "float32 only" in result.output


@pytest.fixture(scope="module")
def attention_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream")
    result = run_cli("build", "--arch", "attention", "--streaming", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out / "attention"


def test_artifact_declares_its_state_and_verify_replays_the_chains(attention_artifact: Path) -> None:
    manifest = json.loads((attention_artifact / MANIFEST).read_text())
    section = manifest["streaming"]
    assert section["chunk_axis"] == "seq"
    assert {s["input"] for s in section["states"]} == {
        "state_in.lstm.h",
        "state_in.lstm.c",
        "state_in.attention.max",
        "state_in.attention.sum",
        "state_in.attention.context",
    }
    h = next(s for s in section["states"] if s["input"] == "state_in.lstm.h")
    assert h == {
        "input": "state_in.lstm.h",
        "output": "state_out.lstm.h",
        "shape": ["batch", 20],
        "dtype": "float32",
        "initial": "zeros",
    }
    assert len(section["chains"]) == 2
    assert all(len(c) >= 3 for c in section["chains"])
    model = onnx.load(str(attention_artifact / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["rnnexport.streaming"])["states"] == section["states"]
    report = verify_artifact(attention_artifact, device="cpu")
    assert report.passed
    names = {c.case for c in report.results["cpu"].cases}
    assert set(section["chains"][1]) <= names


def test_verify_replays_the_chain_with_its_own_state(attention_artifact: Path, tmp_path: Path) -> None:
    """A later call's recorded state inputs are replaced by what the provider returned: recording a
    wrong state there changes nothing, and a manifest that breaks the chain's pairing is refused."""
    import shutil

    from onnx import numpy_helper

    copy = tmp_path / "attention"
    shutil.copytree(attention_artifact, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    later = manifest["streaming"]["chains"][1][2]
    names = [t["name"] for t in manifest["inputs"]]
    k = names.index("state_in.lstm.h")
    path = copy / later / f"input_{k}.pb"
    tensor = numpy_helper.to_array(onnx.load_tensor(str(path)))
    onnx.save_tensor(numpy_helper.from_array(tensor + 1.0, "state_in.lstm.h"), str(path))
    import hashlib

    manifest["files"][f"{later}/input_{k}.pb"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert verify_artifact(copy, device="cpu").passed
    manifest["streaming"]["states"] = manifest["streaming"]["states"][1:]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not declare"):
        verify_artifact(copy, device="cpu")


def test_verify_of_a_streaming_artifact_needs_no_torch(attention_artifact: Path) -> None:

    code = (
        "from rnnexport.artifact import verify_artifact\n"
        f"assert verify_artifact({str(attention_artifact)!r}, device='cpu').passed\n"
    )
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr


def test_attention_streams_exactly_whatever_the_scores_range() -> None:
    # Scores far below zero (a trained 'v' can reach them): exp(score - 0) would underflow to 0, so
    # the stream must not let its zero starting maximum shift the first valid steps.
    spec = get_arch("attention")
    assert spec.streaming is not None
    model: Any = build_model(spec, spec.default_config, seed=0)
    with torch.no_grad():
        model.v.copy_(torch.full_like(model.v, -200.0))
        model.attention.bias.fill_(5.0)  # tanh(...) near 1: every score near -4000
    extra = tuple(spec.resolve(t, spec.default_config) for t in spec.streaming.states)
    session, states = _export(
        model, spec.contract(spec.default_config), method=spec.streaming.method, extra=extra
    )
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, T, 10), dtype=np.float32)
    lengths = np.array([T, 5, 1], np.int64)
    want, _ = _eager(model, [x, lengths])
    for chunks in CHUNKINGS.values():
        calls, _, _ = _stream(session, states, x, chunks, lengths)
        assert np.isfinite(calls[-1]["y"]).all()
        _close(calls[-1]["y"], want[0])
