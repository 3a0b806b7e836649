"""The ``rnnexport`` command line: a thin Typer layer over the library.

Every command runs its work inside :func:`_reported`, the one place where the library's
:class:`~rnnexport.errors.RnnExportError` becomes a one-paragraph message and an exit code. Any
other exception is a bug and keeps its traceback. Heavy imports (torch, onnxruntime) happen inside
the commands, so ``rnnexport --help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rnnexport._version import __version__
from rnnexport.errors import RnnExportError, UsageError

if TYPE_CHECKING:
    from rnnexport.artifact import Manifest

app = typer.Typer(
    name="rnnexport",
    help="Export recurrent PyTorch models to ONNX and prove them on ONNX Runtime before shipping.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Progress and tables go to stderr so that --json output on stdout stays machine-readable.
_err = Console(stderr=True, highlight=False)
_out = Console(highlight=False)

EXIT_INTERRUPTED = 130


def _print_error(exc: RnnExportError) -> None:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)


@contextmanager
def _reported() -> Iterator[None]:
    """Turn library errors and Ctrl-C into a message on stderr and an exit code."""
    try:
        yield
    except RnnExportError as exc:
        _print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err.print("interrupted: stopped before finishing; the destination was left as it was.")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rnnexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Export recurrent PyTorch models to ONNX and prove them on ONNX Runtime before shipping."""


@app.command("list")
def list_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the architectures as JSON on stdout.")
    ] = False,
) -> None:
    """List the supported architectures with their I/O contracts (default sizes)."""
    from rnnexport.registry import list_architectures
    from rnnexport.spec import ArchConfig

    with _reported():
        config = ArchConfig()
        specs = list_architectures()
        if as_json:
            data = [
                {
                    "name": s.name,
                    "summary": s.summary,
                    "source": s.source,
                    "notes": list(s.notes),
                    "sizes": config.subset(s.sizes),
                    "templates": {
                        "inputs": [t.to_json() for t in s.inputs],
                        "outputs": [t.to_json() for t in s.outputs],
                    },
                    **s.contract(config).to_json(),
                }
                for s in specs
            ]
            typer.echo(json.dumps(data, indent=2))
            return
        table = Table(title="rnnexport architectures (symbolic dims are dynamic axes)")
        for column in ("name", "inputs", "outputs", "sizes (defaults)", "description"):
            table.add_column(column, overflow="fold")
        for s in specs:
            contract = s.contract(config)
            table.add_row(
                s.name,
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.inputs)),
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.outputs)),
                "\n".join(f"{k}={v}" for k, v in config.subset(s.sizes).items()),
                "\n".join([s.summary, *(f"note: {n}" for n in s.notes)]),
            )
        _out.print(table)


class DeviceChoice(str, Enum):
    """Where to verify: one provider, or every provider that really works here."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class ExporterChoice(str, Enum):
    """torch.onnx exporter."""

    torchscript = "torchscript"
    dynamo = "dynamo"


def _stage_line(stage: str, ok: bool, detail: str, seconds: float) -> None:
    mark = "[green]\u2713[/]" if ok else "[red]\u2717[/]"
    _err.print(f"{mark} {stage:<11} {seconds:6.2f}s  {escape(detail)}", soft_wrap=True)


def _print_providers(title: str, providers: dict[str, Any]) -> None:
    """Summary table (per provider: status, errors, shapes tried), then the reasons below it."""
    table = Table(title=title, title_justify="left")
    for column in ("provider", "status", "max abs err", "max rel err", "cases", "shapes"):
        table.add_column(column, no_wrap=column != "shapes")
    colours = {"passed": "green", "failed": "red", "unavailable": "yellow", "skipped": "dim"}
    notes = []
    for provider, r in providers.items():
        short = provider.removesuffix("ExecutionProvider")
        # The leading two axes of the first input with two or more (batch and seq for the built-ins).
        leading = [next((v[:2] for v in s.values() if len(v) >= 2), None) for s in r.get("shapes", [])]
        shapes = [pair for pair in leading if pair is not None]
        batches, seqs = [b for b, _ in shapes], [q for _, q in shapes]
        table.add_row(
            short,
            f"[{colours[r['status']]}]{r['status']}[/]",
            f"{r['max_abs_error']:.2e}" if "max_abs_error" in r else "-",
            f"{r['max_rel_error']:.2e}" if "max_rel_error" in r else "-",
            str(r.get("cases", "-")),
            f"batch {min(batches)}-{max(batches)}, seq {min(seqs)}-{max(seqs)}" if shapes else "-",
        )
        if "tolerance" in r:
            notes.append(
                f"{short}: tolerance atol {r['tolerance']['atol']:g}, rtol {r['tolerance']['rtol']:g}"
            )
        if r.get("reason"):
            notes.append(f"{short} {r['status']}: {r['reason']}")
        notes += [f"{short} failure: {line}" for line in r.get("failures", [])[:5]]
    _err.print(table)
    for note in notes:
        _err.print(f"  {escape(note)}", soft_wrap=True)


@app.command()
def build(
    arch: Annotated[
        str | None, typer.Option("--arch", "-a", help="Architecture to build (see 'rnnexport list').")
    ] = None,
    build_all: Annotated[bool, typer.Option("--all", help="Build every registered architecture.")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Your own model: FILE.py:NAME or package.module:NAME (an nn.Module class or factory). "
            "Importing it runs that code.",
        ),
    ] = None,
    io_file: Annotated[
        Path | None, typer.Option("--io", help="With --model: the I/O description (io.json).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="With --model: the artifact folder's name (default: the lowercased class name)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Parent folder; the artifact goes to OUT/ARCH.")
    ] = Path("dist"),
    device: Annotated[
        DeviceChoice, typer.Option(help="Provider(s) to verify on; auto = every one that works here.")
    ] = DeviceChoice.auto,
    exporter: Annotated[
        ExporterChoice,
        typer.Option(help="torch.onnx exporter (dynamo freezes RNN sequence axes on torch 2.13)."),
    ] = ExporterChoice.torchscript,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    weights: Annotated[
        Path | None, typer.Option(help="Trained weights: .safetensors or a torch.save'd state_dict.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of sizes (input_size, hidden_size, output_size, branches); with --model, "
            "the keyword arguments NAME is called with."
        ),
    ] = None,
    input_size: Annotated[int | None, typer.Option(help="Input features (overrides --config).")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units (overrides --config).")] = None,
    output_size: Annotated[int | None, typer.Option(help="Output features (overrides --config).")] = None,
    branches: Annotated[int | None, typer.Option(help="Parallel branches (overrides --config).")] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(help="Extra verification inputs (.npz or .safetensors, keyed by input name)."),
    ] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance (default 1e-5).")] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance (default 1e-4).")] = None,
    tf32: Annotated[
        bool, typer.Option("--tf32", help="Let the CUDA provider use TF32; verified at a looser tolerance.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing artifact completely.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")
    ] = False,
) -> None:
    """Export, simplify, verify and package an architecture into a deployable folder.

    Exit codes: 0 every requested provider passed; 1 export or verification failure; 2 usage error.
    """
    from rnnexport.registry import list_architectures

    sizes = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": output_size,
        "branches": branches,
    }
    if model is not None or io_file is not None or name is not None:
        with _reported():
            if arch is not None or build_all or model is None or io_file is None:
                raise UsageError(
                    "--model FILE.py:NAME (or package.module:NAME) goes with --io io.json, and not with "
                    "--arch or --all; --io and --name go with --model."
                )
            if any(v is not None for v in sizes.values()):
                raise UsageError(
                    "--input-size/--hidden-size/--output-size/--branches are sizes of the built-in "
                    "architectures; a --model takes its keyword arguments from --config kwargs.json."
                )
            _build_user_model(
                model,
                io_file,
                name=name,
                out=out,
                weights=weights,
                config=config,
                device=device.value,
                exporter=exporter.value,
                opset=opset,
                atol=atol,
                rtol=rtol,
                tf32=tf32,
                inputs=inputs,
                force=force,
                as_json=as_json,
            )
        return
    with _reported():
        if (arch is None) == (not build_all):
            raise UsageError(
                "Give exactly one of --arch NAME, --all or --model FILE.py:NAME. Run 'rnnexport list' to "
                "see the architectures' names."
            )
        per_arch = [weights, config, inputs, *sizes.values()]
        if build_all and any(v is not None for v in per_arch):
            raise UsageError(
                "--all builds every architecture at its defaults; --weights, --config, --inputs and sizes "
                "go with --arch NAME."
            )
        names = [s.name for s in list_architectures()] if build_all else [arch or ""]
        if config is not None:
            from rnnexport.pipeline import read_config_file

            sizes = {**read_config_file(config), **{k: v for k, v in sizes.items() if v is not None}}

    from rnnexport.pipeline import build as run_build

    summaries: list[dict[str, Any]] = []
    exit_code = 0
    with _reported():  # Ctrl-C stops the whole run, not just the current architecture
        for name in names:
            if not as_json or _err.is_terminal:
                _err.print(f"[bold]building {name}[/]")
            try:
                manifest: Manifest = run_build(
                    name,
                    out=out,
                    weights=weights,
                    config=sizes,
                    device=device.value,
                    exporter=exporter.value,
                    opset=opset,
                    atol=atol,
                    rtol=rtol,
                    tf32=tf32,
                    inputs=inputs,
                    force=force,
                    on_stage=_stage_line,
                )
            except RnnExportError as exc:  # report it, then go on with the other architectures
                _print_error(exc)
                exit_code = max(exit_code, exc.exit_code)
                summaries.append(
                    {"arch": name, "passed": False, "exit_code": exc.exit_code, "error": str(exc)}
                )
                continue
            providers = manifest.verification["providers"]
            _print_providers(f"{name}: verified artifact in {out / name}", providers)
            summaries.append(
                {"arch": name, "passed": True, "artifact": str(out / name), "providers": providers}
            )
    if as_json:
        typer.echo(json.dumps({"passed": exit_code == 0, "artifacts": summaries}, indent=2))
    if exit_code:
        raise typer.Exit(exit_code)


def _build_user_model(
    target: str,
    io_file: Path,
    *,
    name: str | None,
    out: Path,
    weights: Path | None,
    config: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """``build --model``: import, instantiate with --config's kwargs, build, report."""
    from rnnexport.pipeline import build_model_artifact
    from rnnexport.usermodel import instantiate, load_factory, read_kwargs_file

    kwargs = read_kwargs_file(config) if config is not None else {}
    factory, source = load_factory(target)
    module = instantiate(factory, kwargs, what=source.name)
    artifact = name if name is not None else source.name.lower()
    if not as_json or _err.is_terminal:
        _err.print(f"[bold]building {escape(artifact)}[/] from {escape(target)}")
    manifest = build_model_artifact(
        module,
        io=io_file,
        name=artifact,
        out=out,
        weights=weights,
        source=source,
        config=kwargs,
        on_stage=_stage_line,
        **options,
    )
    providers = manifest.verification["providers"]
    _print_providers(f"{artifact}: verified artifact in {out / artifact}", providers)
    if as_json:
        summary = {"arch": artifact, "passed": True, "artifact": str(out / artifact), "providers": providers}
        typer.echo(json.dumps({"passed": True, "artifacts": [summary]}, indent=2))


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="Artifact folder written by 'rnnexport build'.")],
    device: Annotated[
        DeviceChoice, typer.Option(help="Provider(s) to verify on; auto = every one that works here.")
    ] = DeviceChoice.auto,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable report on stdout.")
    ] = False,
) -> None:
    """Re-check a shipped artifact on this machine (needs onnxruntime, not torch).

    Checks every file's sha256 against the manifest, the model's I/O contract, and the outputs on the
    artifact's test data within the recorded tolerance, on the provider that actually ran.
    """
    from rnnexport.artifact import verify_artifact

    with _reported():
        report = verify_artifact(directory, device=device.value)
    providers = {r.provider: r.to_json() for r in report.results.values()}
    _err.print("[green]\u2713[/] files      sha256 of every file matches the manifest; no extra files")
    _err.print("[green]\u2713[/] contract   names, dtypes and dynamic axes match the manifest")
    _print_providers(f"{report.manifest.arch}: {directory}", providers)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    if not report.passed:
        failed = ", ".join(
            f"{r.provider} {r.status}" + (f" ({r.reason})" if r.reason else "")
            for r in report.results.values()
            if r.status != "passed"
        )
        _err.print(f"[bold red]error:[/] verification did not pass: {escape(failed)}.", soft_wrap=True)
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside a command body (e.g. during imports)
        print("interrupted.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
