"""How the command line talks: tables, marks, errors, progress, the verdict line, stdout, exit codes.

Every command runs its work inside :func:`reported`, the one place where the library's
:class:`~rnnexport.errors.RnnExportError` becomes a one-paragraph message and an exit code. Any
other exception is a bug and keeps its traceback.

Everything printed that did not come from rnnexport itself (paths, names from files, messages
that quote them) goes through :func:`safe`: control characters made visible, Rich markup escaped.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rnnexport.errors import RnnExportError
from rnnexport.text import visible

if TYPE_CHECKING:
    from rnnexport.spec import Contract

# Progress and tables go to stderr so that --json output on stdout stays machine-readable. Rich
# honours NO_COLOR and drops colour when stderr is not a terminal.
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_INTERRUPTED = 130
# Errors writing to an output stream: full device, size limit, quota, broken pipe, I/O error.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EPIPE, errno.EIO})


def safe(text: object) -> str:
    """Untrusted text, ready to embed in Rich markup: control characters visible, markup escaped."""
    return escape(visible(text))


# Narrowest a wrapping column may get on a terminal before the table is shown as lines instead.
_NARROWEST_WRAPPED = 8
# Wide enough for any table's natural width: a measurement bound, never a printing width.
_UNBOUNDED = 1 << 20


def print_table(table: Table, console: Console) -> None:
    """Print ``table`` whole: every column and every value, whatever the width.

    Not on a terminal (a pipe, a file, a script), rows are printed at their full width whatever
    ``COLUMNS`` says, nothing cut or wrapped. On a terminal, Rich fits the table to the width,
    wrapping the columns that may wrap; where even that cannot keep every value (Rich squeezes
    columns down to nothing), each row is printed as ``column: value`` lines instead. The title is a
    line of its own either way, so it is never wrapped to the table's width.
    """
    title, table.title = table.title, None
    if title is not None:
        console.print(title, style="table.title", soft_wrap=True)
    wide = console.options.update_width(_UNBOUNDED)
    natural = Measurement.get(console, wide, table).maximum
    if not console.is_terminal:
        Console(file=console.file, width=natural, highlight=False, no_color=console.no_color).print(
            table, crop=False
        )
        return
    needed = [
        max(Measurement.get(console, wide, cell).maximum for cell in [column.header, *column.cells])
        for column in table.columns
    ]
    chrome = natural - sum(needed)  # borders and padding
    narrowest = sum(
        n if column.no_wrap else min(n, _NARROWEST_WRAPPED)
        for n, column in zip(needed, table.columns, strict=True)
    )
    if chrome + narrowest <= console.width:
        console.print(table)
        return
    rows = zip(*(list(column.cells) for column in table.columns), strict=True)
    for row in rows:
        for k, (column, cell) in enumerate(zip(table.columns, row, strict=True)):
            lines = str(cell).splitlines() or [""]
            label = f"{'- ' if k == 0 else '  '}{escape(str(column.header))}: "
            console.print(label + ("\n" + " " * len(label)).join(lines), soft_wrap=True)


def mark(ok: bool) -> str:
    """A check mark or a cross, or plain words where the terminal's encoding has no such glyphs."""
    try:
        "\u2713\u2717".encode(err.encoding)
    except (UnicodeEncodeError, LookupError):
        return "[green]ok[/]" if ok else "[red]FAILED[/]"
    return "[green]\u2713[/]" if ok else "[red]\u2717[/]"


def print_error(exc: RnnExportError | str) -> None:
    err.print(f"[bold red]error:[/] {safe(exc)}")


def error_json(exc: RnnExportError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}


@contextmanager
def reported(*, as_json: bool = False) -> Iterator[None]:
    """Turn library errors and Ctrl-C into a message on stderr (and JSON on stdout) and an exit code."""
    try:
        yield
    except RnnExportError as exc:
        print_error(exc)
        if as_json:
            typer.echo(json.dumps({"passed": False, "error": error_json(exc)}, indent=2))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP turned into one by main()
        from rnnexport import signals

        with suppress(OSError):  # after SIGHUP the terminal may be gone
            err.print(
                f"interrupted: {signals.describe(exc)} stopped the run before it finished; "
                "the destination was left as it was.",
                soft_wrap=True,
            )
        signals.mark_reported()
        raise typer.Exit(signals.exit_code(exc)) from None


QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print every detail, including why a provider is unavailable.")
]


def write_stdout(text: str) -> None:
    """Print to stdout now; a failed write (``> /dev/full``, a closed pipe) is reported by :func:`main`."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class DeviceChoice(str, Enum):
    """Where to verify: one provider, or every provider that really works here."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


def print_variants(title: str, variants: list[dict[str, Any]] | dict[str, dict[str, Any]]) -> None:
    """One row per variant: verdict, size, error against float64, and where it can run."""
    rows = list(variants.values()) if isinstance(variants, dict) else variants
    if not rows:
        return
    table = Table(title=safe(title), title_justify="left")
    for column in ("file", "status", "bytes", "max err (f64)", "p99 err (f64)", "err/allowed", "runs on"):
        table.add_column(column, no_wrap=column != "runs on", overflow="fold")
    notes: dict[str, list[str]] = {}  # note -> the files it is about
    unchecked: set[str] = set()
    for v in rows:
        errors = v.get("errors", {})
        exact = errors.get("artifact_vs_float64", {})
        runs = []
        for provider, info in v.get("runs_on", {}).items():
            if info.get("status") == "checked":
                runs.append(f"{provider} {info.get('taken')}/{info.get('nodes')}")
            else:
                unchecked.add(provider)
        colour = "green" if v.get("status") == "passed" else "red"
        table.add_row(
            safe(v.get("file")),
            f"[{colour}]{safe(v.get('status'))}[/]" + ("" if v.get("shipped", True) else " (not shipped)"),
            str(v.get("bytes", "-")),
            f"{exact['max']:.2e}" if "max" in exact else "-",
            f"{exact['p99']:.2e}" if "p99" in exact else "-",
            f"{errors['err_allowed']:.3f}" if "err_allowed" in errors else "-",
            safe(", ".join(runs)) or "-",
        )
        lines = [v["reason"]] if v.get("reason") else []
        for provider, info in v.get("verification", {}).items():
            lines += [f"{provider}: {line}" for line in info.get("failures", [])[:3]]
        details = v.get("details", {})
        lines += [details[k] for k in ("note", "ort_note") if details.get(k)]
        if "reduce_range" in details:
            lines.append(f"reduce_range={details['reduce_range']}: {details.get('reason', '')}")
        for line in lines:
            notes.setdefault(str(line), []).append(str(v.get("file")))
    print_table(table, err)
    err.print(
        "  runs on: nodes the provider takes / nodes, from ONNX Runtime's partitioner (CPU, CUDA, TensorRT, "
        "XNNPACK) or its mobile usability checker (CoreML, NNAPI)"
        + (
            f"; cannot be checked here: {', '.join(sorted(unchecked))} (manifest.json 'runs_on' says why)"
            if unchecked
            else ""
        )
    )
    for note, files in notes.items():
        err.print(f"  {safe(', '.join(files))}: {safe(note)}")


class Reporter:
    """How a command talks while it works: a live display on a terminal, plain lines elsewhere.

    Implements the library's progress protocol (:class:`rnnexport.progress.Progress`).
    """

    def __init__(self, *, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.live = err.is_terminal and not quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def headline(self, text: str) -> None:
        if not self.quiet:
            err.print(f"[bold]{safe(text)}[/]")

    def line(self, text: str) -> None:
        if not self.quiet:
            err.print(f"  {safe(text)}")

    def verdict(self, text: str) -> None:
        """'passed: ...' on a line of its own, whatever a table above had room to show."""
        if not self.quiet:
            err.print(f"[bold green]passed[/]: {safe(text)}", soft_wrap=True)

    def stage_started(self, stage: str, total: int | None = None) -> None:
        if not self.live:
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._progress.start()
        self._task = self._progress.add_task(f"{stage:<11}", total=total, count=self._count(0, total))

    @staticmethod
    def _count(done: int, total: int | None) -> str:
        return f"{done}/{total} cases" if total else ""

    def advanced(self, done: int) -> None:
        if self._progress is not None and self._task is not None:
            total = self._progress.tasks[-1].total
            self._progress.update(self._task, completed=done, count=self._count(done, int(total or 0)))

    def stage_finished(
        self, stage: str, ok: bool, detail: str, seconds: float, more: Sequence[str] = ()
    ) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if self.quiet:
            return
        err.print(f"{mark(ok)} {stage:<11} {seconds:6.2f}s  {safe(detail)}")
        for line in more if self.verbose else ():
            err.print(f"{'':22}{safe(line)}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def providers(self, title: str, providers: dict[str, Any], *, requested: str, contract: Contract) -> None:
        """Summary table: one row per provider that ran (or was asked for), then the notes below it.

        ``shapes`` gives the range of every dynamic axis the cases covered, read where ``contract``
        puts it (``mel: [batch, 1, seq, 40]`` has seq on axis 2).
        """
        from rnnexport.feeds import axis_ranges

        if self.quiet:
            return
        shown = {
            p: r
            for p, r in providers.items()
            if self.verbose or r["status"] in ("passed", "failed") or requested == r.get("device")
        }
        table = Table(title=safe(title), title_justify="left")
        for column in ("provider", "status", "max abs err", "worst err/allowed", "cases", "shapes"):
            table.add_column(column, no_wrap=column != "shapes", overflow="fold")
        colours = {"passed": "green", "failed": "red", "unavailable": "yellow", "skipped": "dim"}
        notes = []
        for provider, r in shown.items():
            short = provider.removesuffix("ExecutionProvider")
            axes = axis_ranges(contract, r.get("shapes", []))
            table.add_row(
                safe(short),
                f"[{colours.get(r['status'], 'red')}]{safe(r['status'])}[/]",
                f"{r['max_abs_error']:.2e}" if "max_abs_error" in r else "-",
                f"{r['max_error_ratio']:.3f}" if "max_error_ratio" in r else "-",
                str(r.get("cases", "-")),
                safe(", ".join(f"{axis} {low}-{high}" for axis, (low, high) in axes.items())) or "-",
            )
            if "tolerance" in r and r.get("rule") == "oracle":
                tol = r["tolerance"]
                notes.append(
                    f"{short}: oracle rule: passes when, per output, case and time bucket, |ort - float64| "
                    f"<= max({r.get('oracle_factor', 4):g} x PyTorch float32's own error there, atol "
                    f"{tol['atol']:g} + rtol {tol['rtol']:g}*|float64|), i.e. worst err/allowed <= 1"
                )
            elif "tolerance" in r:
                tol = r["tolerance"]
                notes.append(
                    f"{short}: passes when |ort - ref| <= atol + rtol*|ref| everywhere, i.e. worst "
                    f"err/allowed <= 1 (atol {tol['atol']:g}, rtol {tol['rtol']:g})"
                )
            if r.get("reason") and (self.verbose or r["status"] != "unavailable" or r["device"] == requested):
                notes.append(f"{short} {r['status']}: {r['reason']}")
            notes += [
                f"{short} failure: {line}" for line in r.get("failures", [])[: 20 if self.verbose else 5]
            ]
        hidden = [p.removesuffix("ExecutionProvider") for p in providers if p not in shown]
        print_table(table, err)
        for note in notes:
            err.print(f"  {safe(note)}")
        if hidden:
            err.print(
                f"  [dim]{safe(', '.join(hidden))} not available here (not requested; -v or "
                "manifest.json says why)[/]"
            )


def passed_on(providers: dict[str, Any]) -> str:
    """The providers that passed, in words: 'CPU and CUDA'."""
    names = [p.removesuffix("ExecutionProvider") for p, r in providers.items() if r.get("status") == "passed"]
    return " and ".join(names) or "no provider"
