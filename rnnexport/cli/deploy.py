"""``rnnexport deploy``: the Typer sub-app for the deploy targets (OpenVINO IR, Triton repository, a
static web page).

The commands report through :mod:`rnnexport.cli.console`'s helpers; :mod:`rnnexport.cli` adds this
sub-app to the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rnnexport.cli import console
from rnnexport.cli.console import mark, reported, safe, write_stdout

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
    from rnnexport.deploy.openvino import deploy_openvino

    with reported(as_json=as_json):
        record = deploy_openvino(artifact, out, time_limit=time_limit)
    cost = record["step_us"]
    console.err.print(
        f"OpenVINO IR in {safe(out)}: {record['proof']['cases']} cases passed on "
        f"{safe(record['runtime'])}; {cost['dynamic']:.1f} us per call at batch 1 seq 1 "
        f"({cost['fixed']:.1f} us reshaped to that fixed shape)"
    )
    if as_json:
        write_stdout(json.dumps({"passed": True, **record}, indent=2))


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
    from rnnexport.deploy.triton import deploy_triton

    with reported(as_json=as_json):
        record = deploy_triton(artifact, out, max_batch_size=max_batch_size, name=name)
    console.err.print(f"Triton model repository in {safe(out)}: {safe(record['model'])}/config.pbtxt")
    if as_json:
        write_stdout(json.dumps({"passed": True, **record}, indent=2))


@deploy_app.command("web")
def web(
    artifact: ArtifactArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write (serve it as it is).")],
    js: Annotated[
        Path | None,
        typer.Option("--js", help="The built JavaScript package (default: js/ of this source tree)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace a folder 'rnnexport deploy web' wrote before.")
    ] = False,
) -> None:
    """A static web page that verifies the artifact in the browser that opens it and streams it.

    The folder holds the artifact, the JavaScript package and ONNX Runtime Web (WebAssembly): nothing
    is fetched from elsewhere, so any static server will do, e.g. 'python -m http.server -d OUT'.
    """
    from rnnexport.deploy.web import deploy_web

    with reported():
        done = deploy_web(artifact, out, js=js, force=force)
    console.err.print(
        f"{mark(True)} {safe(done.folder)}: {safe(done.arch)} with onnxruntime-web "
        f"{safe(done.ort_web_version)} ({done.bytes / 1e6:.1f} MB); serve it, e.g. "
        f"python -m http.server -d {safe(done.folder)}, and open the page"
    )
