"""The ``rnnexport`` command line: a thin Typer layer over the library.

Every command runs its work inside :func:`_reported`, the one place where the library's
:class:`~rnnexport.errors.RnnExportError` becomes a one-paragraph message and an exit code. Any
other exception is a bug and keeps its traceback. Heavy imports (torch, onnxruntime) happen inside
the commands, so ``rnnexport --help`` answers at once.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
# Errors writing to an output stream: full device, size limit, quota, broken pipe, I/O error.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EPIPE, errno.EIO})


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
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP turned into one by main()
        from rnnexport import signals

        with suppress(OSError):  # after SIGHUP the terminal may be gone
            _err.print(
                f"interrupted: {signals.describe(exc)} stopped the run before it finished; "
                "the destination was left as it was.",
                soft_wrap=True,
            )
        signals.mark_reported()
        raise typer.Exit(signals.exit_code(exc)) from None


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
        shapes = [s["x"][:2] for s in r.get("shapes", [])]
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
        Path | None, typer.Option(help="JSON file of sizes (input_size, hidden_size, output_size, branches).")
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
    with _reported():
        if (arch is None) == (not build_all):
            raise UsageError(
                "Give exactly one of --arch NAME or --all. Run 'rnnexport list' to see the names."
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


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="Artifact folder written by 'rnnexport build'.")],
    device: Annotated[
        DeviceChoice, typer.Option(help="Provider(s) to verify on; auto = every one that works here.")
    ] = DeviceChoice.auto,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable report on stdout.")
    ] = False,
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
) -> None:
    """Re-check a shipped artifact on this machine (needs onnxruntime, not torch).

    Checks every file's sha256 against the manifest, the model's I/O contract, and the outputs on the
    artifact's test data within the recorded tolerance, on the provider that actually ran.
    """
    from rnnexport.artifact import verify_artifact

    with _reported():
        report = verify_artifact(
            directory, device=device.value, expect_sha256=expect_sha256, time_limit=time_limit
        )
    for note in report.notes:
        _err.print(f"note: {escape(note)}", soft_wrap=True)
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
    """Console-script entry point.

    SIGTERM and SIGHUP are handled like Ctrl-C (see :mod:`rnnexport.signals`): the same cleanup, a
    message, and exit 128+N. Output that cannot be written (``> /dev/full``, a closed pipe) is one
    message and exit 1, not a traceback.
    """
    from rnnexport import signals

    code: int | str | None = 0
    with signals.signals_as_interrupts():
        try:
            try:
                app()
            finally:
                sys.stdout.flush()  # surface a failed write of buffered output here, not at exit
        except SystemExit as exc:
            code = exc.code
        except KeyboardInterrupt as exc:  # outside a command body (e.g. during imports)
            code = signals.exit_code(exc)
        except OSError as exc:
            # The library turns its own file errors into messages (rnnexport.safeio), so a
            # nameless write error that gets here is stdout or stderr: '> /dev/full', a closed pipe.
            if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
                raise  # a bug: keep the traceback
            _abandon_stdout()
            with suppress(OSError):
                print(f"error: cannot write the output: {exc.strerror or exc}.", file=sys.stderr)
            code = 1
        # Click turns an interruption outside a command body (e.g. during imports) into a silent 130.
        interrupted = signals.received() is not None or code == EXIT_INTERRUPTED
        if signals.received() is not None:
            code = signals.exit_code()  # 143 or 129, even if the signal came after the command's handling
        if interrupted and not signals.reported():
            with suppress(OSError):
                print(f"interrupted ({signals.describe()}).", file=sys.stderr)
    sys.exit(code)


def _abandon_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    with suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    main()
