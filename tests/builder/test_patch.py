"""The export patches on their own: every recurrent configuration, packed and not, against eager PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

from rnnexport.builder.export import export_onnx
from rnnexport.builder.patch import export_patches
from rnnexport.errors import ExportError
from rnnexport.spec import Contract, TensorSpec

KINDS: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class Packed(nn.Module):
    """pack (any order) -> RNN -> unpad; returns the padded output and the final hidden state."""

    def __init__(self, rnn: nn.RNNBase, total: str, enforce_sorted: bool) -> None:
        super().__init__()
        self.rnn, self.total, self.enforce_sorted = rnn, total, enforce_sorted

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bf = self.rnn.batch_first
        packed = rnn_utils.pack_padded_sequence(
            x, lengths, batch_first=bf, enforce_sorted=self.enforce_sorted
        )
        out, state = self.rnn(packed)
        seq = x.shape[1] if bf else x.shape[0]
        total = {"none": None, "seq": seq, "longer": seq + 2}[self.total]
        y, _ = rnn_utils.pad_packed_sequence(out, batch_first=bf, total_length=total)
        return y, state[0] if isinstance(state, tuple) else state


def _case(kind: str, **options: Any) -> nn.RNNBase:
    torch.manual_seed(0)
    return KINDS[kind](5, 7, **options).eval()


def _check(model: nn.Module, contract: Contract, feeds_at: Any) -> None:
    session = ort.InferenceSession(
        export_onnx(model, contract).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for batch, seq in ((1, 1), (4, 9), (7, 30)):
        feeds = feeds_at(batch, seq)
        got = session.run(None, feeds)
        with torch.no_grad():
            want = model(*(torch.from_numpy(feeds[n]) for n in contract.input_names))
        for name, g, w in zip(contract.output_names, got, want, strict=True):
            assert g.shape == tuple(w.shape), name
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-4, err_msg=f"{name} b{batch} s{seq}")


CONFIGS = [
    ("lstm", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("lstm", {"num_layers": 3, "batch_first": False}),
    ("lstm", {"bidirectional": True, "proj_size": 3, "bias": False, "batch_first": True}),
    ("gru", {"num_layers": 2, "bidirectional": True, "batch_first": False}),
    ("gru", {"bias": False, "batch_first": True}),
    ("rnn", {"num_layers": 2, "nonlinearity": "relu", "bidirectional": True, "batch_first": True}),
    ("rnn", {"num_layers": 2, "dropout": 0.5, "batch_first": False}),
]


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
@pytest.mark.parametrize("total", ["none", "seq", "longer"])
def test_packed_runs_equal_pytorch(kind: str, options: dict[str, Any], total: str) -> None:
    rnn = _case(kind, **options)
    dirs = 2 if rnn.bidirectional else 1
    out_size = dirs * (rnn.proj_size or rnn.hidden_size)
    seq_axes = ("batch", "seq") if rnn.batch_first else ("seq", "batch")
    steps = {"none": "steps", "seq": "seq", "longer": "longer"}[total]
    y_axes = ("batch", steps) if rnn.batch_first else (steps, "batch")
    contract = Contract(
        (
            TensorSpec("x", "float32", (*seq_axes, 5)),
            TensorSpec("lengths", "int64", ("batch",), role="lengths"),
        ),
        (
            TensorSpec("y", "float32", (*y_axes, out_size)),
            TensorSpec("h", "float32", (rnn.num_layers * dirs, "batch", rnn.proj_size or rnn.hidden_size)),
        ),
    )
    rng = np.random.default_rng(0)

    def feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
        shape = (batch, seq, 5) if rnn.batch_first else (seq, batch, 5)
        lengths = rng.integers(1, seq + 1, size=batch)
        lengths[0], lengths[-1] = (seq, 1) if batch > 1 else (seq, seq)
        rng.shuffle(lengths)
        return {"x": rng.standard_normal(shape).astype(np.float32), "lengths": lengths.astype(np.int64)}

    _check(Packed(rnn, total, enforce_sorted=False).eval(), contract, feeds)


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_unpacked_runs_with_initial_states_equal_pytorch(kind: str, options: dict[str, Any]) -> None:
    rnn = _case(kind, **options)
    dirs = 2 if rnn.bidirectional else 1
    layers = rnn.num_layers * dirs
    h_size = rnn.proj_size or rnn.hidden_size

    class WithStates(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> Any:
            hx = (h0, c0) if isinstance(self.rnn, nn.LSTM) else h0
            y, state = self.rnn(x, hx)
            return (y, *state) if isinstance(state, tuple) else (y, state, c0 * 1)

    seq_axes = ("batch", "seq") if rnn.batch_first else ("seq", "batch")
    contract = Contract(
        (
            TensorSpec("x", "float32", (*seq_axes, 5)),
            TensorSpec("h0", "float32", (layers, "batch", h_size)),
            TensorSpec("c0", "float32", (layers, "batch", rnn.hidden_size)),
        ),
        (
            TensorSpec("y", "float32", (*seq_axes, dirs * h_size)),
            TensorSpec("h_n", "float32", (layers, "batch", h_size)),
            TensorSpec("c_n", "float32", (layers, "batch", rnn.hidden_size)),
        ),
    )
    rng = np.random.default_rng(1)

    def feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
        shape = (batch, seq, 5) if rnn.batch_first else (seq, batch, 5)
        return {
            "x": rng.standard_normal(shape).astype(np.float32),
            "h0": rng.standard_normal((layers, batch, h_size)).astype(np.float32),
            "c0": rng.standard_normal((layers, batch, rnn.hidden_size)).astype(np.float32),
        }

    _check(WithStates().eval(), contract, feeds)


def test_enforce_sorted_true_exports_without_sorting() -> None:
    rnn = _case("lstm", batch_first=True)
    contract = Contract(
        (
            TensorSpec("x", "float32", ("batch", "seq", 5)),
            TensorSpec("lengths", "int64", ("batch",), role="lengths"),
        ),
        (TensorSpec("y", "float32", ("batch", "seq", 7)), TensorSpec("h", "float32", (1, "batch", 7))),
    )
    rng = np.random.default_rng(2)

    def feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
        lengths = np.sort(rng.integers(1, seq + 1, size=batch))[::-1].copy()
        lengths[0] = seq
        return {"x": rng.standard_normal((batch, seq, 5)).astype(np.float32), "lengths": lengths}

    _check(Packed(rnn, "seq", enforce_sorted=True).eval(), contract, feeds)


def test_patches_are_restored() -> None:
    forward, pack = nn.LSTM.forward, rnn_utils.pack_padded_sequence
    with export_patches(nn.LSTM(2, 3)):
        assert nn.LSTM.forward is not forward
        assert rnn_utils.pack_padded_sequence is not pack
        assert nn.utils.rnn.pack_padded_sequence is not pack
    assert nn.LSTM.forward is forward
    assert rnn_utils.pack_padded_sequence is pack


def test_a_packed_sequence_not_from_pack_padded_sequence_is_refused() -> None:
    class HandPacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(5, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq, batch = x.shape[0], x.shape[1]
            packed = rnn_utils.PackedSequence(x.reshape(-1, 5), torch.full((int(seq),), int(batch)))
            y: torch.Tensor = self.gru(packed)[1]
            return y

    contract = Contract(
        (TensorSpec("x", "float32", ("seq", "batch", 5)),), (TensorSpec("h", "float32", (1, "batch", 7)),)
    )
    with pytest.raises(ExportError, match="not made by pack_padded_sequence") as info:
        export_onnx(HandPacked().eval(), contract)
    assert "bake" in str(info.value)
