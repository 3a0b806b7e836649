"""Models as a new user writes them (``tests/userzoo/``), trained for a few steps and saved the way
training code saves them, each built from that checkpoint as it is with ``build --model FILE.py:NAME
--io io.json --weights CKPT`` and nothing else, then run in ONNX Runtime against the same checkpoint
loaded into the eager model by this file's own code, at batch and sequence sizes no build uses.

One flag beyond those: the autoencoder's encoder, exported alone from the whole autoencoder's
checkpoint, needs ``--ignore-unexpected-keys`` (the decoder's weights have nowhere to go).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import Result

from ..helpers import REPO, flat, run_cli
from ..userzoo.autoencoder import Encoder, LSTMAutoencoder
from ..userzoo.helper import train
from ..userzoo.kws import KWSCRNN
from ..userzoo.outputs import DataclassEncoder, NamedTupleTagger, SpeakerGRU
from ..userzoo.sentiment import PAD, SentimentLSTM
from ..userzoo.seq2seq import Seq2SeqEncoder
from ..userzoo.tagger import FrameTagger
from ..userzoo.tutorial import BiRNN

USERZOO = REPO / "tests" / "userzoo"
# Shapes no build uses: the trace is batch 2 x seq 3; the sweep batch 1/3/16 x seq 1/7/64/257 and
# batch 3 x seq 1000; the streaming chains batch 1 (chunks 1, 1, 3) and batch 3 (2, 5, 1, 4).
NEW_SHAPES = ((5, 11), (4, 29), (6, 2))
ATOL, RTOL = 1e-5, 1e-4
Tensors = Mapping[str, torch.Tensor]


def _t(name: str, dtype: str, shape: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape, **extra}


def _out(name: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape}


@dataclass(frozen=True)
class Saved:
    """A trained model's checkpoint as training code wrote it, and the eager model this file loads from it."""

    target: str  # --model FILE.py:NAME
    io: dict[str, Any]
    weights: Path
    model: nn.Module  # loaded from ``weights`` here, in eval mode
    name: str  # the artifact folder: the lowercased class name

    def io_file(self, folder: Path) -> Path:
        path = folder / "io.json"
        path.write_text(json.dumps(self.io))
        return path


def _saved(file: str, cls: type[nn.Module], io: dict[str, Any], weights: Path, state: Tensors) -> Saved:
    """``cls()`` with ``state`` loaded strictly: the eager reference for the checkpoint at ``weights``."""
    model = cls()
    model.load_state_dict(dict(state))
    return Saved(f"{USERZOO / file}:{cls.__name__}", io, weights, model.eval(), cls.__name__.lower())


def _build(saved: Saved, out: Path, *extra: str) -> Result:
    """``rnnexport build --model ... --io ... --weights ... --out OUT``, in process."""
    io = saved.io_file(out.parent)
    return run_cli(
        "build", "--model", saved.target, "--io", str(io), "--weights", str(saved.weights), "--out", str(out),
        *extra,
    )  # fmt: skip


def _assert_built(result: Result, folder: Path) -> dict[str, Any]:
    """Exit 0, a passed verdict on the CPU provider, and the manifest."""
    assert result.exit_code == 0, flat(result.output)
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    assert manifest["verification"]["providers"]["CPUExecutionProvider"]["status"] == "passed"
    assert "passed" in result.output
    return manifest


# ----------------------------------------------------------------------------------------------- inputs


def _feeds(io: dict[str, Any], batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs at ``batch`` x ``seq``; token ids past a row's length are ``PAD``, as a tokenizer pads."""
    feeds: dict[str, np.ndarray] = {}
    lengths: np.ndarray | None = None
    for spec in io["inputs"]:
        if spec.get("role") == "lengths":
            lengths = rng.integers(1, seq + 1, size=batch)
            lengths[0], lengths[-1] = (seq, 1) if batch > 1 else (seq, seq)
            rng.shuffle(lengths)  # unsorted
            feeds[spec["name"]] = lengths.astype(spec["dtype"])
    for spec in io["inputs"]:
        if spec.get("role") == "lengths":
            continue
        shape = [{"batch": batch, "seq": seq}[d] if isinstance(d, str) else d for d in spec["shape"]]
        if spec["dtype"] == "float32":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
            continue
        low, high = spec["range"]
        ids = rng.integers(low, high, size=shape)
        if lengths is not None:
            ids[np.arange(seq)[None, :] >= lengths[:, None]] = PAD
        feeds[spec["name"]] = ids.astype(spec["dtype"])
    return {spec["name"]: feeds[spec["name"]] for spec in io["inputs"]}


def _leaves(result: Any, names: list[str]) -> list[np.ndarray]:
    """The model's outputs in io.json order: dict entries, NamedTuple/dataclass fields by name; tuples
    leaf by leaf."""
    if isinstance(result, dict):
        return [result[n].numpy() for n in names]
    if hasattr(result, "_fields") or dataclasses.is_dataclass(result):
        return [getattr(result, n).numpy() for n in names]
    flat_: list[np.ndarray] = []
    stack = [result]
    while stack:
        item = stack.pop(0)
        if isinstance(item, tuple):
            stack = list(item) + stack
        else:
            flat_.append(item.numpy())
    return flat_


def _eager(model: nn.Module, io: dict[str, Any], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        result = model(*(torch.from_numpy(feeds[s["name"]]) for s in io["inputs"]))
    return _leaves(result, [o["name"] for o in io["outputs"]])


def _session(folder: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def _assert_matches_eager(
    folder: Path, saved: Saved, shapes: tuple[tuple[int, int], ...] = NEW_SHAPES
) -> None:
    """``model.onnx`` in ONNX Runtime equals the eager model at each (batch, seq) in ``shapes``."""
    session = _session(folder)
    assert [i.name for i in session.get_inputs()] == [s["name"] for s in saved.io["inputs"]]
    rng = np.random.default_rng(2024)
    for batch, seq in shapes:
        feeds = _feeds(saved.io, batch, seq, rng)
        got = session.run([o["name"] for o in saved.io["outputs"]], feeds)
        want = _eager(saved.model, saved.io, feeds)
        assert len(got) == len(want) == len(saved.io["outputs"])
        for spec, g, w in zip(saved.io["outputs"], got, want, strict=True):
            where = f"{spec['name']} at batch {batch} x seq {seq}"
            assert g.shape == w.shape, where
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=RTOL, err_msg=where)


def _build_and_compare(saved: Saved, tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "dist"
    manifest = _assert_built(_build(saved, out, *extra), out / saved.name)
    _assert_matches_eager(out / saved.name, saved)
    return manifest


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def kws(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """Trained by the user's own script, which imports the model from its sibling file, and saved with
    ``torch.save(model.state_dict(), "kws.pt")``."""
    work = tmp_path_factory.mktemp("kws")
    script = USERZOO / "train_entry.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(work / "kws.pt"), "--steps", "5"],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    io = {
        "inputs": [_t("mel", "float32", ["batch", 1, "seq", 40])],
        "outputs": [_out("logits", ["batch", 12])],
    }
    saved = _saved(
        "train_entry.py", KWSCRNN, io, work / "kws.pt", torch.load(work / "kws.pt", weights_only=True)
    )
    assert any(
        k.endswith("num_batches_tracked") for k in saved.model.state_dict()
    )  # BatchNorm's int64 buffer
    return saved


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """A LightningModule holding the classifier as ``self.model``, saved as Lightning writes a ``.ckpt``."""
    torch.manual_seed(0)
    model = SentimentLSTM()
    vocab, hidden = 500, 24

    def loss() -> torch.Tensor:  # the label: does the review mention a token below 50 ("good" words)?
        ids = torch.randint(1, vocab, (16, 20))
        lengths = torch.randint(1, 21, (16,))
        ids[torch.arange(20)[None, :] >= lengths[:, None]] = PAD
        labels = ((ids > 0) & (ids < 50)).any(dim=1).long()
        return F.cross_entropy(model(ids, lengths), labels)

    optimizer = train(model, loss)
    path = tmp_path_factory.mktemp("sentiment") / "epoch=3-step=120.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"vocab": vocab, "hidden": hidden},
        },
        path,
    )
    io = {
        "inputs": [
            _t("input_ids", "int64", ["batch", "seq"], range=[1, vocab]),
            _t("lengths", "int64", ["batch"], role="lengths"),
        ],
        "outputs": [_out("logits", ["batch", 2])],
    }
    checkpoint = torch.load(path, weights_only=True)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    return _saved("sentiment.py", SentimentLSTM, io, path, state)


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """The whole autoencoder's ``state_dict`` (``encoder.*``, ``decoder.*``), to export the encoder alone."""
    torch.manual_seed(0)
    autoencoder = LSTMAutoencoder()

    def loss() -> torch.Tensor:  # reconstruct smooth multivariate curves
        t = torch.linspace(0, 3, 24)[None, :, None]
        x = torch.sin(t * torch.rand(16, 1, 6) * 4 + torch.rand(16, 1, 6) * 6)
        return F.mse_loss(autoencoder(x), x)

    train(autoencoder, loss)
    path = tmp_path_factory.mktemp("autoencoder") / "autoencoder.pt"
    torch.save(autoencoder.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert any(k.startswith("decoder.") for k in state)
    io = {"inputs": [_t("x", "float32", ["batch", "seq", 6])], "outputs": [_out("z", ["batch", 8])]}
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return _saved("autoencoder.py", Encoder, io, path, encoder_state)


@pytest.fixture(scope="session")
def seq2seq(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """Trained with a throwaway prediction head, saved in the usual training-dict checkpoint."""
    torch.manual_seed(0)
    model = Seq2SeqEncoder()
    head = nn.Linear(32, 300)

    def loss() -> torch.Tensor:  # predict each step's previous token
        src = torch.randint(0, 300, (16, 12))
        outputs, _ = model(src)
        return F.cross_entropy(head(outputs[:, 1:]).reshape(-1, 300), src[:, :-1].reshape(-1))

    optimizer = train(model, loss, head=head)
    path = tmp_path_factory.mktemp("seq2seq") / "checkpoint.pt"
    torch.save(
        {
            "epoch": 7,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 5.61,
        },
        path,
    )
    io = {
        "inputs": [_t("src", "int64", ["batch", "seq"], range=[0, 300])],
        "outputs": [
            _out("outputs", ["batch", "seq", 32]),
            _out("hidden", [2, "batch", 32]),
            _out("cell", [2, "batch", 32]),
        ],
    }
    saved = _saved(
        "seq2seq.py", Seq2SeqEncoder, io, path, torch.load(path, weights_only=True)["model_state_dict"]
    )
    # The learned initial state matters: started from zeros instead, the outputs move well past the tolerance.
    src = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    zeroed = Seq2SeqEncoder()
    zeroed.load_state_dict(
        {**saved.model.state_dict(), "h0": torch.zeros(2, 1, 32), "c0": torch.zeros(2, 1, 32)}
    )
    with torch.no_grad():
        assert (saved.model(src)[0] - zeroed.eval()(src)[0]).abs().max() > 1e-2
    return saved


@pytest.fixture(scope="session")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """Trained through ``nn.DataParallel`` (no GPU needed) and saved from the wrapper: ``module.*`` keys."""
    torch.manual_seed(0)
    model = FrameTagger()
    parallel = nn.DataParallel(model)

    def loss() -> torch.Tensor:  # tag each frame by its loudest of the first 7 features
        frames = torch.randn(8, 25, 13)
        return F.cross_entropy(parallel(frames).reshape(-1, 7), frames[..., :7].argmax(-1).reshape(-1))

    train(parallel, loss)
    path = tmp_path_factory.mktemp("tagger") / "tagger_best.pt"
    torch.save(parallel.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in state)
    io = {
        "inputs": [_t("frames", "float32", ["batch", "seq", 13])],
        "outputs": [_out("scores", ["batch", "seq", 7])],
    }
    return _saved(
        "tagger.py", FrameTagger, io, path, {k.removeprefix("module."): v for k, v in state.items()}
    )


@pytest.fixture(scope="session")
def birnn(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """The tutorial's model and its ``torch.save(model.state_dict(), 'model.pth')``."""
    torch.manual_seed(0)
    model = BiRNN()

    def loss() -> torch.Tensor:  # which of 10 row patterns the sequence shows
        labels = torch.randint(0, 10, (16,))
        images = torch.randn(16, 28, 28) * 0.3 + labels[:, None, None].float() / 10
        return F.cross_entropy(model(images), labels)

    train(model, loss)
    path = tmp_path_factory.mktemp("birnn") / "model.pth"
    torch.save(model.state_dict(), path)
    io = {"inputs": [_t("x", "float32", ["batch", "seq", 28])], "outputs": [_out("logits", ["batch", 10])]}
    return _saved("tutorial.py", BiRNN, io, path, torch.load(path, weights_only=True))


_STRUCTURED: dict[str, tuple[type[nn.Module], list[dict[str, Any]]]] = {
    "dict": (SpeakerGRU, [_out("logits", ["batch", "seq", 4]), _out("hidden", [2, "batch", 20])]),
    "namedtuple": (
        NamedTupleTagger,
        [_out("emissions", ["batch", "seq", 5]), _out("final_state", ["batch", 20])],
    ),
    "dataclass": (
        DataclassEncoder,
        [_out("last_hidden_state", ["batch", "seq", 20]), _out("pooler_output", ["batch", 20])],
    ),
}


def _structured(kind: str, folder: Path) -> Saved:
    """A model returning a dict, NamedTuple or dataclass, saved with ``safetensors.torch.save_file``."""
    cls, outputs = _STRUCTURED[kind]
    torch.manual_seed(0)
    model = cls()

    def loss() -> torch.Tensor:  # pull every output towards a fixed target
        result = model(torch.randn(8, 15, 10))
        values = result.values() if isinstance(result, dict) else _as_tuple(result)
        return sum((v - 0.5).pow(2).mean() for v in values) + torch.zeros(())

    train(model, loss)
    path = folder / "model.safetensors"
    save_file(model.state_dict(), str(path))
    io = {"inputs": [_t("x", "float32", ["batch", "seq", 10])], "outputs": outputs}
    return _saved("outputs.py", cls, io, path, load_file(str(path)))


def _as_tuple(result: Any) -> tuple[torch.Tensor, ...]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return tuple(getattr(result, f.name) for f in dataclasses.fields(result))
    return tuple(result)


# ------------------------------------------------------------------------------------------------- tests


def test_kws_crnn_with_batchnorm_imported_from_a_sibling_file(kws: Saved, tmp_path: Path) -> None:
    _build_and_compare(kws, tmp_path)


def test_sentiment_lstm_from_a_lightning_checkpoint(sentiment: Saved, tmp_path: Path) -> None:
    manifest = _build_and_compare(sentiment, tmp_path)
    assert manifest["inputs"][0]["range"] == [1, 500]


def test_sentiment_cases_padded_with_the_pad_id_are_accepted(sentiment: Saved, tmp_path: Path) -> None:
    # Real batches pad with PAD (0), outside the declared range [1, V): padding is ignored, so the range
    # holds at valid steps only, at build time and again when the target re-checks the shipped case.
    ids = np.array([[5, 17, 230, 42, 8, 99, 3], [61, 7, 12, 0, 0, 0, 0], [44, 0, 0, 0, 0, 0, 0]])
    cases = tmp_path / "reviews.npz"
    np.savez(cases, input_ids=ids.astype(np.int64), lengths=np.array([7, 3, 1], dtype=np.int64))
    _build_and_compare(sentiment, tmp_path, "--inputs", str(cases))
    result = run_cli("verify", str(tmp_path / "dist" / sentiment.name))
    assert result.exit_code == 0, flat(result.output)


def test_encoder_alone_from_the_whole_autoencoder_checkpoint(encoder: Saved, tmp_path: Path) -> None:
    # The one flag beyond --model/--io/--weights/--out: the decoder's weights are not the encoder's.
    _build_and_compare(encoder, tmp_path, "--ignore-unexpected-keys")


def test_encoder_alone_without_the_flag_names_the_flag(encoder: Saved, tmp_path: Path) -> None:
    result = _build(encoder, tmp_path / "dist")
    assert result.exit_code != 0
    message = flat(result.output)
    assert "decoder." in message
    assert "--ignore-unexpected-keys" in message
    assert not (tmp_path / "dist" / encoder.name).exists()


def test_seq2seq_encoder_with_learned_initial_state(seq2seq: Saved, tmp_path: Path) -> None:
    _build_and_compare(seq2seq, tmp_path)


def test_seq2seq_encoder_streams_exactly_from_its_learned_state(seq2seq: Saved, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    manifest = _assert_built(_build(seq2seq, out, "--streaming"), out / seq2seq.name)
    states = manifest["streaming"]["states"]
    assert any(s["initial"] != "zeros" for s in states), states  # h0/c0 were learned, not zeros
    session = _session(out / seq2seq.name)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(5)
    for batch, chunks in ((4, (1, 4, 7, 1, 16)), (1, (2, 9))):
        src = rng.integers(0, 300, (batch, sum(chunks)))
        state = _initial_state(states, out / seq2seq.name, batch)
        pieces = []
        bounds = np.cumsum((0, *chunks))
        for start, stop in itertools.pairwise(bounds):
            result = dict(zip(names, session.run(None, {"src": src[:, start:stop], **state}), strict=True))
            state = {s["input"]: result[s["output"]] for s in states}
            pieces.append(result["outputs"])
        want_outputs, want_hidden, want_cell = _eager(seq2seq.model, seq2seq.io, {"src": src})
        where = f"batch {batch}, chunks {chunks}"
        np.testing.assert_allclose(
            np.concatenate(pieces, axis=1), want_outputs, atol=ATOL, rtol=RTOL, err_msg=where
        )
        np.testing.assert_allclose(result["hidden"], want_hidden, atol=ATOL, rtol=RTOL, err_msg=where)
        np.testing.assert_allclose(result["cell"], want_cell, atol=ATOL, rtol=RTOL, err_msg=where)


def _initial_state(states: list[dict[str, Any]], folder: Path, batch: int) -> dict[str, np.ndarray]:
    """Each state's initial value as the README's streaming section reads it, repeated over ``batch``
    rows: ``"zeros"``, or ``{"file": ...}``, an ONNX ``TensorProto`` shipped inside the artifact."""
    feeds = {}
    for s in states:
        shape = [batch, *s["shape"][1:]]
        initial = s["initial"]
        if initial == "zeros":
            feeds[s["input"]] = np.zeros(shape, s["dtype"])
            continue
        assert isinstance(initial, dict), initial
        assert "file" in initial, initial
        file = folder / initial["file"]
        assert file.resolve().is_relative_to(folder.resolve()), initial["file"]
        values = numpy_helper.to_array(onnx.load_tensor(str(file)))
        feeds[s["input"]] = np.ascontiguousarray(np.broadcast_to(values.astype(s["dtype"]), shape))
    return feeds


def test_frame_tagger_in_containers_saved_from_data_parallel(tagger: Saved, tmp_path: Path) -> None:
    _build_and_compare(tagger, tmp_path)


def test_tutorial_birnn_building_zero_states_in_forward(birnn: Saved, tmp_path: Path) -> None:
    _build_and_compare(birnn, tmp_path)


@pytest.mark.parametrize("kind", list(_STRUCTURED))
def test_structured_outputs_from_safetensors(kind: str, tmp_path: Path) -> None:
    saved = _structured(kind, tmp_path)
    manifest = _build_and_compare(saved, tmp_path)
    assert [o["name"] for o in manifest["outputs"]] == [o["name"] for o in saved.io["outputs"]]
