"""The ``rnnexport`` command line: a thin Typer layer over the library.

Each command lives in its own module (:mod:`.catalog` for ``list``, :mod:`.build`, :mod:`.verify`,
:mod:`.deploy`, :mod:`.bench`) and talks through :mod:`.console`. Heavy imports (torch,
onnxruntime) happen inside the commands, so ``rnnexport --help`` and ``rnnexport list`` answer at
once, and ``verify`` never imports torch.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from typing import Annotated

import typer

from rnnexport._version import __version__
from rnnexport.cli import bench, build, catalog, verify
from rnnexport.cli.console import EXIT_INTERRUPTED, OUTPUT_ERRNOS
from rnnexport.cli.deploy import deploy_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="rnnexport",
    help="Export recurrent PyTorch models to ONNX and prove them on ONNX Runtime before shipping.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain Click help: flags without '<bool>' placeholders, text wrapped at word boundaries.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


# In the order 'rnnexport --help' lists them.
app.command("list")(catalog.list_command)
app.command()(build.build)
app.command()(verify.verify)
app.add_typer(deploy_app, name="deploy")
app.command()(bench.bench)


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
            if exc.filename is not None or exc.errno not in OUTPUT_ERRNOS:
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
