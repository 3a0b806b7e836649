"""The README's promises: its train-then-ship example runs, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import REPO


def _block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- example: {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert found, f"README has no example marked {marker}"
    return found.group(1)


def test_train_then_ship_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    exec(compile(_block("train-then-ship"), "README.md", "exec"), {"__name__": "readme_example"})


def test_quickstart_commands_exist() -> None:
    text = (REPO / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/rnnexport build --arch attention" in text
    assert "bash scripts/test.sh" in text
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    for script in ("setup.sh", "test.sh", "make_golden.py"):
        assert (REPO / "scripts" / script).is_file()


def test_own_model_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    exec(compile(_block("own-model"), "README.md", "exec"), {"__name__": "readme_example"})


def test_streaming_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's streaming loop, on a streaming build; one step at a time equals one call."""
    import numpy as np
    import onnxruntime as ort

    from rnnexport.pipeline import build

    monkeypatch.chdir(tmp_path)
    build("many-to-many", out="dist", device="cpu", streaming=True)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(_block("streaming"), "README.md", "exec"), namespace)
    steps = namespace["steps"]
    assert isinstance(steps, np.ndarray)
    session = ort.InferenceSession("dist/many-to-many/model.onnx", providers=["CPUExecutionProvider"])
    whole = np.concatenate(list(steps), axis=1)  # [batch, 100, input]
    zeros = {i.name: np.zeros([1, *i.shape[1:]], np.float32) for i in session.get_inputs()[1:]}
    (y, *_) = session.run(None, {"x": whole, **zeros})
    ys = namespace["ys"]
    assert isinstance(ys, list)
    streamed = np.concatenate(ys, axis=1)
    np.testing.assert_allclose(streamed, y, atol=1e-5, rtol=1e-4)

    # The bound loop, continuing the same namespace: the same stream, buffers bound once.
    exec(compile(_block("streaming-bound"), "README.md", "exec"), namespace)
    fast = namespace["fast"]
    assert isinstance(fast, list)
    assert len(fast) == len(ys)
    np.testing.assert_allclose(np.concatenate(fast, axis=1), y, atol=1e-5, rtol=1e-4)
    # The state really alternates between the two sets: both hold a non-zero state by the end.
    states = namespace["states"]
    assert isinstance(states, list)
    assert all(np.abs(array).max() > 0 for k in range(2) for array in states[k].values())
