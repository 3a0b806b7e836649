"""Triton: a model repository for Triton Inference Server's onnxruntime backend.

``deploy triton`` verifies the artifact on ONNX Runtime's CPU provider (the runtime Triton's
onnxruntime backend embeds), then writes::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx            (+ model.onnx.data where the artifact has one)
    REPO/NAME/initial_state/...       (streaming, learned initial states only)

**Dims come from the contract.** With ``max_batch_size`` N > 0 Triton owns the first axis: every
tensor's ``batch`` axis (the first, in an rnnexport contract) leaves ``dims``, and other symbolic
axes (``seq``) are -1. A ``[batch]`` input (``lengths``) would have no dims left, which Triton
refuses, so it is declared ``dims: [1]`` with ``reshape: { shape: [] }``: clients send ``[B, 1]``,
the model gets ``[B]``. Stateless artifacts get ``dynamic_batching``.

**Streaming artifacts** get ``sequence_batching`` with implicit state: each manifest pair
(``state_in.*`` -> ``state_out.*``) is one ``state`` entry, with its initial value
(``zero_data``, or a ``data_file`` in ``initial_state/`` holding the shipped ``[1, sizes...]``
tensor's float32 bytes, row-major), and the state tensors leave ``input``/``output``: Triton
carries them between a sequence's requests and batches them on the first axis, which is why the
states are batch-major.

No Triton server runs here: what is proven is that the config parses as Triton's own
``ModelConfig`` protobuf and matches the manifest field by field (tests), and that the model file
is the verified artifact's. The README says so.

Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnexport.artifact.testdata import read_initial_states
from rnnexport.artifact.verify import verify_artifact
from rnnexport.deploy import copy_verified_model, new_output_folder
from rnnexport.errors import UsageError, VerificationError
from rnnexport.spec import BATCH, Contract, TensorSpec
from rnnexport.streaming import InitialTensor, Streaming

__all__ = ["TRITON_TYPES", "deploy_triton", "triton_config"]

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _dims(shape: Sequence[int | str], batched: bool) -> tuple[list[int], bool]:
    """Triton dims for a contract shape, and whether the tensor needs ``reshape: { shape: [] }``."""
    rest = list(shape[1:]) if batched else list(shape)
    dims = [-1 if isinstance(d, str) else int(d) for d in rest]
    if batched and not dims:
        return [1], True
    return dims, False


def _list(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor(spec: TensorSpec, batched: bool) -> list[str]:
    dims, reshape = _dims(spec.shape, batched)
    lines = [
        "  {",
        f'    name: "{spec.name}"',
        f"    data_type: {TRITON_TYPES[spec.dtype]}",
        f"    dims: {_list(dims)}",
    ]
    if reshape:
        lines.append("    reshape: { shape: [ ] }")
    return [*lines, "  }"]


def _section(key: str, entries: list[list[str]]) -> list[str]:
    body: list[str] = []
    for i, entry in enumerate(entries):
        body += [*entry[:-1], entry[-1] + ("," if i < len(entries) - 1 else "")]
    return [f"{key} [", *body, "]"]


def _state(spec: Any, batched: bool, data_file: str | None) -> list[str]:
    dims, _ = _dims(spec.shape, batched)
    start = f'data_file: "{data_file}"' if data_file else "zero_data: true"
    return [
        "  {",
        f'    input_name: "{spec.input}"',
        f'    output_name: "{spec.output}"',
        f"    data_type: {TRITON_TYPES[spec.dtype]}",
        f"    dims: {_list(dims)}",
        "    initial_state: {",
        f"      data_type: {TRITON_TYPES[spec.dtype]}",
        f"      dims: {_list(dims)}",
        f"      {start}",
        f'      name: "{spec.input} initial"',
        "    }",
        "  }",
    ]


def triton_config(
    name: str,
    contract: Contract,
    streaming: Streaming | None,
    *,
    max_batch_size: int,
    data_files: Mapping[str, str] | None = None,
) -> str:
    """``config.pbtxt`` for the onnxruntime backend (module docstring: dims, batching, state).

    ``data_files``: state input -> file name in ``initial_state/`` for states that do not start at
    zeros. Raises :class:`UsageError` for a contract Triton cannot batch as asked.
    """
    batched = max_batch_size > 0
    states = (
        {s.input for s in streaming.states} | {s.output for s in streaming.states} if streaming else set()
    )
    if streaming is not None and not batched:
        raise UsageError(
            "A streaming artifact needs --max-batch-size 1 or more: Triton's sequence batcher batches "
            "the states of concurrent sequences on their first axis. Pass --max-batch-size N."
        )
    tensors = [t for t in (*contract.inputs, *contract.outputs) if t.name not in states]
    if batched:
        unbatched = [t.name for t in tensors if not t.shape or t.shape[0] != BATCH]
        if unbatched:
            raise UsageError(
                f"With --max-batch-size {max_batch_size} Triton takes the first axis of every tensor as "
                f"the batch, but {unbatched} do not start with '{BATCH}'. Pass --max-batch-size 0."
            )
    odd = sorted({t.dtype for t in tensors if t.dtype not in TRITON_TYPES})
    if odd:
        raise UsageError(f"Triton has no data type for {odd}; the contract must use {sorted(TRITON_TYPES)}.")
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        *_section("input", [_tensor(t, batched) for t in contract.inputs if t.name not in states]),
        *_section("output", [_tensor(t, batched) for t in contract.outputs if t.name not in states]),
    ]
    if streaming is None:
        lines += ["dynamic_batching { }"] if batched else []
    else:
        files = data_files or {}
        entries = [_state(s, batched, files.get(s.input)) for s in streaming.states]
        lines += ["sequence_batching {", *("  " + line for line in _section("state", entries)), "}"]
    return "\n".join(lines) + "\n"


def _readme(name: str, streaming: Streaming | None, max_batch_size: int) -> str:
    return "\n".join(
        [
            f"# Triton model repository: {name}",
            "",
            f'`{name}/config.pbtxt` for Triton\'s onnxruntime backend (`platform: "onnxruntime_onnx"`, '
            f"`max_batch_size: {max_batch_size}`), `{name}/1/` the artifact's verified model. Serve it with "
            "`tritonserver --model-repository=$PWD`.",
            "",
            "What rnnexport proved: the artifact's files match its manifest and its test data"
            + (" and streaming chains" if streaming else "")
            + " pass on ONNX Runtime's CPU provider (the runtime Triton's onnxruntime backend embeds); "
            "the config parses as Triton's own `ModelConfig` protobuf and its tensors, dims and "
            + ("states " if streaming else "")
            + "match the manifest. What it did not prove: no Triton server ran, so Triton's batching, "
            + (
                "its sequence batcher's implicit state (carried and reset per sequence), "
                if streaming
                else ""
            )
            + "and the backend's own ONNX Runtime version and settings are untested; send the artifact's "
            "test data through your server before relying on it.",
            "",
        ]
        + (
            [
                "Each sequence is one stream: send its chunks with `sequence_id`, `sequence_start` on the "
                "first and `sequence_end` on the last; the state tensors are Triton's (implicit state), "
                "so requests carry only the data inputs.",
                "",
            ]
            if streaming
            else []
        )
    )


def deploy_triton(
    folder: Path, out: Path, *, max_batch_size: int = 64, name: str | None = None
) -> dict[str, Any]:
    """``rnnexport deploy triton``: verify on ONNX Runtime CPU, then write the model repository ``out``.

    Raises :class:`VerificationError` (nothing written) when the artifact does not verify, and
    :class:`UsageError` for a name or batch size Triton cannot take. Returns a summary.
    """
    report = verify_artifact(folder, device="cpu")
    if not report.passed:
        failed = "; ".join(f"{r.provider} {r.status} {r.reason}".strip() for r in report.results.values())
        raise VerificationError(
            f"{folder} does not verify on ONNX Runtime here ({failed}). Nothing was written to {out}."
        )
    manifest = report.manifest
    model = name if name is not None else manifest.arch
    if not _NAME.fullmatch(model):
        raise UsageError(
            f"'{model}' cannot name a Triton model folder: use letters, digits, '_', '.', '-' "
            "(up to 128, not starting with '.' or '-'). Pass --name."
        )
    streaming = (
        None
        if manifest.streaming is None
        else Streaming.from_json(manifest.streaming, lambda condition, what: None)
    )
    initial = read_initial_states(Path(folder), manifest) if streaming else {}
    files = (
        {s.input: f"{s.input}.bin" for s in streaming.states if isinstance(s.initial, InitialTensor)}
        if streaming
        else {}
    )
    config = triton_config(
        model, manifest.contract, streaming, max_batch_size=max_batch_size, data_files=files
    )
    with new_output_folder(out, what="rnnexport deploy triton") as staging:
        version = staging / model / "1"
        version.mkdir(parents=True)
        copy_verified_model(Path(folder), manifest, version)
        (staging / model / "config.pbtxt").write_text(config)
        if files:
            (staging / model / "initial_state").mkdir()
            for state, file in files.items():
                tensor = np.ascontiguousarray(initial[state][0], dtype=np.float32)
                (staging / model / "initial_state" / file).write_bytes(tensor.tobytes())
        (staging / "README.md").write_text(_readme(model, streaming, max_batch_size))
    return {
        "model": model,
        "repository": str(out),
        "max_batch_size": max_batch_size,
        "streaming": streaming is not None,
        "manifest_sha256": report.manifest_sha256,
        "verified_on": [r.provider for r in report.results.values()],
    }
