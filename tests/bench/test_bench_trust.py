"""`bench` against hostile artifacts: it reads them as `verify` does, and runs them under its bounds.

Every attack edits a good artifact the way an attacker who controls the folder would (the model, the
manifest and its hashes alike). The benchmark must refuse it with a message, or stop it at a stated
time bound, never hang, read outside the folder, or end in a traceback; SIGTERM ends it like a build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from rnnexport.artifact import MANIFEST
from rnnexport.bench import BENCH_FILE, run_bench
from rnnexport.builder.pipeline import build
from rnnexport.errors import ArtifactError
from rnnexport.limits import DEFAULT_LIMITS, Limits

from ..helpers import (
    cli_in_child,
    flat,
    make_external,
    plant_endless_model,
    rehash,
    run_cli,
    sigterm_while_the_model_runs,
)

# The cheapest run that still times something: ONNX Runtime alone, two shapes, one round.
QUICK = [
    "--batch", "1", "--seq", "1,3", "--rounds", "1", "--repeats", "2",
    "--no-settings", "--no-ragged", "--no-eager", "--no-plain",
]  # fmt: skip


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shipped")
    build("many-to-many", out=out, device="cpu")
    return out / "many-to-many"


@pytest.fixture(scope="module")
def shipped_external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with its weights in model.onnx.data (a tiny inline limit forces it)."""
    out = tmp_path_factory.mktemp("external")
    build(
        "many-to-many",
        out=out,
        device="cpu",
        limits=dataclasses.replace(DEFAULT_LIMITS, inline_model_bytes=1000),
    )
    return out / "many-to-many"


def _edit_model(folder: Path, edit: object) -> None:
    model = onnx.load_from_string((folder / "model.onnx").read_bytes())
    assert callable(edit)
    edit(model)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    rehash(folder)


def _refused(folder: Path, *expected: str, code: int = 1, options: tuple[str, ...] = ()) -> str:
    result = run_cli("bench", str(folder), *QUICK, *options)
    output = flat(result.output)
    assert result.exit_code == code, output
    for text in expected:
        assert text in output
    assert "batch 1, seq 3" not in output  # nothing was timed
    return output


# -- reading: the same bounded, hashed reader as verify ----------------------------------------------


def test_a_fifo_at_manifest_json_is_refused_at_once(folder: Path, tmp_path: Path) -> None:
    (folder / MANIFEST).rename(tmp_path / "real.json")
    os.mkfifo(folder / MANIFEST)  # opening it would block forever
    result = cli_in_child("bench", str(folder), *QUICK, timeout=60)
    assert result.returncode == 1
    assert "expected a plain file manifest.json in it, found a FIFO (named pipe)" in flat(result.stderr)
    assert "Traceback" not in result.stderr


def test_a_symlinked_model_is_refused(folder: Path, tmp_path: Path) -> None:
    (folder / "model.onnx").rename(tmp_path / "elsewhere.onnx")
    (folder / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    _refused(folder, "'model.onnx' is a symbolic link (refused: artifacts hold plain files only)")


def test_a_manifest_over_the_size_bound_is_refused(folder: Path) -> None:
    size = (folder / MANIFEST).stat().st_size
    with pytest.raises(ArtifactError, match=rf"is {size:,} bytes; the limit is 100 bytes"):
        run_bench(folder, shapes=[(1, 1)], runtimes=["onnxruntime"], limits=Limits(manifest_bytes=100))


def test_a_manifest_whose_input_was_renamed_is_refused(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["inputs"][0]["name"] = "renamed"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    _refused(folder, "breaks its I/O contract: input names are ['x'], expected ['renamed']")


def _weights_outside(folder: Path, location: str) -> bytes:
    """Move the largest initializer's bytes out of model.onnx, to ``location``; return them."""
    saved: dict[str, bytes] = {}

    def edit(model: onnx.ModelProto) -> None:
        biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        saved["data"] = biggest.raw_data
        make_external(biggest, location)
        for entry in biggest.external_data:
            if entry.key == "length":
                entry.value = str(len(saved["data"]))

    _edit_model(folder, edit)
    return saved["data"]


def test_external_data_outside_the_folder_is_never_read(folder: Path) -> None:
    data = _weights_outside(folder, "../model.onnx.data")
    (folder.parent / "model.onnx.data").write_bytes(data)
    _refused(
        folder, "points at external data '../model.onnx.data' (outside the artifact folder); it was not read"
    )


def test_external_data_in_the_current_folder_is_never_read(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name a legitimate artifact uses, but not listed in the manifest: ONNX Runtime, given the
    # model's bytes, would resolve it against the caller's current folder, which holds the weights.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "model.onnx.data").write_bytes(_weights_outside(folder, "model.onnx.data"))
    monkeypatch.chdir(cwd)
    _refused(folder, "points at external data 'model.onnx.data' (a side file); it was not read")


@pytest.mark.parametrize("poison", ["fifo", "zeros"])
def test_a_listed_weights_file_is_read_from_the_private_copy_never_the_cwd(
    shipped_external: Path, tmp_path: Path, poison: str
) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(shipped_external, folder)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    size = (folder / "model.onnx.data").stat().st_size
    if poison == "fifo":
        os.mkfifo(cwd / "model.onnx.data")  # opening it would block: a pass shows it was never opened
    else:
        (cwd / "model.onnx.data").write_bytes(bytes(size))
    result = cli_in_child("bench", str(folder), *QUICK, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    [node] = json.loads(result.stdout)["runtimes"]["onnxruntime"]["recurrent_nodes"]
    # The verified weights, not the zeros beside the caller.
    assert node["recurrence_zero_fraction"] < 0.5


# -- running: bounded in time and memory, refused with the numbers up front -------------------------


def test_an_endless_loop_is_stopped_at_the_time_limit(folder: Path) -> None:
    plant_endless_model(folder)
    _refused(
        folder,
        "did not finish 'batch 1, seq 1' within the time bound of 2 s (--time-limit), and was stopped",
        "a Loop with an enormous trip count",
        options=("--time-limit", "2"),
    )


def test_an_endless_loop_is_stopped_at_the_bound_derived_from_the_grid(folder: Path) -> None:
    plant_endless_model(folder)
    limits = dataclasses.replace(DEFAULT_LIMITS, bench_call_seconds_base=0.25)
    with pytest.raises(ArtifactError) as caught:
        run_bench(
            folder, shapes=[(1, 1)], runtimes=["onnxruntime"], settings=False, ragged=False, limits=limits
        )
    message = flat(str(caught.value))
    # 0.5 s of burst + 5 ms of pause + 4 calls of 0.25 s (and 1e-9 s per byte, row and step).
    assert "did not finish 'batch 1, seq 1' within the time bound of 1.51 s (derived from the grid" in message
    assert "plus 4 calls of at most 0.25 s at batch 1, seq 1" in message


def test_a_constant_of_shape_memory_bomb_is_a_message(folder: Path) -> None:
    def bomb(model: onnx.ModelProto) -> None:
        # The output plus a ConstantOfShape of 2^20 x 2^20 x 5 floats: 20 TiB.
        shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 5], np.int64), name="bomb_shape")
        model.graph.initializer.append(shape)
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = ["before_bomb" if o == out else o for o in node.output]
        model.graph.node.append(helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]))
        model.graph.node.append(helper.make_node("Add", ["before_bomb", "bomb"], [out]))

    _edit_model(folder, bomb)
    _refused(folder, "onnxruntime at batch 1, seq 1 failed, so nothing was measured", "ConstantOfShape")


def test_an_enormous_grid_is_refused_up_front_with_the_numbers(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    features = [t["shape"][-1] for t in manifest["inputs"] + manifest["outputs"]]
    assert manifest["inputs"][0]["shape"][:2] == ["batch", "seq"]
    needed = 10**12 * sum(features) * 4  # float32, every tensor [batch, seq, n]
    result = run_cli("bench", str(folder), "--batch", "1000000", "--seq", "1000000")
    output = flat(result.output)
    assert result.exit_code == 2, output
    assert f"--batch 1000000 with --seq 1000000 needs {needed / 2**30:.0f} GiB" in output
    assert "over the bound of 4 GiB" in output
    assert "loading" not in output


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """The folder as read-only as this process can make it: 0555, and as root (whom modes do not
    stop) the effective user nobody, for the duration."""
    folder.chmod(0o555)
    root = os.geteuid() == 0
    try:
        if root:
            os.setegid(65534)
            os.seteuid(65534)
        yield
    finally:
        if root:
            os.seteuid(0)
            os.setegid(0)
        folder.chmod(0o755)


def test_record_into_a_read_only_artifact_is_refused_before_measuring(shipped: Path) -> None:
    # A folder every user can read (pytest's own are private to their owner).
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        folder = base / "artifact"
        shutil.copytree(shipped, folder)
        before = (folder / MANIFEST).read_bytes()
        with _read_only(folder):
            result = run_cli("bench", str(folder), *QUICK, "--record")
        output = flat(result.output)
        assert result.exit_code == 2, output
        assert (
            f"--record writes bench.json into {folder} and lists it in the manifest, but the folder "
            "cannot be written" in output
        )
        assert "batch 1, seq 1" not in output  # refused before measuring
        assert (folder / MANIFEST).read_bytes() == before
        assert not (folder / BENCH_FILE).exists()
    finally:
        shutil.rmtree(base)


def test_sigterm_stops_bench_like_a_build(folder: Path) -> None:
    plant_endless_model(folder)
    args = ["bench", str(folder), *QUICK, "--time-limit", "600"]
    sigterm_while_the_model_runs(args, what="bench")
