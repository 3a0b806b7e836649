"""The README's promises: its train-then-ship example runs, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..helpers import REPO, readme_example


def test_train_then_ship_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    exec(compile(readme_example("train-then-ship"), "README.md", "exec"), {"__name__": "readme_example"})


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
    exec(compile(readme_example("own-model"), "README.md", "exec"), {"__name__": "readme_example"})


def test_streaming_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's streaming loop, on a streaming build; one step at a time equals one call."""
    import numpy as np
    import onnxruntime as ort

    from rnnexport.builder.pipeline import build

    monkeypatch.chdir(tmp_path)
    build("many-to-many", out="dist", device="cpu", streaming=True)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_example("streaming"), "README.md", "exec"), namespace)
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
    exec(compile(readme_example("streaming-bound"), "README.md", "exec"), namespace)
    fast = namespace["fast"]
    assert isinstance(fast, list)
    assert len(fast) == len(ys)
    np.testing.assert_allclose(np.concatenate(fast, axis=1), y, atol=1e-5, rtol=1e-4)
    # The state really alternates between the two sets: both hold a non-zero state by the end.
    states = namespace["states"]
    assert isinstance(states, list)
    assert all(np.abs(array).max() > 0 for k in range(2) for array in states[k].values())


def test_the_first_screen_shows_an_own_model_build_and_its_io_json() -> None:
    """Most users come with their own model: the first 30 lines show --model with an io.json."""
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:30])
    assert "rnnexport build --model models.py:" in first_screen
    assert "--io io.json" in first_screen
    assert '"inputs"' in first_screen
    assert "rnnexport build --arch" in first_screen


def test_every_contents_link_names_a_heading() -> None:
    """GitHub's anchors: lowercased, punctuation dropped, spaces as hyphens."""
    text = (REPO / "README.md").read_text()
    contents = next(line for line in text.splitlines() if line.startswith("**Contents:**"))
    block = text[text.index(contents) : text.index("\n\n", text.index(contents))]
    links = re.findall(r"\]\(#([^)]+)\)", block)
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{2,3} (.+)$", text, re.M)
    }
    assert len(links) >= 10
    assert [link for link in links if link not in anchors] == []
