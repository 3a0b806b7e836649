"""``exporter="auto"``: the measured first choice, the fallback to the other exporter where the first
fails to export or its graph fails the checks (said and recorded), and never after a verification
failure; an exporter named explicitly is used alone.

Failures are injected around the real exporter (``exporting.export_onnx``), for whichever exporter
``AUTO_ORDER`` puts first, so these tests hold whichever that is and on every torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxscript
import pytest
import torch
from onnx import numpy_helper

from rnnexport.builder import export as export_module
from rnnexport.builder import exporting
from rnnexport.builder.eager import build_model
from rnnexport.builder.export import AUTO_ORDER, EXPORTERS, Exporter, export_onnx
from rnnexport.builder.pipeline import build
from rnnexport.errors import ExportError, UsageError, VerificationError
from rnnexport.limits import DEFAULT_LIMITS
from rnnexport.registry import get_arch
from rnnexport.spec import ArchConfig

from ..helpers import flat, run_cli

FIRST, SECOND = AUTO_ORDER
ARCH = "parallel-gru"  # small, and a GRU: the graph check on linear_before_reset applies

Export = Callable[..., onnx.ModelProto]


def _wrap(monkeypatch: pytest.MonkeyPatch, change: Callable[[Exporter, Export], Export]) -> list[str]:
    """Put ``change(exporter, real)`` in place of each export; returns the exporters called, in order."""
    calls: list[str] = []

    def export(
        model: torch.nn.Module, contract: Any, *, exporter: Exporter, **kwargs: Any
    ) -> onnx.ModelProto:
        calls.append(exporter)
        real: Export = lambda: export_onnx(model, contract, exporter=exporter, **kwargs)  # noqa: E731
        return change(exporter, real)()

    monkeypatch.setattr(exporting, "export_onnx", export)
    return calls


def _fails(which: set[str], message: str = "simulated failure. The detail of it.") -> Any:
    def change(exporter: Exporter, real: Export) -> Export:
        def run() -> onnx.ModelProto:
            if exporter in which:
                raise ExportError(f"{exporter}: {message}")
            return real()

        return run

    return change


def test_auto_falls_back_when_the_first_exporter_cannot_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _wrap(monkeypatch, _fails({FIRST}))
    manifest = build(ARCH, out=tmp_path, device="cpu")
    assert calls == [FIRST, SECOND]
    export = manifest.export
    assert (export["exporter"], export["requested"], export["tried_first"]) == (SECOND, "auto", FIRST)
    assert export["fallback"]["from"] == FIRST
    assert export["fallback"]["reason"] == f"{FIRST}: simulated failure. The detail of it."
    assert manifest.verification["providers"]["CPUExecutionProvider"]["status"] == "passed"


def _break_gru(exporter: Exporter, real: Export) -> Export:
    """The first exporter's real graph, with its GRUs given PyTorch-incompatible gates."""

    def run() -> onnx.ModelProto:
        model = real()
        if exporter == FIRST:
            grus = [n for n in model.graph.node if n.op_type == "GRU"]
            assert grus, "the architecture exports GRU nodes"
            for node in grus:
                (flag,) = [a for a in node.attribute if a.name == "linear_before_reset"]
                flag.i = 0
        return model

    return run


@pytest.mark.slow
def test_auto_falls_back_when_the_first_graph_fails_the_graph_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _wrap(monkeypatch, _break_gru)
    manifest = build(ARCH, out=tmp_path, device="cpu")
    assert calls == [FIRST, SECOND]
    assert manifest.export["exporter"] == SECOND
    assert "linear_before_reset=0" in manifest.export["fallback"]["reason"]
    grus = [n for n in onnx.load(str(tmp_path / ARCH / "model.onnx")).graph.node if n.op_type == "GRU"]
    assert grus
    assert all(any(a.name == "linear_before_reset" and a.i == 1 for a in node.attribute) for node in grus)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_exporter_named_explicitly_never_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: Exporter
) -> None:
    calls = _wrap(monkeypatch, _fails({exporter}))
    with pytest.raises(ExportError) as caught:
        build(ARCH, out=tmp_path, device="cpu", exporter=exporter)
    assert calls == [exporter]
    assert str(caught.value) == f"{exporter}: simulated failure. The detail of it."
    assert list(tmp_path.iterdir()) == []


def test_when_both_fail_the_error_says_why_each_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _wrap(monkeypatch, _fails(set(EXPORTERS)))
    with pytest.raises(ExportError) as caught:
        build(ARCH, out=tmp_path, device="cpu")
    assert calls == [FIRST, SECOND]
    message = str(caught.value)
    assert message.startswith(f"{SECOND}: simulated failure.")
    assert (
        f"The {FIRST} exporter, tried first under --exporter auto, failed too: {FIRST}: simulated" in message
    )
    assert list(tmp_path.iterdir()) == []


def _skew_weights(exporter: Exporter, real: Export) -> Export:
    """The first exporter's real graph with its largest weight shifted: valid, but wrong."""

    def run() -> onnx.ModelProto:
        model = real()
        weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(weight) + np.float32(0.5)
        weight.CopyFrom(numpy_helper.from_array(values.astype(np.float32), weight.name))
        return model

    return run


@pytest.mark.slow
def test_a_wrong_graph_fails_the_build_and_is_not_swapped_for_the_other_exporters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _wrap(monkeypatch, _skew_weights)
    with pytest.raises(VerificationError) as caught:
        build(ARCH, out=tmp_path, device="cpu")
    assert calls == [FIRST]  # the other exporter is not tried after a verification failure
    message = str(caught.value)
    assert f"The graph the {FIRST} exporter wrote computes something else" in message
    assert f"'--exporter {SECOND}' builds with that one" in message
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_the_fallback_in_one_line_and_its_full_reason_with_v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wrap(monkeypatch, _fails({FIRST}))
    plain = run_cli("build", "--arch", ARCH, "--out", str(tmp_path), "--device", "cpu")
    assert plain.exit_code == 0, plain.output
    summary = f"the {FIRST} exporter failed, so {SECOND} exported it: {FIRST}: simulated failure"
    lines = [line for line in plain.output.splitlines() if "exported it" in line]
    assert len(lines) == 1
    assert summary in lines[0]
    assert "The detail of it" not in plain.output
    assert "exporter: " not in plain.output

    verbose = run_cli("build", "--arch", ARCH, "--out", str(tmp_path), "--device", "cpu", "--force", "-v")
    assert verbose.exit_code == 0, verbose.output
    text = flat(verbose.output)
    assert text.count(f"exporter: {SECOND} (--exporter auto: {FIRST} first") == 1
    assert f"{FIRST} failed first: {FIRST}: simulated failure. The detail of it." in text


def test_v_says_which_exporter_ran_and_why_when_named(tmp_path: Path) -> None:
    result = run_cli(
        "build", "--arch", ARCH, "--out", str(tmp_path), "--device", "cpu", "--exporter", "torchscript", "-v"
    )
    assert result.exit_code == 0, result.output
    assert (
        flat(result.output).count("exporter: torchscript (--exporter torchscript, as asked (no fallback))")
        == 1
    )


def test_the_manifest_records_the_exporter_the_tools_and_the_models_own_opset(tmp_path: Path) -> None:
    manifest = build(ARCH, out=tmp_path, device="cpu")
    model = onnx.load(str(tmp_path / ARCH / "model.onnx"))
    export = manifest.export
    assert export["requested"] == "auto"
    assert export["tried_first"] == FIRST
    assert export["exporter"] in EXPORTERS
    assert export["opset"] == 17
    assert export["opset_import"] == {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert export["opset_import"]["ai.onnx"] == 17
    assert export["ir_version"] == model.ir_version
    versions = manifest.versions
    assert (versions["torch"], versions["onnx"], versions["onnxscript"]) == (
        torch.__version__,
        onnx.__version__,
        onnxscript.__version__,
    )


def test_a_dynamo_model_at_another_opset_than_requested_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module._export_dynamo

    def kept_at_18(*args: Any, **kwargs: Any) -> Any:  # as torch does where its down-conversion fails
        proto, watch = real(*args, **kwargs)
        for entry in proto.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = 18
        return proto, watch

    monkeypatch.setattr(export_module, "_export_dynamo", kept_at_18)
    spec = get_arch(ARCH)
    model = build_model(spec, ArchConfig(), seed=0)
    with pytest.raises(ExportError, match=r"wrote the model at opset 18, not at the requested opset 17"):
        export_onnx(model, spec.contract(ArchConfig()), exporter="dynamo", opset=17)


@pytest.mark.slow
def test_an_old_opset_builds_at_that_opset_whichever_exporter_makes_it(tmp_path: Path) -> None:
    manifest = build(ARCH, out=tmp_path, device="cpu", opset=9)
    model = onnx.load(str(tmp_path / ARCH / "model.onnx"))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {9}
    assert manifest.export["opset_import"]["ai.onnx"] == 9
    if manifest.export["exporter"] != FIRST:  # the first could not write opset 9: said why
        assert manifest.export["fallback"]["from"] == FIRST


def test_an_unknown_exporter_is_refused_with_the_choices() -> None:
    with pytest.raises(UsageError, match=r"expected one of auto, torchscript, dynamo"):
        build(ARCH, out="unused", device="cpu", exporter="onnx")


@pytest.mark.slow
def test_a_fallback_with_external_data_starts_from_an_empty_export_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders: list[list[str]] = []

    def export(model: torch.nn.Module, contract: Any, *, exporter: Exporter, to: Path, **kwargs: Any) -> Any:
        folders.append(sorted(p.name for p in to.parent.iterdir()))
        exported = export_onnx(model, contract, exporter=exporter, to=to, **kwargs)
        if exporter == FIRST:  # it wrote its files, then "failed"
            raise ExportError(f"{FIRST}: simulated failure after writing")
        return exported

    monkeypatch.setattr(exporting, "export_onnx", export)
    tiny = dataclasses.replace(DEFAULT_LIMITS, inline_model_bytes=1000)
    manifest = build(ARCH, out=tmp_path, device="cpu", limits=tiny)
    assert folders == [[], []]  # the second exporter found none of the first one's files
    assert manifest.export["exporter"] == SECOND
    assert manifest.export["external_data"]["tensors"] > 0
    assert manifest.verification["providers"]["CPUExecutionProvider"]["status"] == "passed"
