"""`build` bounds what it reads and builds, survives signals and kills, and never deletes a user's data."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rnnexport import safeio
from rnnexport.artifact import publishing
from rnnexport.builder import cases as builder_cases
from rnnexport.builder import request as builder_request
from rnnexport.builder.golden import load_golden, regenerate_command
from rnnexport.builder.pipeline import build, estimate_resources
from rnnexport.errors import GoldenError, InputError, UsageError
from rnnexport.limits import Limits
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig

from ..helpers import ARCH_NAMES, ENTRY, REPO, flat, run_cli


def _python(script: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """A child interpreter running ``script``, which ends by calling the real entry point."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", script, *args], stderr=subprocess.PIPE, text=True, **kwargs
    )


# -- 4. resources, estimated before building ---------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "parameters"),
    [
        ("parallel-lstm", "2,416,447,488"),
        ("parallel-lstm-attention", "2,148,012,033"),
        ("parallel-gru", "1,879,445,504"),
    ],
)
def test_a_model_too_large_to_build_here_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, parameters: str
) -> None:
    # Refused from the sizes alone: building the model (minutes, 10 GB) must never start. Past
    # 2 GiB a model ships with external data, so what stops it is the memory a build needs.
    monkeypatch.setattr(builder_request, "model_and_references", pytest.fail)
    monkeypatch.setattr(builder_request, "available_memory", lambda: 24 << 30)
    result = run_cli(
        "build", "--arch", arch, "--hidden-size", "4096", "--input-size", "4096", "--branches", "16",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 2
    output = flat(result.output)
    assert f"has {parameters} parameters" in output
    assert "of float32 weights; building and verifying it needs about" in output
    assert "but only 24 GiB is available here" in output
    assert "Nothing was built" in output
    assert "dynamo" not in output  # never suggest an option that cannot help
    assert not (tmp_path / "out").exists()


def test_a_build_that_cannot_fit_in_memory_is_refused_with_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder_request, "available_memory", lambda: 256 << 20)
    result = run_cli(
        "build", "--arch", "parallel-lstm", "--branches", "16", "--hidden-size", "768", "--input-size", "768",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 2
    output = flat(result.output)
    assert (
        "has 85,033,728 parameters, 324 MiB of float32 weights; "
        "building and verifying it needs about 4.18 GiB" in output
    )
    assert "but only 256 MiB is available here. Nothing was built" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_estimate_counts_the_real_parameters(arch: str) -> None:
    spec = get_arch(arch)
    config = ArchConfig(input_size=6, hidden_size=9, output_size=4, branches=2)
    estimate = estimate_resources(spec, config)
    assert estimate.parameters == sum(p.numel() for p in spec.build_model(config).parameters())
    assert estimate.weight_bytes == 4 * estimate.parameters
    assert estimate.memory_bytes > estimate.weight_bytes


# -- 4 and 8. --config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"hidden_size": 8, "hidden_size": 9}', "the key 'hidden_size' appears twice in one object"),
        ('{"hiden_size": null}', "Unknown key(s) 'hiden_size' in --config"),
        ('{"hidden_size": 8, "brnaches": null}', "Unknown key(s) 'brnaches'"),
        ('{"hidden_size": null}', "gives null for 'hidden_size': expected whole numbers"),
        ("[" * 10_000 + "]" * 10_000, "nests 10000 levels deep; at most 64 are accepted"),
        ('{"hidden_size": 1e999}', "the number 1e999 is out of range"),
        ('{"hidden_size": NaN}', "NaN is not a JSON number"),
        ("[1, 2]", "holds a JSON list, expected an object of sizes"),
        ('{"hidden_size": 8.0}', "hidden_size must be a whole number from 1 to 4096, got 8.0"),
        ('{"hidden_size": true}', "hidden_size must be a whole number from 1 to 4096, got True"),
        ("\ufeff{}", "is not valid JSON"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "sizes.json"
    config.write_text(text, encoding="utf-8")
    result = run_cli("build", "--arch", "attention", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert expected in flat(result.output)
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_a_small_file(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.json"
    with sparse.open("wb") as handle:
        handle.truncate(1 << 30)
    os.mkfifo(tmp_path / "fifo.json")
    cases = {
        "/dev/zero": "--config /dev/zero is a character device; expected a regular file",
        str(sparse): "is 1,073,741,824 bytes; the limit is 65,536 bytes",
        str(tmp_path / "fifo.json"): "is a FIFO (named pipe); expected a regular file",
        str(tmp_path / "missing.json"): "No such file or directory (ENOENT)",
        str(tmp_path / ("c" * 256)): "has a path component of 256 bytes",
    }
    for path, expected in cases.items():
        result = run_cli("build", "--arch", "attention", "--config", path, "--out", str(tmp_path / "out"))
        assert result.exit_code == 2
        assert expected in flat(result.output)


def test_unknown_keys_with_null_values_through_the_api(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Unknown key"):
        build("attention", out=tmp_path, config={"hidden_size": 8, "hiden_size": None})


# -- 4. --inputs ------------------------------------------------------------------------------------


def _npz(path: Path, members: dict[str, tuple[dict[str, object], Callable[[io.RawIOBase], None]]]) -> Path:
    """Write an .npz member by member, streaming, so a large one costs no memory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, (header, write_data) in members.items():
            with archive.open(name, "w", force_zip64=True) as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                write_data(handle)  # type: ignore[arg-type]
    return path


def _zeros(count: int) -> Callable[[io.RawIOBase], None]:
    def write(handle: io.RawIOBase) -> None:
        block = bytes(1 << 20)
        for offset in range(0, count, len(block)):
            handle.write(block[: min(len(block), count - offset)])

    return write


def test_a_decompression_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    seq = (80 << 20) // (4 * 10)  # 80 MiB of float32 zeros: a few hundred kB compressed
    path = _npz(
        tmp_path / "bomb.npz",
        {
            "x.npy": ({"descr": "<f4", "fortran_order": False, "shape": (1, seq, 10)}, _zeros(4 * 10 * seq)),
            "lengths.npy": ({"descr": "<i8", "fortran_order": False, "shape": (1,)}, _zeros(8)),
        },
    )
    assert path.stat().st_size < 1 << 20
    result = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    output = flat(result.output)
    assert (
        "holds 2 array(s) of 80 MiB once decompressed ('x.npy' alone is 80 MiB); the limit is 64 MiB"
        in output
    )
    assert "Nothing was decompressed" in output
    assert not (tmp_path / "out").exists()


def test_an_npy_header_that_lies_about_its_shape(tmp_path: Path) -> None:
    path = _npz(
        tmp_path / "liar.npz",
        {
            "x.npy": ({"descr": "<f4", "fortran_order": False, "shape": (10**12, 1, 10)}, _zeros(40)),
            "lengths.npy": ({"descr": "<i8", "fortran_order": False, "shape": (1,)}, _zeros(8)),
        },
    )
    result = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert (
        "array 'x' declares shape [1000000000000, 1, 10] of float32 (40,000,000,000,000 bytes) "
        "but holds 40 bytes" in flat(result.output)
    )


def test_inputs_that_are_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "cases.npz")
    for path, expected in (
        (str(tmp_path / "cases.npz"), "--inputs " + str(tmp_path / "cases.npz") + " is a FIFO (named pipe)"),
        ("/dev/zero", "--inputs /dev/zero is a character device; expected a regular file"),
        # A folder is read as the ONNX test-data layout, so one without test_data_set_N/ is refused.
        (str(tmp_path), "is a folder without test_data_set_N/ folders"),
    ):
        result = run_cli("build", "--arch", "attention", "--inputs", path, "--out", str(tmp_path / "out"))
        assert result.exit_code == 2
        assert expected in flat(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.npz"]


def test_small_input_limits_passed_in(tmp_path: Path) -> None:
    path = tmp_path / "cases.npz"
    np.savez(path, x=np.zeros((2, 50, 10), np.float32), lengths=np.array([50, 3]))
    contract = get_arch("attention").contract(ArchConfig())
    assert builder_cases._read_inputs_file(path, contract)["x"].shape == (2, 50, 10)
    with pytest.raises(InputError, match="the limit is 1000 bytes in at most 64 arrays"):
        builder_cases._read_inputs_file(path, contract, limits=Limits(inputs_bytes=1000))
    with pytest.raises(InputError, match="the limit is 100 bytes"):
        builder_cases._read_inputs_file(path, contract, limits=Limits(inputs_file_bytes=100))


def test_safetensors_inputs_are_capped_by_size_on_disk(tmp_path: Path) -> None:
    big = tmp_path / "cases.safetensors"
    with big.open("wb") as handle:
        handle.write(b"\x08" + b"\x00" * 7 + b"{}      ")  # what a safetensors file starts with
        handle.truncate(100 << 20)
    result = run_cli("build", "--arch", "attention", "--inputs", str(big), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "is 104,857,600 bytes; the limit is 67,108,864 bytes" in flat(result.output)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{not json")
    result = run_cli(
        "build", "--arch", "attention", "--inputs", str(tmp_path / "bad.safetensors"), "--out", "o"
    )
    assert result.exit_code == 2
    assert "Cannot read --inputs" in result.output


# -- 7. long names, full disks, unwritable output ---------------------------------------------------


@pytest.mark.parametrize("option", ["--out", "--weights", "--inputs", "--config"])
def test_path_components_over_255_bytes(tmp_path: Path, option: str) -> None:
    long = str(tmp_path / ("p" * 300) / "x")
    out = long if option == "--out" else str(tmp_path / "out")
    extra = [] if option == "--out" else [option, long]
    result = run_cli("build", "--arch", "attention", "--out", out, *extra)
    assert result.exit_code == 2
    assert "has a path component of 300 bytes; file systems allow at most 255 bytes per name" in flat(
        result.output
    )


def test_a_file_size_limit_while_writing(tmp_path: Path) -> None:
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write past the limit then fails with EFBIG
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10000, resource.RLIM_INFINITY))\n"
        "from rnnexport.cli import main\n"
        "sys.argv = ['rnnexport', 'build', '--arch', 'attention', '--device', 'cpu', '--out', sys.argv[1]]\n"
        "main()\n"
    )
    process = _python(script, str(tmp_path / "out"))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    output = flat(stderr)
    assert "Cannot write model.onnx (16,490 bytes)" in output or "Cannot write" in output
    assert "File too large (EFBIG). Nothing was published" in output
    assert "Traceback" not in output
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_leaves_the_old_artifact(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def full(handle: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safeio, "_write", full)
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu", "--force")
    assert result.exit_code == 1
    assert "No space left on device (ENOSPC). Nothing was published" in flat(result.output)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize(
    "command", [["list", "--json"], ["list"], ["verify", "{shipped}", "--json", "--device", "cpu"]]
)
def test_output_to_a_full_device(shipped: Path, command: list[str]) -> None:
    script = ENTRY
    args = [a.format(shipped=shipped) for a in command]
    with open("/dev/full", "w") as full:  # noqa: PTH123 - a device, not a path to manipulate
        process = _python(script, *args, stdout=full)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1] == "error: cannot write the output: No space left on device."
    assert "Traceback" not in stderr


# -- 7. a corrupt golden folder ----------------------------------------------------------------------


def _golden_copy(tmp_path: Path) -> Path:
    root = tmp_path / "golden"
    shutil.copytree(REPO / "golden" / "attention", root / "attention")
    return root / "attention"


def _fifo_meta(folder: Path) -> None:
    (folder / "meta.json").unlink()
    os.mkfifo(folder / "meta.json")


def _meta_edit(edit: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        edit(meta)
        (folder / "meta.json").write_text(json.dumps(meta))

    return apply


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (
            lambda f: (f / "case_1.safetensors").write_bytes(b"\xff" * 64),
            "case_1.safetensors is not a readable",
        ),
        (lambda f: (f / "weights.safetensors").write_bytes(b""), "weights.safetensors is not a readable"),
        (lambda f: (f / "meta.json").write_text("[" * 5000 + "]" * 5000), "nests 5000 levels deep"),
        (lambda f: (f / "meta.json").write_text('{"format": 1, "format": 1}'), "appears twice"),
        (lambda f: (f / "meta.json").write_text("[]"), "meta.json holds a JSON list, expected an object"),
        (_fifo_meta, "is a FIFO (named pipe)"),
        (lambda f: (f / "case_2.safetensors").unlink(), "case_2.safetensors: No such file or directory"),
        (_meta_edit(lambda m: m["weights"].update(file="../../../etc/passwd")), "expected a plain file name"),  # type: ignore[attr-defined]
        (_meta_edit(lambda m: m.update(cases="all")), "cannot be read"),
        (_meta_edit(lambda m: m["config"].update(hidden_size=-1)), "hidden_size must be a whole number"),  # type: ignore[attr-defined]
    ],
)
def test_a_corrupt_golden_folder_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: Callable[[Path], object], expected: str
) -> None:
    folder = _golden_copy(tmp_path)
    corrupt(folder)
    with pytest.raises(GoldenError) as info:
        load_golden(get_arch("attention"), root=folder.parent)
    assert expected in str(info.value)
    assert regenerate_command("attention") in str(info.value)
    monkeypatch.setenv("RNNEXPORT_GOLDEN_DIR", str(folder.parent))
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 1
    assert expected in flat(result.output)
    assert not (tmp_path / "out").exists()


# -- 5. signals --------------------------------------------------------------------------------------

# The three signals as a terminal leaves them first: a suite started under nohup, or as a background
# job of a shell, passes SIGHUP or SIGINT on ignored, and rnnexport rightly leaves an ignored signal
# ignored (Python too, for SIGINT), so the child would never see the signal this sends.
_SLOW_BUILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from rnnexport.builder import exporting
marker = Path(sys.argv[1])
def slow_export(*args, **kwargs):
    marker.write_text("exporting")
    time.sleep(600)
exporting.export_onnx = slow_export
from rnnexport.cli import main
sys.argv = ["rnnexport", "build", "--arch", "attention", "--device", "cpu", "--out", *sys.argv[2:]]
main()
"""


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the build never reached the export stage"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_signals_are_handled_like_ctrl_c(tmp_path: Path, signum: int, code: int) -> None:
    marker = tmp_path / "marker"
    work = tmp_path / "work"
    work.mkdir()
    process = _python(_SLOW_BUILD, str(marker), str(work / "new" / "deeper"))
    _wait_for(marker, process)
    assert [p.name[:19] for p in (work / "new" / "deeper").iterdir()] == [".attention.partial-"]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code
    name = signal.Signals(signum).name if signum != signal.SIGINT else "Ctrl-C"
    assert f"interrupted: {name} stopped the run before it finished" in flat(stderr)
    assert "Traceback" not in stderr
    assert list(work.iterdir()) == []  # no staging folder, no created --out folders


def test_sigterm_during_a_force_rebuild_keeps_the_old_artifact(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    marker = tmp_path / "marker"
    process = _python(_SLOW_BUILD, str(marker), str(out), "--force")
    _wait_for(marker, process)
    process.terminate()
    process.communicate(timeout=120)
    assert process.returncode == 143
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir()] == ["attention"]


# -- 5. kills, stale folders, reused PIDs --------------------------------------------------------------


def test_stale_staging_folders_of_dead_builds_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    me, parent = os.getpid(), os.getppid()
    dead = out / f".attention.partial-{me}-1-abcd1234"  # our PID, another start time: a reused PID
    dead_legacy = out / f".attention.partial-{me}abc"  # not our naming: kept
    live = out / f".attention.partial-{parent}-{publishing._start_time(parent)}-live"
    other = out / ".parallel-gru.partial-1-1-x"  # another artifact's: not this build's business
    lookalike = out / f".attention.partial-{me}-2-mine"  # named like ours, holding the user's files
    for folder in (dead, dead_legacy, live, other, lookalike):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    (dead / "test_data_set_0").mkdir()
    (dead / "test_data_set_0" / "input_0.pb").write_bytes(b"partial")
    (lookalike / "notes.txt").write_text("the user's")
    (out / ".attention.partial-2-2-link").symlink_to(dead, target_is_directory=True)
    (out / ".attention.partial-3-3-file").write_text("not a folder")
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert f"removed the staging folder {dead.name} of a build (pid {me}) that is no longer running" in output
    assert f"left {lookalike.name} in place: it is named like a staging folder of a dead build" in output
    assert (lookalike / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            lookalike.name,
            dead_legacy.name,
            live.name,
            other.name,
            ".attention.partial-2-2-link",
            ".attention.partial-3-3-file",
            "attention",
        ]
    )


_KILLED_MID_SWAP = """
import errno, os, signal, sys
from pathlib import Path
import rnnexport.safeio
# A file system that refuses RENAME_EXCHANGE: --force takes the two renames.
rnnexport.safeio._renameat2 = lambda *args: errno.EINVAL
real = Path.rename
def rename(self, target):
    result = real(self, target)
    if self.name == "attention":  # the old artifact was just moved aside; the new one is not in yet
        os.kill(os.getpid(), signal.SIGKILL)
    return result
Path.rename = rename
from rnnexport.cli import main
sys.argv = ["rnnexport", "build", "--arch", "attention", "--device", "cpu", "--force", "--out", sys.argv[1]]
main()
"""


def test_a_kill_between_the_two_renames_is_restored_by_verify(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    process = _python(_KILLED_MID_SWAP, str(out))
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert "attention" not in left
    assert [n.split("-")[0] for n in left] == [".attention.old", ".attention.partial"]
    result = run_cli("verify", str(out / "attention"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert f"note: restored the previous artifact {out / 'attention'} from .attention.old-" in output
    assert "a --force rebuild (pid " in output
    assert "beside it was left by a build (pid " in output  # the dead run's staging folder, reported
    assert {
        p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".partial" not in str(p)
    } == before
    # The next build removes the dead run's staging folder.
    rebuilt = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu", "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "removed the staging folder .attention.partial-" in flat(rebuilt.output)
    assert [p.name for p in out.iterdir()] == ["attention"]


def test_an_interrupted_swap_is_restored_by_the_next_build(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(shipped, out / f".attention.old-{os.getpid()}-1")
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 2  # the previous artifact is back, and a plain build does not overwrite it
    output = flat(result.output)
    assert "already exists" in output
    assert "(Before this check, rnnexport restored the previous artifact" in output
    assert [p.name for p in out.iterdir()] == ["attention"]
    assert run_cli("verify", str(out / "attention"), "--device", "cpu").exit_code == 0


def test_a_stale_old_folder_with_our_own_pid(shipped: Path, tmp_path: Path) -> None:
    # A crash left .attention.old-PID; this process has the same PID now (as in a container).
    out = tmp_path / "out"
    shutil.copytree(shipped, out / "attention")
    shutil.copytree(shipped, out / f".attention.old-{os.getpid()}")
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu", "--force")
    assert result.exit_code == 0, result.output
    assert f"removed .attention.old-{os.getpid()}, the old artifact" in flat(result.output)
    assert [p.name for p in out.iterdir()] == ["attention"]


# -- 6. --force replaces only an artifact -------------------------------------------------------------


def test_force_never_deletes_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "attention" / "photos").mkdir(parents=True)
    (out / "attention" / "photos" / "thesis.tex").write_text("four years of work")
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--force")
    assert result.exit_code == 2
    output = flat(result.output)
    assert "--force replaces only an rnnexport artifact, and" in output
    assert "is not one: it has no manifest.json. Nothing was deleted" in output
    assert "Nothing was deleted" in output
    assert (out / "attention" / "photos" / "thesis.tex").read_text() == "four years of work"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text("a file"), "it is a regular file, not an artifact folder"),
        (
            lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"format": 1}')),
            "is not a valid rnnexport manifest",
        ),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{" * 100)), "nests 100 levels deep"),
    ],
)
def test_force_refuses_other_things(tmp_path: Path, make: Callable[[Path], object], expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    make(out / "attention")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_cli("build", "--arch", "attention", "--out", str(out), "--force")
    assert result.exit_code == 2
    assert expected in flat(result.output)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
