"""``rnnexport verify``: re-check a shipped artifact on this machine. Imports no torch."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rnnexport.cli import console
from rnnexport.cli.console import (
    DeviceChoice,
    QuietOption,
    Reporter,
    VerboseOption,
    mark,
    passed_on,
    print_error,
    print_variants,
    reported,
    safe,
    write_stdout,
)
from rnnexport.errors import UsageError


class RuntimeChoice(str, Enum):
    """The runtime that runs the test data: ONNX Runtime, or OpenVINO's CPU plugin at f32."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"


def verify(  # long: one Annotated declaration per option
    directory: Annotated[Path, typer.Argument(help="Artifact folder written by 'rnnexport build'.")],
    device: Annotated[
        DeviceChoice, typer.Option(help="Provider(s) to verify on; auto = every one that works here.")
    ] = DeviceChoice.auto,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable report on stdout.")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    expect_sha256: Annotated[
        str | None,
        typer.Option(
            "--expect-sha256",
            help="Pin the artifact: the sha256 of its manifest.json, as published by whoever built it.",
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            min=0.1,
            help="Seconds each provider may take to run the test data (default: by size).",
        ),
    ] = None,
    runtime: Annotated[
        RuntimeChoice,
        typer.Option(
            help="Runtime that runs the test data: onnxruntime, or openvino (its CPU plugin at f32; "
            "needs the 'openvino' extra)."
        ),
    ] = RuntimeChoice.onnxruntime,
) -> None:
    """Re-check a shipped artifact on this machine (needs onnxruntime, not torch).

    Checks every file's sha256 against the manifest, the model's I/O contract, and the outputs on the
    artifact's test data within the recorded tolerance, on the provider that actually ran.
    Exit codes: 0 passed; 1 the artifact or its outputs failed a check; 2 usage error.
    """
    from rnnexport.artifact import UNLISTED_SHOWN, verify_artifact

    reporter = Reporter(quiet=quiet, verbose=verbose)
    started = time.perf_counter()
    with reported(as_json=as_json):
        if runtime is RuntimeChoice.openvino and device is DeviceChoice.cuda:
            raise UsageError("--runtime openvino runs on OpenVINO's CPU plugin: use --device cpu or auto.")
        report = verify_artifact(
            directory,
            device=device.value,
            expect_sha256=expect_sha256,
            time_limit=time_limit,
            runtime=runtime.value,
        )
    for note in report.notes:
        reporter.line(f"note: {note}")
    providers = {r.provider: r.to_json() for r in report.results.values()}
    if not quiet:
        unlisted = report.unlisted
        console.err.print(
            f"{mark(True)} files      sha256 of every listed file matches the manifest; "
            + (f"{len(unlisted)} unlisted (below)" if unlisted else "no extra files")
        )
        if unlisted:
            shown = ", ".join(f"'{name}'" for name in unlisted[:UNLISTED_SHOWN])
            more = len(unlisted) - UNLISTED_SHOWN
            console.err.print(
                f"[yellow]warning:[/] {len(unlisted)} file(s) in the folder are not in the manifest and "
                f"were not verified (nothing loads them; they are no part of the artifact): {safe(shown)}"
                + (f" and {more} more" if more > 0 else ""),
                soft_wrap=True,
            )
        if report.external_data_bytes is not None:
            from rnnexport.artifact import EXTERNAL_DATA
            from rnnexport.limits import format_bytes

            console.err.print(
                f"{mark(True)} data       weights in {EXTERNAL_DATA} "
                f"({format_bytes(report.external_data_bytes)}), every reference inside it; run from a "
                "private copy of the verified bytes"
            )
        console.err.print(f"{mark(True)} contract   names, dtypes and dynamic axes match the manifest")
    reporter.providers(
        f"{report.manifest.arch}: {directory}",
        providers,
        requested=device.value,
        contract=report.manifest.contract,
    )
    if not quiet and report.variants:
        # Where each file can run was established at build time; the manifest carries it.
        built = {e.get("file"): e for e in report.manifest.variants if isinstance(e, dict)}
        checked = {
            name: {"runs_on": built.get(name, {}).get("runs_on", {}), **v.to_json()}
            for name, v in report.variants.items()
        }
        print_variants(f"{report.manifest.arch}: variants re-verified here", checked)
    if verbose:
        reporter.line(f"took {time.perf_counter() - started:.2f}s")
    if as_json:
        write_stdout(json.dumps(report.to_json(), indent=2))
    if not report.passed:
        failed = ", ".join(
            [
                f"{r.provider} {r.status}" + (f" ({r.reason})" if r.reason else "")
                for r in report.results.values()
                if r.status != "passed"
            ]
            + [f"{name} failed" for name, v in report.variants.items() if not v.passed]
        )
        print_error(f"verification did not pass: {failed or 'no provider could run here'}.")
        raise typer.Exit(1)
    files = f"model.onnx and {len(report.variants)} variant(s)" if report.variants else "model.onnx"
    reporter.verdict(f"{directory}: {files} verified on {passed_on(providers)}")
