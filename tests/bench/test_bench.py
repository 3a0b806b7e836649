"""`rnnexport bench`: well-formed figures, no torch needed, plots, recording, and ragged-batch bucketing.

No test here asserts anything about speed: timings depend on the machine and its load. They check
that the figures exist, are positive and cover the grid asked for, and that bucketing computes
exactly what a direct run computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rnnexport.artifact import MANIFEST, verify_artifact
from rnnexport.bench import BENCH_FILE, REGIMES, RUNTIMES, parse_sizes, session_options
from rnnexport.builder.pipeline import build
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.runtime import bucketed_run, plan_buckets

from ..helpers import cli_in_child, copy_artifact, run_cli

# The smallest run that still exercises every part: two batches, two lengths, one round.
QUICK = ["--batch", "1,2", "--seq", "1,3", "--rounds", "1", "--repeats", "2"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for name in ("many-to-many-masked", "attention"):
        build(name, out=out, device="cpu")
    return out


@pytest.fixture
def masked(dist: Path, tmp_path: Path) -> Path:
    return copy_artifact(dist / "many-to-many-masked", tmp_path / "many-to-many-masked")


def _positive_stats(entry: dict[str, Any]) -> None:
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "best_round_p50_ms"):
        assert isinstance(entry[key], float)
        assert entry[key] > 0, (key, entry)
    assert entry["min_ms"] <= entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
    assert entry["min_ms"] <= entry["best_round_p50_ms"]
    assert entry["samples"] >= 1


# -- the report ------------------------------------------------------------------------------------


def test_bench_json_has_every_field_for_the_grid_asked_for(masked: Path) -> None:
    result = run_cli("bench", str(masked), *QUICK, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["arch"] == "many-to-many-masked"
    assert data["grid"] == {"shapes": [[1, 1], [1, 3], [2, 1], [2, 3]], "batch": [1, 2], "seq": [1, 3]}
    assert data["machine"]["logical_cores"] >= 1
    for name in RUNTIMES:  # torch and onnxsim are installed here: all three run
        assert data["runtimes"][name]["available"], data["runtimes"][name]
    rows = {(r["runtime"], r["batch"], r["seq"]): r for r in data["results"]}
    assert set(rows) == {(n, b, s) for n in RUNTIMES for b in (1, 2) for s in (1, 3)}
    for (_, batch, seq), row in rows.items():
        _positive_stats(row)
        assert row["sequences_per_s"] == pytest.approx(batch / (row["p50_ms"] / 1e3))
        assert row["steps_per_s"] == pytest.approx(batch * seq / (row["p50_ms"] / 1e3))
    assert [(s["batch"], s["seq"]) for s in data["speedup"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for entry in data["speedup"]:
        assert entry["vs_pytorch-eager"] > 0
        assert entry["vs_plain-export"] > 0
    # One recurrent node in both graphs, with its recurrence matrix described.
    [node] = data["runtimes"]["onnxruntime"]["recurrent_nodes"]
    assert node["op"] == "LSTM"
    assert node["recurrence_bytes"] == 4 * 20 * 20 * 4
    assert 0 <= node["recurrence_zero_fraction"] < 1
    for regime, (batch, seq) in REGIMES.items():
        chosen = data["settings"][regime]
        assert (chosen["batch"], chosen["seq"]) == (batch, seq)
        assert chosen["p50_ms"] > 0
        assert chosen["gain_over_defaults"] >= 1.0
        assert chosen["recommended"] in [c["settings"] for c in chosen["candidates"]]
        for candidate in chosen["candidates"]:
            _positive_stats(candidate)
            session_options(candidate["settings"])  # every candidate is a valid setting
        threads = {c["settings"].get("intra_op_num_threads") for c in chosen["candidates"]}
        assert 1 in threads
    assert data["ragged"]["batch"] == 32
    assert any("bucketed" in name for name in data["ragged"]["scenarios"])
    for stats in data["ragged"]["scenarios"].values():
        _positive_stats(stats)
    assert "speedup" in result.stderr  # the table went to stderr, the JSON alone to stdout


def test_bench_table_without_json(masked: Path) -> None:
    result = run_cli("bench", str(masked), *QUICK, "--no-settings", "--no-ragged", "--no-plain")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "pytorch-eager" in result.stderr
    assert "plain-export: not measured (not requested)" in result.stderr


def test_bench_works_without_torch(masked: Path) -> None:
    result = cli_in_child("bench", str(masked), *QUICK, "--json", torch_free=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert {r["runtime"] for r in data["results"]} == {"onnxruntime"}
    for name in ("pytorch-eager", "plain-export"):
        assert not data["runtimes"][name]["available"]
        assert "torch is not installed" in data["runtimes"][name]["reason"]
    assert "settings" in data
    assert "ragged" in data


@pytest.mark.parametrize(
    ("option", "value"), [("--batch", "0"), ("--seq", "x"), ("--batch", ""), ("--seq", "1,-3")]
)
def test_bad_grid_is_a_usage_error(masked: Path, option: str, value: str) -> None:
    result = run_cli("bench", str(masked), option, value)
    assert result.exit_code == 2
    assert option in result.output


def test_parse_sizes_sorts_and_deduplicates() -> None:
    assert parse_sizes("32, 1,32", option="--batch") == (1, 32)
    with pytest.raises(UsageError, match="comma-separated"):
        parse_sizes("1.5", option="--seq")


def test_not_an_artifact(tmp_path: Path) -> None:
    result = run_cli("bench", str(tmp_path))
    assert result.exit_code == 1
    assert "not an rnnexport artifact" in result.output


def test_tampered_artifact_is_not_benchmarked(masked: Path) -> None:
    (masked / "model.onnx").write_bytes((masked / "model.onnx").read_bytes() + b"\0")
    result = run_cli("bench", str(masked), *QUICK)
    assert result.exit_code == 1
    assert "'model.onnx' was modified" in result.output


def test_session_options_apply_and_refuse_unknown_keys() -> None:
    options = session_options(
        {"intra_op_num_threads": 1, "execution_mode": "parallel", "graph_optimization_level": "basic"}
    )
    assert options.intra_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(UsageError, match="Unknown session setting"):
        session_options({"threads": 1})
    with pytest.raises(UsageError, match="execution_mode"):
        session_options({"execution_mode": "fast"})


# -- plots -----------------------------------------------------------------------------------------


def test_plot_without_matplotlib_is_refused_before_measuring(
    masked: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = run_cli("bench", str(masked), *QUICK, "--plot", str(tmp_path / "latency.png"))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--plot needs matplotlib" in text
    assert "pip install matplotlib" in text
    assert "batch 1, seq 1" not in text  # nothing was measured
    assert not (tmp_path / "latency.png").exists()


def test_plot_is_written(masked: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is optional (the bench extra)")
    target = tmp_path / "latency.png"
    result = run_cli("bench", str(masked), *QUICK, "--no-settings", "--no-ragged", "--plot", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- recording -------------------------------------------------------------------------------------


def test_record_writes_bench_json_and_verify_still_passes(masked: Path) -> None:
    manifest_before = json.loads((masked / MANIFEST).read_text())
    result = run_cli("bench", str(masked), *QUICK, "--record", "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads((masked / BENCH_FILE).read_text())
    assert recorded == json.loads(result.stdout)
    assert set(recorded["settings"]) >= set(REGIMES)
    manifest = json.loads((masked / MANIFEST).read_text())
    assert set(manifest["files"]) == set(manifest_before["files"]) | {BENCH_FILE}
    assert {k: v for k, v in manifest.items() if k != "files"} == {
        k: v for k, v in manifest_before.items() if k != "files"
    }
    assert verify_artifact(masked, device="cpu").passed
    assert run_cli("verify", str(masked), "--device", "cpu").exit_code == 0
    # Recording again replaces the file and its hash.
    assert run_cli("bench", str(masked), *QUICK, "--no-ragged", "--record").exit_code == 0
    assert "ragged" not in json.loads((masked / BENCH_FILE).read_text())
    assert verify_artifact(masked, device="cpu").passed
    # A later change to the recorded figures is caught like any other file's.
    (masked / BENCH_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match=r"'bench\.json' was modified"):
        verify_artifact(masked, device="cpu")


def test_record_refuses_a_tampered_artifact_and_leaves_it_alone(masked: Path) -> None:
    # An unlisted model file: nothing verified it (a stray .DS_Store would only be a warning).
    (masked / "model.fp16.onnx").write_bytes(b"not listed")
    before = (masked / MANIFEST).read_bytes()
    from rnnexport.bench import BenchReport, record_bench

    with pytest.raises(ArtifactError, match="re-hashing would hide that"):
        record_bench(masked, BenchReport({"format": 1}))
    assert (masked / MANIFEST).read_bytes() == before
    assert not (masked / BENCH_FILE).exists()


# -- user weights ----------------------------------------------------------------------------------


def test_user_weights_are_needed_again_and_must_be_the_same(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from rnnexport.builder.eager import build_model
    from rnnexport.registry import get_arch
    from rnnexport.spec import ArchConfig

    spec = get_arch("many-to-many")
    checkpoint = tmp_path / "mine.safetensors"
    save_file(build_model(spec, ArchConfig(hidden_size=8), seed=3).state_dict(), str(checkpoint))
    build("many-to-many", out=tmp_path / "dist", weights=checkpoint, device="cpu")
    artifact = tmp_path / "dist" / "many-to-many"
    fast = [*QUICK, "--no-settings", "--no-ragged", "--json"]

    without = run_cli("bench", str(artifact), *fast)
    assert without.exit_code == 0, without.output
    reason = json.loads(without.stdout)["runtimes"]["pytorch-eager"]["reason"]
    assert "--weights" in reason

    with_weights = run_cli("bench", str(artifact), *fast, "--weights", str(checkpoint))
    assert with_weights.exit_code == 0, with_weights.output
    assert json.loads(with_weights.stdout)["runtimes"]["pytorch-eager"]["available"]

    other = tmp_path / "other.safetensors"
    save_file(build_model(spec, ArchConfig(hidden_size=8), seed=4).state_dict(), str(other))
    wrong = run_cli("bench", str(artifact), *fast, "--weights", str(other))
    assert wrong.exit_code == 2
    assert "is not the checkpoint" in " ".join(wrong.output.split())
    del torch


# -- ragged batches --------------------------------------------------------------------------------


def test_plan_buckets_partitions_the_rows() -> None:
    rng = np.random.default_rng(0)
    for lengths in (rng.integers(1, 300, size=57), np.full(8, 5), np.array([200] + [1] * 31), np.array([7])):
        groups = plan_buckets(lengths)
        rows = np.concatenate(groups)
        assert sorted(rows.tolist()) == list(range(lengths.size))  # every row exactly once
        maxima = [int(lengths[g].max()) for g in groups]
        assert maxima == sorted(maxima, reverse=True)
    assert len(plan_buckets(np.full(8, 5))) == 1  # equal lengths never split
    long_and_short = plan_buckets(np.array([200] + [1] * 31))
    assert [g.tolist() for g in long_and_short] == [[0], list(range(1, 32))]
    assert plan_buckets(np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize("arch", ["many-to-many-masked", "attention"])
def test_bucketed_run_equals_the_direct_run(dist: Path, arch: str) -> None:
    session = ort.InferenceSession(str(dist / arch / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batch, seq = 23, 90
    x = rng.standard_normal((batch, seq, 10), dtype=np.float32)
    for lengths in (
        rng.integers(1, seq + 1, size=batch),
        np.r_[seq, np.ones(batch - 1, dtype=np.int64)],
        np.r_[np.ones(batch - 1, dtype=np.int64), seq],
    ):
        feeds = {"x": x, "lengths": lengths.astype(np.int64)}
        (direct,) = session.run(["y"], feeds)
        bucketed = bucketed_run(session, feeds)
        assert list(bucketed) == ["y"]
        assert bucketed["y"].shape == direct.shape
        assert bucketed["y"].dtype == direct.dtype
        np.testing.assert_allclose(bucketed["y"], direct, rtol=1e-5, atol=1e-6)
        if arch == "many-to-many-masked":
            padded = np.arange(seq)[None, :] >= lengths[:, None]
            assert np.all(bucketed["y"][padded] == 0.0)
    # The same rows, given in a different order, come back in that order.
    order = rng.permutation(batch)
    shuffled = {"x": x[order], "lengths": lengths[order].astype(np.int64)}
    np.testing.assert_allclose(
        bucketed_run(session, shuffled)["y"], session.run(["y"], feeds)[0][order], rtol=1e-5, atol=1e-6
    )


def test_bucketed_run_names_a_missing_lengths_input(dist: Path) -> None:
    session = ort.InferenceSession(str(dist / "attention" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 3, 10), np.float32)
    with pytest.raises(UsageError, match="lengths_input"):
        bucketed_run(session, {"x": x, "n": np.array([3, 1])}, lengths_input="n")
    with pytest.raises(UsageError, match="exceeds"):
        bucketed_run(session, {"x": x, "lengths": np.array([4, 1])})


def test_parallel_execution_is_tried_only_for_independent_branches() -> None:
    from rnnexport.bench.sessions import _candidates

    def modes(nodes: int) -> set[str]:
        return {c["execution_mode"] for c in _candidates(nodes) if c}

    assert modes(1) == {"sequential"}
    assert modes(3) == {"sequential", "parallel"}
    assert {} in _candidates(1)  # onnxruntime's defaults are always the reference
    for candidate in _candidates(3):
        session_options(candidate)


def test_shipped_variants_are_timed_beside_the_artifact(tmp_path: Path) -> None:
    build("many-to-many", out=tmp_path, device="cpu", precisions="fp32,int8", formats="onnx,ort")
    result = run_cli("bench", str(tmp_path / "many-to-many"), *QUICK, "--no-eager", "--no-plain", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    timed = {r["runtime"] for r in report["results"]}
    assert timed == {
        "onnxruntime",
        "onnxruntime:model.ort",
        "onnxruntime:model.int8.onnx",
        "onnxruntime:model.int8.ort",
    }
    assert report["runtimes"]["onnxruntime:model.int8.onnx"]["precision"] == "int8"
    for entry in report["results"]:
        _positive_stats(entry)
    assert all("vs_onnxruntime:model.int8.ort" in s for s in report["speedup"])
