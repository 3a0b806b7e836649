"""``rnnexport deploy``: the Typer sub-app for the deploy targets (OpenVINO IR, Triton repository).

The commands report through :mod:`rnnexport.cli`'s helpers, imported when a command runs (that
module adds this sub-app when it loads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(
    name="deploy",
    help="Turn a verified artifact into what another serving runtime loads (torch-free).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ArtifactArgument = Annotated[Path, typer.Argument(help="Artifact folder written by 'rnnexport build'.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the deploy record on stdout.")]


@deploy_app.command("openvino")
def openvino(
    artifact: ArtifactArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for model.xml/model.bin.")],
    time_limit: Annotated[
        float | None,
        typer.Option("--time-limit", min=0.1, help="Seconds the OpenVINO check may take (default: by size)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """OpenVINO IR at f32 (stateful for a streaming artifact), proven on the artifact's test data.

    Verifies the artifact on OpenVINO first; a failure (with its cause where known) writes nothing.
    Needs the 'openvino' extra. Exit codes: 0 written; 1 a check failed; 2 usage error.
    """
    from rnnexport.cli import _err, _reported, _safe, _write_stdout
    from rnnexport.deploy.openvino import deploy_openvino

    with _reported(as_json=as_json):
        record = deploy_openvino(artifact, out, time_limit=time_limit)
    cost = record["step_us"]
    _err.print(
        f"OpenVINO IR in {_safe(out)}: {record['proof']['cases']} cases passed on "
        f"{_safe(record['runtime'])}; {cost['dynamic']:.1f} us per call at batch 1 seq 1 "
        f"({cost['fixed']:.1f} us reshaped to that fixed shape)"
    )
    if as_json:
        _write_stdout(json.dumps({"passed": True, **record}, indent=2))


@deploy_app.command("triton")
def triton(
    artifact: ArtifactArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder: the Triton model repository.")],
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=0, help="Triton's max_batch_size (0: no batching).")
    ] = 64,
    name: Annotated[
        str | None, typer.Option(help="Model name in the repository (default: the arch).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A Triton model repository for the onnxruntime backend, from an artifact verified here first.

    NAME/config.pbtxt (dims from the artifact's contract; dynamic batching, or sequence batching with
    implicit state for a streaming artifact) and NAME/1/model.onnx. Exit codes as for 'verify'.
    """
    from rnnexport.cli import _err, _reported, _safe, _write_stdout
    from rnnexport.deploy.triton import deploy_triton

    with _reported(as_json=as_json):
        record = deploy_triton(artifact, out, max_batch_size=max_batch_size, name=name)
    _err.print(f"Triton model repository in {_safe(out)}: {_safe(record['model'])}/config.pbtxt")
    if as_json:
        _write_stdout(json.dumps({"passed": True, **record}, indent=2))
