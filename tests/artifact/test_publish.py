"""What a build publishes: only what `verify` accepts, and in one atomic step where the OS allows.

`--force` swaps the new artifact with the old one in a single ``renameat2(RENAME_EXCHANGE)`` on
Linux, so the destination holds a complete artifact at every moment; elsewhere (or where the file
system refuses the flag) it takes two renames and the recovery of an interrupted swap. The last step
before publishing is verify's own check of the staged folder; names the manifest cannot carry are
refused, with the rule, before anything is exported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rnnexport import safeio
from rnnexport.artifact import hash_files, publish, recover_destination
from rnnexport.builder import stateful
from rnnexport.builder.pipeline import build, build_model_artifact
from rnnexport.errors import ArtifactError, UsageError

from ..helpers import flat, run_cli

SIZES = {"input_size": 3, "hidden_size": 8, "output_size": 2}
IO = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 4]}],
    "outputs": [{"name": "y", "shape": ["batch", "seq", 3]}],
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("publish")
    build("many-to-many", out=out, config=SIZES, device="cpu")
    return out / "many-to-many"


def _two_artifacts(shipped: Path, tmp_path: Path) -> tuple[Path, Path, int, int]:
    """A destination holding an artifact and a staging folder beside it holding another."""
    destination = tmp_path / "many-to-many"
    staging = tmp_path / ".many-to-many.partial-1-1-test"
    shutil.copytree(shipped, destination)
    shutil.copytree(shipped, staging)
    return destination, staging, destination.stat().st_ino, staging.stat().st_ino


# -- the exchange ----------------------------------------------------------------------------------


def test_force_exchanges_the_folders_in_one_step(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination, staging, old, new = _two_artifacts(shipped, tmp_path)
    calls: list[tuple[Path, Path, int]] = []
    real = safeio._renameat2

    def recording(source: Path, target: Path, flags: int) -> int:
        calls.append((source, target, flags))
        return real(source, target, flags)

    def no_rename(self: Path, target: Any) -> Path:
        raise AssertionError(f"{self} renamed: the two-rename path was taken")

    seen: dict[str, int | None] = {}
    real_rmtree = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        # The moment after the exchange: the destination is already the new artifact, whole.
        seen["destination"] = destination.stat().st_ino
        seen["aside"] = Path(path).stat().st_ino
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(safeio, "_renameat2", recording)
    monkeypatch.setattr(Path, "rename", no_rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    publish(staging, destination, force=True)
    assert calls == [(staging, destination, 2)]  # RENAME_EXCHANGE, once
    assert seen == {"destination": new, "aside": old}
    assert destination.stat().st_ino == new
    assert not os.path.lexists(staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many-to-many"]  # the old one is gone
    assert run_cli("verify", str(destination), "--device", "cpu").exit_code == 0


class _LibcWithoutWrapper:
    """A C library as glibc before 2.28 shows it: no renameat2 symbol, the syscall entry point."""

    def __init__(self, real: ctypes.CDLL) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        if name == "renameat2":
            raise AttributeError(name)
        return getattr(self._real, name)


def test_without_the_wrapper_the_system_call_swaps(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if platform.machine() not in safeio._RENAMEAT2_SYSCALL or not sys.platform.startswith("linux"):
        pytest.skip("renameat2's system call number is known for Linux on the listed architectures only")
    destination, staging, _, new = _two_artifacts(shipped, tmp_path)
    real = ctypes.CDLL(None, use_errno=True)
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _LibcWithoutWrapper(real))
    assert safeio.exchange(staging, destination)
    assert destination.stat().st_ino == new


@pytest.mark.parametrize(
    "unavailable",
    [
        "file system refuses the flag (EINVAL)",
        "kernel without the call (ENOSYS)",
        "no wrapper, unknown architecture",
        "not Linux",
    ],
)
def test_where_the_exchange_is_unavailable_two_renames_do_it(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unavailable: str
) -> None:
    destination, staging, _, new = _two_artifacts(shipped, tmp_path)
    if "EINVAL" in unavailable or "ENOSYS" in unavailable:
        code = errno.EINVAL if "EINVAL" in unavailable else errno.ENOSYS
        monkeypatch.setattr(safeio, "_renameat2", lambda *args: code)
    elif "architecture" in unavailable:
        real = ctypes.CDLL(None, use_errno=True)
        monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _LibcWithoutWrapper(real))
        monkeypatch.setattr(platform, "machine", lambda: "pdp11")
    else:
        monkeypatch.setattr(sys, "platform", "darwin")
    assert not safeio.exchange(staging, destination)  # nothing was swapped
    assert destination.stat().st_ino != new
    publish(staging, destination, force=True)
    assert destination.stat().st_ino == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many-to-many"]


def test_a_kill_after_the_exchange_leaves_the_old_artifact_for_the_next_build_to_remove(
    tmp_path: Path,
) -> None:
    # Killed after the exchange, before the removal: the old artifact, whole (variants, bench.json and
    # all), sits under a dead build's staging name. The next build removes it like any staging folder.
    destination = tmp_path / "many-to-many"
    destination.mkdir()
    dead = tmp_path / ".many-to-many.partial-3-3-abcd"
    (dead / "test_data_set_0").mkdir(parents=True)
    for name in (
        "manifest.json",
        "model.onnx",
        "model.ort",
        "model.fp16.onnx",
        "model.int8.ort",
        "required_operators.config",
        "bench.json",
        "test_data_set_0/input_0.pb",
    ):
        (dead / name).write_bytes(b"x")
    notes = recover_destination(destination)
    assert [n.split(" of a build")[0] for n in notes] == [
        "removed the staging folder .many-to-many.partial-3-3-abcd"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many-to-many"]
    # A file rnnexport never writes keeps such a folder where it is.
    dead.mkdir()
    (dead / "notes.txt").write_bytes(b"mine")
    assert "left .many-to-many.partial-3-3-abcd in place" in recover_destination(destination)[0]
    assert (dead / "notes.txt").read_bytes() == b"mine"


# -- names the manifest cannot carry ----------------------------------------------------------------


class _Keyed(nn.Module):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({key: nn.GRU(4, 8, batch_first=True)})
        self.key = key
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.blocks[self.key](x)
        return self.fc(y)  # type: ignore[no-any-return]


@pytest.mark.parametrize("key", ["my-rnn", "my rnn", "r\u00e9seau"])
def test_a_module_path_a_state_name_cannot_carry_is_refused_before_export(tmp_path: Path, key: str) -> None:
    with pytest.raises(UsageError) as caught:
        build_model_artifact(_Keyed(key), io=IO, name="keyed", out=tmp_path, device="cpu", streaming=True)
    message = flat(str(caught.value))
    assert f"the state of 'blocks.{key}' would be named 'state_in.blocks.{key}.h'" in message
    assert "a state key is letters, digits and underscores in parts separated by dots" in message
    assert "an nn.ModuleDict key such as 'my-rnn' becomes 'my_rnn'" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["state_out.something", "state_in.y", "state_out.rnn.h"])
def test_own_names_under_the_state_prefixes_are_refused_before_export(tmp_path: Path, name: str) -> None:
    io = {"inputs": IO["inputs"], "outputs": [{**IO["outputs"][0], "name": name}]}
    with pytest.raises(UsageError) as caught:
        build_model_artifact(_Keyed("rnn"), io=io, name="keyed", out=tmp_path, device="cpu", streaming=True)
    message = flat(str(caught.value))
    assert f"the model's own tensor '{name}'" in message
    assert "names starting with 'state_in.' or 'state_out.' are reserved for the carried state" in message
    assert list(tmp_path.iterdir()) == []


# -- the last step: verify's own check of the staged folder ----------------------------------------


_HASH_FILES = hash_files


def _drop_a_hash(folder: Path) -> dict[str, str]:
    """``hash_files`` with a bug: one file left out of the manifest."""
    hashes = _HASH_FILES(folder)
    hashes.pop(sorted(hashes)[-1])
    return hashes


@pytest.mark.parametrize("bug", ["state names unchecked", "a file left out of the manifest"])
def test_a_build_never_publishes_what_verify_refuses(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str
) -> None:
    out = tmp_path / "out"
    if bug == "state names unchecked":
        monkeypatch.setattr(stateful, "state_name_problems", lambda *args: [])
        expected = "is not a valid rnnexport manifest: a state has the input 'state_in.blocks.my-rnn.h'"

        def run() -> object:
            return build_model_artifact(
                _Keyed("my-rnn"),
                io=IO,
                name="many-to-many",
                out=out,
                device="cpu",
                streaming=True,
                force=True,
            )
    else:
        monkeypatch.setattr("rnnexport.builder.stages.hash_files", _drop_a_hash)
        expected = "is a test-data tensor the manifest does not list"

        def run() -> object:
            return build("many-to-many", out=out, config=SIZES, device="cpu", force=True)

    # Over an existing artifact, with --force: it must stay as it was.
    shutil.copytree(shipped, out / "many-to-many")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ArtifactError) as caught:
        run()
    message = flat(str(caught.value))
    assert message.startswith("This build made an artifact that 'rnnexport verify' would refuse (")
    assert expected in message
    assert "nothing was published. This is a bug in rnnexport" in message
    assert caught.value.exit_code == 1
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir()] == ["many-to-many"]  # no staging folder left either
