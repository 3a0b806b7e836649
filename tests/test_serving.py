"""Many streams on one session: the same outputs and states as each stream run alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rnnexport.errors import ArtifactError, UsageError
from rnnexport.serving import StreamPool

SMALL = {"input_size": 4, "hidden_size": 6, "output_size": 3}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rnnexport.builder.pipeline import build

    out = tmp_path_factory.mktemp("dist")
    for arch in ("many-to-many", "many-to-many-masked", "attention"):
        build(arch, out=out, device="cpu", config=SMALL, streaming=True)
    return out


def _alone(
    folder: Path, pool: StreamPool, chunks: list[np.ndarray]
) -> tuple[list[dict[str, np.ndarray] | None], dict[str, np.ndarray]]:
    """One stream on its own session at batch 1, state fed by hand: the reference."""
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    state = {
        s.input: np.zeros([1, *(int(d) for d in s.shape[1:])], np.float32) for s in pool.streaming.states
    }
    outs: list[dict[str, np.ndarray] | None] = []
    for chunk in chunks:
        if chunk.shape[0] == 0:  # nothing new: nothing run, the state stays
            outs.append(None)
            continue
        feeds = {"x": chunk[None], **state}
        if pool.lengths is not None:
            feeds["lengths"] = np.array([chunk.shape[0]], np.int64)
        result = dict(zip(names, session.run(None, feeds), strict=True))
        state = {s.input: result[s.output] for s in pool.streaming.states}
        outs.append({t.name: result[t.name][0] for t in pool.outputs})
    return outs, state


@pytest.mark.parametrize("arch", ["many-to-many", "many-to-many-masked", "attention"])
def test_batched_streams_equal_each_stream_alone(dist: Path, arch: str) -> None:
    folder = dist / arch
    pool = StreamPool.from_artifact(folder)
    rng = np.random.default_rng(3)
    streams = [pool.open() for _ in range(5)]
    # Each call: some streams idle (absent), some with an empty chunk, lengths differing.
    plan = [{sid: int(rng.integers(0, 4)) for sid in streams if rng.random() < 0.8} for _ in range(6)]
    plan[0] = dict.fromkeys(streams, 2)
    chunks: dict[int, list[np.ndarray]] = {sid: [] for sid in streams}
    got: dict[int, list[dict[str, np.ndarray]]] = {sid: [] for sid in streams}
    for call in plan:
        feeds = {sid: {"x": rng.standard_normal((n, 4)).astype(np.float32)} for sid, n in call.items()}
        results = pool.step(feeds)
        assert set(results) == set(call)
        for sid, feed in feeds.items():
            chunks[sid].append(feed["x"])
            got[sid].append(results[sid])
    for sid in streams:
        want, state = _alone(folder, pool, chunks[sid])
        for chunk, mine, ref in zip(chunks[sid], got[sid], want, strict=True):
            if ref is None:
                if pool.lengths is None:
                    assert all(v.size == 0 for v in mine.values())
                continue
            for name, value in ref.items():
                assert mine[name].shape == value.shape, (name, chunk.shape)
                np.testing.assert_allclose(mine[name], value, atol=1e-5, rtol=1e-4)
        for name, value in state.items():
            np.testing.assert_allclose(pool.state(sid)[name], value, atol=1e-5, rtol=1e-4)


def test_unknown_streams_are_refused(dist: Path) -> None:
    pool = StreamPool.from_artifact(dist / "many-to-many")
    sid = pool.open()
    pool.close(sid)
    with pytest.raises(UsageError, match="not open"):
        pool.step({sid: {"x": np.zeros((1, 4), np.float32)}})


def test_a_pool_runs_only_what_verify_would_accept(dist: Path, tmp_path: Path) -> None:
    """The pool reads the artifact as verify does: a model swapped after the build is refused."""
    copy = tmp_path / "copy"
    shutil.copytree(dist / "many-to-many", copy)
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # one byte more: the sha256 no longer matches
    with pytest.raises(ArtifactError, match=r"'model\.onnx' was modified"):
        StreamPool.from_artifact(copy)
