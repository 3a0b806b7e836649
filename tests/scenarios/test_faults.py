"""Bad input and faults: a clear message, a non-zero exit, no traceback, and the disk left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnexport.artifact import MANIFEST
from rnnexport.builder import exporting, references, stages

from ..helpers import rehash, run_cli


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (and symlink target name) under ``folder``, to compare before and after."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): (str(p.readlink()).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


# -- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--arch", "lstm"], "Unknown architecture 'lstm': expected one of parallel-lstm, "),
        (
            ["--arch", "many-to-many", "--hidden-size", "0"],
            "hidden_size must be a whole number from 1 to 4096, got 0",
        ),
        (
            ["--arch", "many-to-many", "--input-size", "-3"],
            "input_size must be a whole number from 1 to 4096, got -3",
        ),
        (
            ["--arch", "parallel-gru", "--branches", "100"],
            "branches must be a whole number from 1 to 16, got 100",
        ),
        (
            ["--arch", "attention", "--output-size", "1000000"],
            "output_size must be a whole number from 1 to 4096",
        ),
        (["--arch", "attention", "--opset", "3"], "--opset must be between 7 and 21"),
        (["--arch", "attention", "--atol", "-1"], "--atol must be a number in [0, 1)"),
    ],
)
def test_bad_requests_exit_2_and_write_nothing(tmp_path: Path, args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    result = run_cli("build", *args, "--out", str(out))
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())
    assert not out.exists()


def test_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    result = run_cli("build", "--arch", "attention", "--out", str(target))
    assert result.exit_code == 2
    assert "--out must be a folder, but" in result.output
    assert target.read_text() == "keep me"


def test_out_is_unwritable() -> None:
    # /proc refuses new entries even for root, unlike a chmod'ed folder.
    result = run_cli("build", "--arch", "attention", "--out", "/proc/rnnexport-test/out")
    assert result.exit_code == 2
    assert "Cannot write under /proc/rnnexport-test/out" in result.output


def test_existing_artifact_needs_force_and_force_replaces_completely(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    (out / "attention" / "stale.txt").write_text("from an older build")
    before = _snapshot(out)
    refused = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu")
    assert refused.exit_code == 2
    assert "already exists" in refused.output
    assert "--force" in refused.output
    assert _snapshot(out) == before
    forced = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu", "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "attention" / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["attention"]  # no staging or backup folders left
    assert run_cli("verify", str(out / "attention"), "--device", "cpu").exit_code == 0


# -- user tensors ------------------------------------------------------------------------------------


def _inputs(tmp_path: Path, x: np.ndarray, lengths: np.ndarray) -> Path:
    path = tmp_path / "cases.npz"
    np.savez(path, x=x, lengths=lengths)
    return path


@pytest.mark.parametrize(
    ("lengths", "poison", "expected"),
    [
        ([5, 0, 3], None, "1 <= lengths[b] <= seq (5); row 1 has 0"),
        ([5, -2, 3], None, "row 1 has -2"),
        ([5, 6, 3], None, "row 1 has 6"),
        ([5, 2, 3], np.nan, "holds 1 NaN or infinite value(s)"),
        ([5, 2, 3], np.inf, "holds 1 NaN or infinite value(s)"),
    ],
)
def test_bad_user_inputs(tmp_path: Path, lengths: list[int], poison: float | None, expected: str) -> None:
    x = np.zeros((3, 5, 10), np.float32)
    if poison is not None:
        x[1, 1, 1] = poison
    path = _inputs(tmp_path, x, np.array(lengths, np.int64))
    result = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_user_inputs_with_wrong_names_dtype_or_pickles(tmp_path: Path) -> None:
    path = tmp_path / "cases.npz"
    np.savez(path, x=np.zeros((2, 4, 10), np.float32), length=np.ones(2, np.int64))
    wrong_name = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "o"))
    assert wrong_name.exit_code == 2
    assert "missing ['lengths'], unexpected ['length']" in wrong_name.output
    np.savez(path, x=np.zeros((2, 4, 10), np.float64), lengths=np.ones(2, np.int64))
    wrong_dtype = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "o"))
    assert "has dtype float64, expected float32" in wrong_dtype.output
    np.savez(path, x=np.array([{"a": 1}], dtype=object), lengths=np.ones(1, np.int64))
    pickled = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "o"))
    assert pickled.exit_code == 2
    assert "Cannot read --inputs" in pickled.output
    assert not (tmp_path / "o").exists()


def test_good_user_inputs_are_verified_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    path = _inputs(tmp_path, rng.standard_normal((4, 33, 10)).astype(np.float32), np.array([33, 1, 20, 7]))
    result = run_cli(
        "build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "o"), "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "attention" / MANIFEST).read_text())
    shapes = manifest["verification"]["providers"]["CPUExecutionProvider"]["shapes"]
    assert {"x": [4, 33, 10], "lengths": [4]} in shapes


# -- unsafe artifacts ---------------------------------------------------------------------------------


def test_symlinks_in_an_artifact_are_refused(shipped: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(shipped, folder)
    (folder / "test_data_set_0" / "input_0.pb").unlink()
    (folder / "test_data_set_0" / "input_0.pb").symlink_to("/etc/hostname")
    (folder / "extra").symlink_to(tmp_path, target_is_directory=True)
    result = run_cli("verify", str(folder))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "'test_data_set_0/input_0.pb' is a symbolic link (refused" in output
    assert "'extra' is a symbolic link" in output


def test_external_data_outside_the_folder_is_never_read(shipped: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(shipped, folder)
    model = onnx.load(str(folder / "model.onnx"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        tensor.external_data.add(key=key, value=value)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)
    os.mkfifo(tmp_path / "secret.bin")  # opening it for reading would block: the test would time out
    result = subprocess.run(
        [sys.executable, "-m", "rnnexport", "verify", str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    output = " ".join(result.stderr.split())
    assert "points at external data '../secret.bin' (outside the artifact folder); it was not read" in output
    assert "Traceback" not in output


def test_manifest_paths_outside_the_folder_are_refused(shipped: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(shipped, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = run_cli("verify", str(folder))
    assert result.exit_code == 1
    assert "a path outside the artifact folder (refused)" in " ".join(result.output.split())


# -- interruption -----------------------------------------------------------------------------------


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "stage",
    ["load_golden", "export_onnx", "simplify_onnx", "verify_on_device", "write_test_data", "hash_files"],
)
def test_ctrl_c_at_any_stage_leaves_the_destination_as_it_was(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    before = _snapshot(out)
    # Each name is patched where the build looks it up.
    where = {"load_golden": references, "export_onnx": exporting, "simplify_onnx": exporting}
    monkeypatch.setattr(where.get(stage, stages), stage, _interrupt)
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--force", "--device", "cpu")
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1].startswith("interrupted:")
    assert _snapshot(out) == before


def test_ctrl_c_while_swapping_in_the_new_artifact(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    before = _snapshot(out)
    real_rename = Path.rename
    calls: list[Path] = []

    def rename(self: Path, target: Path) -> Path:
        calls.append(self)
        if len(calls) == 2:  # the old artifact is already aside; the new one is about to move in
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    # The two-rename swap, as where the OS has no atomic exchange of two folders (test_publish tests
    # the exchange itself).
    monkeypatch.setattr("rnnexport.artifact.publishing.exchange", lambda first, second: False)
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--force", "--device", "cpu")
    assert result.exit_code == 130
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["attention"]


def test_ctrl_c_into_a_missing_out_folder_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporting, "export_onnx", _interrupt)
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path / "new" / "deeper"))
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []


# -- concurrency -----------------------------------------------------------------------------------


def test_eight_threads_on_one_session_match_serial_runs(shipped: Path) -> None:
    session = ort.InferenceSession(str(shipped / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    feeds = []
    for k in range(32):
        batch, seq = 1 + k % 5, 1 + (7 * k) % 90
        lengths = rng.integers(1, seq + 1, size=batch).astype(np.int64)
        feeds.append({"x": rng.standard_normal((batch, seq, 10), dtype=np.float32), "lengths": lengths})
    serial = [session.run(["y"], f)[0] for f in feeds]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for _ in range(3):
                for k in range(offset, len(feeds), 8):
                    y = session.run(["y"], feeds[k])[0]
                    assert k not in results or np.array_equal(results[k], y)
                    results[k] = y
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == len(feeds)
    for k, expected in enumerate(serial):
        np.testing.assert_array_equal(results[k], expected)


def test_all_reports_each_failure_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    from rnnexport.builder.export import export_onnx as real_export

    def export_fails_for_gru(model: object, contract: object, **kwargs: object) -> object:
        if type(model).__name__ == "ParallelGRU":
            from rnnexport.errors import ExportError

            raise ExportError("simulated exporter failure for the GRU")
        return real_export(model, contract, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(exporting, "export_onnx", export_fails_for_gru)
    # One exporter named: under auto the GRU's error would also carry the other exporter's failure.
    result = run_cli(
        "build", "--all", "--out", str(out), "--device", "cpu", "--json", "--exporter", "torchscript"
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["passed"] is False
    failed = [a for a in summary["artifacts"] if not a["passed"]]
    assert [a["arch"] for a in failed] == ["parallel-gru"]
    assert failed[0]["error"] == "simulated exporter failure for the GRU"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        a["arch"] for a in summary["artifacts"] if a["passed"]
    )


def test_ctrl_c_during_all_stops_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporting, "simplify_onnx", _interrupt)
    result = run_cli("build", "--all", "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 130
    assert result.output.count("building ") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["model.onnx", "test_data_set_2/input_0.pb"])
def test_rehashed_garbage_is_an_artifact_error_not_a_crash(
    shipped: Path, tmp_path: Path, target: str
) -> None:
    folder = tmp_path / "a"
    shutil.copytree(shipped, folder)
    (folder / target).write_bytes(b"\xff\xfe not protobuf \x00" * 8)
    rehash(folder)  # an edit that also fixed the manifest: the content checks must still hold
    result = run_cli("verify", str(folder))
    assert result.exit_code == 1
    assert "Rebuild the artifact" in result.output


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("files"),
        lambda m: m["verification"].pop("tolerance"),
        lambda m: m["verification"]["tolerance"]["cpu"].update(atol="tiny"),
        lambda m: m.update(files=["model.onnx"]),
    ],
)
def test_malformed_manifest_is_an_artifact_error(shipped: Path, tmp_path: Path, edit: object) -> None:
    folder = tmp_path / "a"
    shutil.copytree(shipped, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)  # type: ignore[operator]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = run_cli("verify", str(folder))
    assert result.exit_code == 1
    assert "is not a valid rnnexport manifest" in result.output
