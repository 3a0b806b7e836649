"""`rnnexport bench` on artifacts built from a user's model (rebuilt from the source file the user
names, checked against the manifest) and on streaming artifacts.

Nothing here asserts a speed: only that a runtime was measured (or why not) and what is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from ..builder.test_stateful_initial import LSTM_IO, MODELS
from ..helpers import flat, run_cli
from .test_bench import QUICK

FAST = [*QUICK, "--no-settings", "--no-ragged", "--json"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models.py, and from its LearnedLSTM a stateless and a streaming artifact (CLI builds)."""
    folder = tmp_path_factory.mktemp("bench-sources")
    (folder / "models.py").write_text(MODELS)
    (folder / "io.json").write_text(json.dumps(LSTM_IO))
    common = ["--model", f"{folder / 'models.py'}:LearnedLSTM", "--io", str(folder / "io.json")]
    for out, extra in (("plain", []), ("stream", ["--streaming"])):
        result = run_cli("build", *common, "--out", str(folder / out), "--device", "cpu", *extra)
        assert result.exit_code == 0, result.output
    return folder


def _bench(*args: str) -> dict[str, Any]:
    result = run_cli("bench", *args, *FAST)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _measured(data: dict[str, Any], runtime: str) -> None:
    assert data["runtimes"][runtime]["available"], data["runtimes"][runtime]
    rows = [(r["batch"], r["seq"]) for r in data["results"] if r["runtime"] == runtime]
    assert rows == [(1, 1), (1, 3), (2, 1), (2, 3)]


@pytest.mark.parametrize("kind", ["plain", "stream"])
def test_a_model_artifact_is_rebuilt_from_the_named_source(built: Path, kind: str) -> None:
    artifact = built / kind / "learnedlstm"
    data = _bench(str(artifact), "--model", str(built / "models.py"))
    _measured(data, "pytorch-eager")
    assert data["runtimes"]["pytorch-eager"]["weights"] == "module"
    # FILE.py:NAME works too, when NAME is the recorded class.
    _measured(_bench(str(artifact), "--model", f"{built / 'models.py'}:LearnedLSTM"), "pytorch-eager")


def test_without_the_source_the_table_says_which_file_to_pass(built: Path) -> None:
    data = _bench(str(built / "plain" / "learnedlstm"))
    reason = data["runtimes"]["pytorch-eager"]["reason"]
    assert "--model" in reason
    assert "models.py" in reason
    assert not data["runtimes"]["pytorch-eager"]["available"]


def test_another_version_of_the_source_is_refused(built: Path, tmp_path: Path) -> None:
    edited = tmp_path / "models.py"
    edited.write_text(MODELS + "\n# edited\n")
    result = run_cli("bench", str(built / "plain" / "learnedlstm"), *FAST, "--model", str(edited))
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "is not the file" in text
    assert "sha256" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "models.py:LearnedGRU"], "names 'LearnedGRU'"),
        (["--weights", "weights.safetensors"], "add --model"),
        (["--model", "models.py", "--no-eager", "--no-plain"], "neither is requested"),
    ],
)
def test_options_that_cannot_apply_are_refused(
    built: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(built)
    result = run_cli("bench", str(built / "plain" / "learnedlstm"), *FAST, *args)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)


def test_weights_of_another_model_are_refused(built: Path, tmp_path: Path) -> None:
    import torch

    from rnnexport.builder.usermodel import instantiate, load_factory

    factory, _ = load_factory(f"{built / 'models.py'}:LearnedLSTM")
    model: Any = instantiate(factory, {}, what="LearnedLSTM")
    with torch.no_grad():
        model.h0.add_(1.0)
    other = tmp_path / "other.safetensors"
    save_file(model.state_dict(), str(other))
    result = run_cli(
        "bench",
        str(built / "plain" / "learnedlstm"),
        *FAST,
        "--model",
        str(built / "models.py"),
        "--weights",
        str(other),
    )
    assert result.exit_code == 2, result.output
    assert "does not hold the weights" in flat(result.output)


def test_model_on_a_builtin_architecture_is_refused(tmp_path: Path) -> None:
    from rnnexport.builder.pipeline import build

    build("many-to-many", out=tmp_path, device="cpu")
    result = run_cli("bench", str(tmp_path / "many-to-many"), *FAST, "--model", "models.py")
    assert result.exit_code == 2, result.output
    assert "Drop --model" in flat(result.output)


@pytest.mark.parametrize("arch", ["many-to-many-masked", "attention"])
def test_a_streaming_artifact_is_benchmarked_against_eager(tmp_path: Path, arch: str) -> None:
    from rnnexport.builder.pipeline import build

    build(arch, out=tmp_path, device="cpu", streaming=True)
    data = _bench(str(tmp_path / arch))
    _measured(data, "onnxruntime")
    _measured(data, "pytorch-eager")
