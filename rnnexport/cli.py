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
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rnnexport._version import __version__
from rnnexport.errors import RnnExportError

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


@contextmanager
def _reported() -> Iterator[None]:
    """Turn library errors and Ctrl-C into a message on stderr and an exit code."""
    try:
        yield
    except RnnExportError as exc:
        _err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the architectures as JSON on stdout.")] = False,
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
                s.summary,
            )
        _out.print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside a command body (e.g. during imports)
        print("interrupted.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
