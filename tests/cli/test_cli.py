"""The command line as a user meets it: help, output, sizes, inputs, hostile text, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from rnnexport.artifact import MANIFEST
from rnnexport.text import visible

from ..helpers import ARCH_NAMES, flat, run_cli, run_without_torch


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shipped")
    assert run_cli("build", "--arch", "attention", "--out", str(out), "--device", "cpu").exit_code == 0
    return out / "attention"


# -- help and flags --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["build"], ["verify"], ["list"]])
def test_help_has_no_type_placeholders_for_flags_and_answers_to_h(command: list[str]) -> None:
    result = run_cli(*command, "-h", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert "<bool>" not in result.output
    if command == ["build"]:
        assert "--force" in result.output
        assert "--quiet" in result.output
        # The exporter choice and its fallback are explained where the option is.
        assert "auto tries the one measured better first and falls back to the other" in flat(result.output)
        assert "[default: auto]" in flat(result.output)


def test_list_never_wraps_a_name_and_names_the_articles() -> None:
    for columns in ("80", "120"):
        result = run_cli("list", env={"COLUMNS": columns})
        assert result.exit_code == 0
        for name in ARCH_NAMES:
            assert name in result.output, f"{name} wrapped at {columns} columns"
    assert ".txt" not in result.output
    sources = {e["name"]: e["source"] for e in json.loads(run_cli("list", "--json").stdout)}
    assert sources["attention"].startswith("How can a many-to-many LSTM be implemented in PyTorch?")
    assert sources["parallel-gru"].startswith("How can I implement multiple LSTM cells per block in PyTorch?")


def test_list_does_not_import_torch() -> None:
    code = "from rnnexport.cli import main; sys.argv = ['rnnexport', 'list', '--json']; main()"
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert [entry["name"] for entry in json.loads(result.stdout)] == ARCH_NAMES


def test_list_json_to_a_full_device_is_a_clear_error() -> None:
    with open("/dev/full", "w") as full:  # noqa: PTH123 - a device, not a path to build on
        result = subprocess.run(
            [sys.executable, "-m", "rnnexport", "list", "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot write the output: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr


# -- sizes an architecture does not take -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "option", "expected"),
    [
        ("parallel-lstm", "--output-size", "'parallel-lstm' does not take output_size: its sizes are"),
        ("attention", "--branches", "'attention' does not take branches: its sizes are input_size"),
    ],
)
def test_a_size_the_architecture_does_not_take_is_a_usage_error(
    tmp_path: Path, arch: str, option: str, expected: str
) -> None:
    result = run_cli("build", "--arch", arch, option, "4", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert expected in flat(result.output)
    assert not (tmp_path / "o").exists()


def test_a_config_file_key_the_architecture_does_not_take_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "sizes.json"
    config.write_text(json.dumps({"hidden_size": 8, "branches": 2}))
    result = run_cli("build", "--arch", "many-to-many", "--config", str(config), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "does not take branches" in flat(result.output)


# -- output ------------------------------------------------------------------------------------------


def test_cpu_only_build_prints_no_cuda_row_unless_verbose(tmp_path: Path) -> None:
    plain = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path / "a"))
    assert plain.exit_code == 0, plain.output
    if "CUDA │" in plain.output:  # a machine where CUDA works: it was verified, so it is shown
        pytest.skip("CUDA is available here; the row is a verified provider")
    assert "libcublas" not in plain.output
    assert "not available here" in plain.output
    verbose = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path / "b"), "-v")
    assert "CUDA" in verbose.output
    assert "unavailable" in verbose.output
    manifest = json.loads((tmp_path / "a" / "many-to-many" / MANIFEST).read_text())
    assert manifest["verification"]["providers"]["CUDAExecutionProvider"]["reason"]


def test_summary_reports_the_figure_the_rule_uses(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path), "--device", "cpu")
    assert "worst err/allowed" in result.output
    assert "max rel err" not in result.output
    assert "err/allowed <= 1" in flat(result.output)
    manifest = json.loads((tmp_path / "many-to-many" / MANIFEST).read_text())
    cpu = manifest["verification"]["providers"]["CPUExecutionProvider"]
    assert 0 < cpu["max_error_ratio"] <= 1
    # The ratio is |err| / (atol + rtol*|ref|) at its worst, so it can never be below max_abs / (atol + ...).
    assert cpu["max_error_ratio"] >= cpu["max_abs_error"] / (1e-5 + 1e-4 * 100)


def test_simplification_says_what_changed(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "attention", "--out", str(tmp_path), "--device", "cpu")
    simplify = next(line for line in result.output.splitlines() if "simplify" in line)
    assert "nodes (" in simplify
    assert "removed" in simplify or "added" in simplify
    manifest = json.loads((tmp_path / "attention" / MANIFEST).read_text())
    section = manifest["simplification"]
    counted = section["nodes_before"] - sum(section["removed_by_op"].values())
    assert counted + sum(section["added_by_op"].values()) == section["nodes_after"]


def test_verbose_build_reports_each_tidy_rule(tmp_path: Path) -> None:
    # Parallel branches each end in layout nodes that the tidy rules move after the Concat joining
    # them (README, "What the exporter sees"), so some rule applies; every rule reports a line.
    args = ["build", "--arch", "parallel-lstm", "--device", "cpu", "--exporter", "torchscript"]
    verbose = run_cli(*args, "--out", str(tmp_path / "v"), "-v")
    assert verbose.exit_code == 0, verbose.output
    lines = [line.strip() for line in verbose.output.splitlines() if line.strip().startswith("rule ")]
    names = [line.split(":")[0].removeprefix("rule ") for line in lines]
    # A stateless build runs every rule but the merge of parallel recurrences (streaming graphs only).
    assert names == [
        "drop_empty_concat_inputs",
        "hoist_layout_after_concat",
        "sink_layout_before_split",
        "squeeze_before_join",
    ]
    applied = [int(line.split("applied ")[1].split(";")[0]) for line in lines]
    assert sum(applied) > 0
    plain = run_cli(*args, "--out", str(tmp_path / "p"))
    assert plain.exit_code == 0, plain.output
    assert "rule " not in plain.output


def test_quiet_prints_nothing_on_success_and_the_error_on_failure(tmp_path: Path) -> None:
    ok = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path), "--device", "cpu", "-q")
    assert ok.exit_code == 0
    assert ok.output == ""
    again = run_cli("build", "--arch", "many-to-many", "--out", str(tmp_path), "--device", "cpu", "-q")
    assert again.exit_code == 2
    assert again.output.startswith("error:")


def test_no_color_is_respected(tmp_path: Path) -> None:
    result = run_cli(
        "build", "--arch", "many-to-many", "--out", str(tmp_path), "--device", "cpu", env={"NO_COLOR": "1"}
    )
    assert result.exit_code == 0
    assert "\x1b[" not in result.output


def test_an_ascii_only_c_locale_terminal_works(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rnnexport", "build", "--arch", "many-to-many", "--out", str(tmp_path),
         "--device", "cpu"],
        capture_output=True, check=False, env=os.environ | {"LC_ALL": "C", "PYTHONIOENCODING": "ascii"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"ok model" in result.stderr
    assert b"Traceback" not in result.stderr


# -- hostile text: markup and control characters ---------------------------------------------------


def test_visible_escapes_every_control_character() -> None:
    attack = "key\x1b[2J\x1b[H\x1b[32mALL CHECKS PASSED\x07\x9b\u202e\x00"
    shown = visible(attack)
    assert all(ch.isprintable() for ch in shown)
    assert shown == "key\\x1b[2J\\x1b[H\\x1b[32mALL CHECKS PASSED\\x07\\x9b\\u202e\\x00"
    assert visible("plain ä text") == "plain ä text"


def test_markup_in_out_path_neither_breaks_the_exit_code_nor_vanishes(tmp_path: Path) -> None:
    for folder in ("a[/]b", "[old]", "[bold red]x"):
        out = tmp_path / folder
        result = run_cli("build", "--arch", "many-to-many", "--out", str(out), "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert (out / "many-to-many" / MANIFEST).is_file()
        assert f"{out / 'many-to-many'}" in flat(result.output).replace("\\", "")
        verify = run_cli("verify", str(out / "many-to-many"), "--json", "--device", "cpu")
        assert verify.exit_code == 0, verify.output
        assert json.loads(verify.stdout)["passed"] is True


def test_markup_in_arch_name_is_a_plain_usage_error(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "[/]", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "Unknown architecture '[/]'" in result.output


def test_control_characters_from_a_checkpoint_reach_the_terminal_escaped(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    checkpoint = tmp_path / "evil.safetensors"
    save_file({"\x1b[2J\x1b[32mALL CHECKS PASSED": np.zeros(3, np.float32)}, str(checkpoint))
    result = run_cli(
        "build", "--arch", "many-to-many", "--weights", str(checkpoint), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 1
    assert "\x1b" not in result.output
    assert "\\x1b[2J" in result.output


# -- JSON ------------------------------------------------------------------------------------------------


def test_verify_json_prints_an_error_object_on_failure(tmp_path: Path) -> None:
    result = run_cli("verify", str(tmp_path / "missing"), "--json")
    assert result.exit_code in (1, 2)
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert report["error"]["exit_code"] == result.exit_code
    assert report["error"]["message"]


def test_build_json_error_carries_the_exit_code(tmp_path: Path) -> None:
    result = run_cli("build", "--arch", "nope", "--out", str(tmp_path), "--json")
    assert result.exit_code == 2
    [entry] = json.loads(result.stdout)["artifacts"]
    assert entry["exit_code"] == 2
    assert entry["type"] == "UsageError"


# -- --inputs ----------------------------------------------------------------------------------------


def _case(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    lengths = rng.integers(1, seq + 1, size=batch).astype(np.int64)
    lengths[0] = seq
    return {"x": rng.standard_normal((batch, seq, 10)).astype(np.float32), "lengths": lengths}


def _savez(path: Path, case: dict[str, np.ndarray]) -> None:
    np.savez(path, x=case["x"], lengths=case["lengths"])


def test_nan_in_padded_steps_is_accepted_and_shipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    case = _case(rng, 3, 9)
    case["lengths"][1] = 4
    case["x"][1, 4:] = np.nan  # padding: ignored by the model
    _savez(tmp_path / "padded.npz", case)
    out = tmp_path / "o"
    result = run_cli(
        "build", "--arch", "attention", "--inputs", str(tmp_path / "padded.npz"), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "attention" / MANIFEST).read_text())
    shipped = [e for e in manifest["test_data"] if e["case"] == "user:padded.npz"]
    assert len(shipped) == 1
    x = numpy_helper.to_array(
        __import__("onnx").load_tensor(str(tmp_path / "o" / "attention" / shipped[0]["dir"] / "input_0.pb"))
    )
    assert np.isnan(x[1, 4:]).all()
    assert run_cli("verify", str(tmp_path / "o" / "attention"), "--device", "cpu").exit_code == 0


def test_nan_at_a_valid_step_is_refused(tmp_path: Path) -> None:
    case = _case(np.random.default_rng(5), 2, 6)
    case["x"][0, 5, 0] = np.nan  # row 0 is full length: a valid step
    _savez(tmp_path / "bad.npz", case)
    result = run_cli(
        "build", "--arch", "attention", "--inputs", str(tmp_path / "bad.npz"), "--out", str(tmp_path)
    )
    assert result.exit_code == 2
    assert "1 NaN or infinite value(s) at valid steps" in flat(result.output)


def test_several_input_files_and_a_test_data_folder(shipped: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    _savez(tmp_path / "a.npz", _case(rng, 2, 11))
    _savez(tmp_path / "b.npz", _case(rng, 5, 3))
    result = run_cli(
        "build", "--arch", "attention", "--out", str(tmp_path / "o"), "--device", "cpu",
        "--inputs", str(tmp_path / "a.npz"), "--inputs", str(tmp_path / "b.npz"), "--inputs", str(shipped),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "attention" / MANIFEST).read_text())
    users = [e["case"] for e in manifest["test_data"] if e["case"].startswith("user:")]
    assert users[:2] == ["user:a.npz", "user:b.npz"]
    assert sum(u.startswith(f"user:{shipped.name}/test_data_set_") for u in users) == 4


def test_a_file_that_is_not_npz_gets_a_message_about_its_type(tmp_path: Path) -> None:
    path = tmp_path / "cases.npz"
    path.write_text("x,lengths\n1,2\n")
    result = run_cli("build", "--arch", "attention", "--inputs", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "is neither an .npz archive (np.savez) nor a safetensors file" in flat(result.output)
    assert "pickled" not in result.output


def test_first_line_of_a_library_error_drops_colour_codes() -> None:
    from rnnexport.text import first_line

    error = RuntimeError("\n  Failed to export. \x1b[96mThis is step 1/3\x1b[0m of exporting.\nmore detail")
    assert first_line(error) == "Failed to export. This is step 1/3 of exporting."
    assert first_line(RuntimeError("")) == "RuntimeError"
