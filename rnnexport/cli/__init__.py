"""The ``rnnexport`` command line: a thin Typer layer over the library.

Every command runs its work inside :func:`_reported`, the one place where the library's
:class:`~rnnexport.errors.RnnExportError` becomes a one-paragraph message and an exit code. Any
other exception is a bug and keeps its traceback. Heavy imports (torch, onnxruntime) happen inside
the commands, so ``rnnexport --help`` and ``rnnexport list`` answer at once.

Everything printed that did not come from rnnexport itself (paths, names from files, messages
that quote them) goes through :func:`_safe`: control characters made visible, Rich markup escaped.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rnnexport._version import __version__
from rnnexport.errors import RnnExportError, UsageError
from rnnexport.text import visible

if TYPE_CHECKING:
    from rnnexport.artifact import Manifest
    from rnnexport.spec import Contract

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

# Progress and tables go to stderr so that --json output on stdout stays machine-readable. Rich
# honours NO_COLOR and drops colour when stderr is not a terminal.
_err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_INTERRUPTED = 130
BUILD_EXTRA_MODULES = ("torch", "onnxsim", "safetensors")
# Errors writing to an output stream: full device, size limit, quota, broken pipe, I/O error.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EPIPE, errno.EIO})


def _safe(text: object) -> str:
    """Untrusted text, ready to embed in Rich markup: control characters visible, markup escaped."""
    return escape(visible(text))


# Narrowest a wrapping column may get on a terminal before the table is shown as lines instead.
_NARROWEST_WRAPPED = 8
# Wide enough for any table's natural width: a measurement bound, never a printing width.
_UNBOUNDED = 1 << 20


def _print_table(table: Table, console: Console) -> None:
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


def _mark(ok: bool) -> str:
    """A check mark or a cross, or plain words where the terminal's encoding has no such glyphs."""
    try:
        "\u2713\u2717".encode(_err.encoding)
    except (UnicodeEncodeError, LookupError):
        return "[green]ok[/]" if ok else "[red]FAILED[/]"
    return "[green]\u2713[/]" if ok else "[red]\u2717[/]"


def _print_error(exc: RnnExportError | str) -> None:
    _err.print(f"[bold red]error:[/] {_safe(exc)}")


def _error_json(exc: RnnExportError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}


@contextmanager
def _reported(*, as_json: bool = False) -> Iterator[None]:
    """Turn library errors and Ctrl-C into a message on stderr (and JSON on stdout) and an exit code."""
    try:
        yield
    except RnnExportError as exc:
        _print_error(exc)
        if as_json:
            typer.echo(json.dumps({"passed": False, "error": _error_json(exc)}, indent=2))
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


def _require_build_extra() -> None:
    """Fail in one sentence where this install can verify artifacts but not build them."""
    missing = [m for m in BUILD_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"'rnnexport build' needs the build extra, which this install lacks ({', '.join(missing)} "
            "not found): install it with pip install 'rnnexport[build,cpu]' (or 'rnnexport[build,gpu]' "
            "on an NVIDIA GPU machine); without it rnnexport can list architectures and verify artifacts."
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


QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print every detail, including why a provider is unavailable.")
]


@app.command("list")
def list_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the architectures as JSON on stdout.")
    ] = False,
) -> None:
    """List the supported architectures with their I/O contracts (default sizes)."""
    from rnnexport.registry import list_architectures

    with _reported():
        specs = list_architectures()
        if as_json:
            data = [
                {
                    "name": s.name,
                    "summary": s.summary,
                    "source": s.source,
                    "notes": list(s.notes),
                    "sizes": s.default_sizes,
                    "templates": {
                        "inputs": [t.to_json() for t in s.inputs],
                        "outputs": [t.to_json() for t in s.outputs],
                    },
                    **s.contract(s.default_config).to_json(),
                }
                for s in specs
            ]
            _write_stdout(json.dumps(data, indent=2))
            return
        table = Table(title="rnnexport architectures (symbolic dims are dynamic axes)", title_justify="left")
        table.add_column("name", no_wrap=True, min_width=max(len(s.name) for s in specs))
        for column in ("inputs", "outputs", "sizes (defaults)", "description"):
            table.add_column(column, overflow="fold")
        for s in specs:
            contract = s.contract(s.default_config)
            table.add_row(
                s.name,
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.inputs)),
                escape("\n".join(f"{t.name}: {t.shape_str()}" for t in contract.outputs)),
                "\n".join(f"{k}={v}" for k, v in s.default_sizes.items()),
                escape("\n".join([s.summary, f"from: {s.source}", *(f"note: {n}" for n in s.notes)])),
            )
        _print_table(table, Console(highlight=False))


def _write_stdout(text: str) -> None:
    """Print to stdout now; a failed write (``> /dev/full``, a closed pipe) is reported by :func:`main`."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class DeviceChoice(str, Enum):
    """Where to verify: one provider, or every provider that really works here."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class RuntimeChoice(str, Enum):
    """The runtime that runs the test data: ONNX Runtime, or OpenVINO's CPU plugin at f32."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"


class ExporterChoice(str, Enum):
    """torch.onnx exporter: auto (the measured better one first, the other where it fails), or one."""

    auto = "auto"
    torchscript = "torchscript"
    dynamo = "dynamo"


class RuleChoice(str, Enum):
    """Which rule decides verification (see rnnexport.runtime.compare)."""

    oracle = "oracle"
    tolerance = "tolerance"


def _print_variants(title: str, variants: list[dict[str, Any]] | dict[str, dict[str, Any]]) -> None:
    """One row per variant: verdict, size, error against float64, and where it can run."""
    rows = list(variants.values()) if isinstance(variants, dict) else variants
    if not rows:
        return
    table = Table(title=_safe(title), title_justify="left")
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
            _safe(v.get("file")),
            f"[{colour}]{_safe(v.get('status'))}[/]" + ("" if v.get("shipped", True) else " (not shipped)"),
            str(v.get("bytes", "-")),
            f"{exact['max']:.2e}" if "max" in exact else "-",
            f"{exact['p99']:.2e}" if "p99" in exact else "-",
            f"{errors['err_allowed']:.3f}" if "err_allowed" in errors else "-",
            _safe(", ".join(runs)) or "-",
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
    _print_table(table, _err)
    _err.print(
        "  runs on: nodes the provider takes / nodes, from ONNX Runtime's partitioner (CPU, CUDA, TensorRT, "
        "XNNPACK) or its mobile usability checker (CoreML, NNAPI)"
        + (
            f"; cannot be checked here: {', '.join(sorted(unchecked))} (manifest.json 'runs_on' says why)"
            if unchecked
            else ""
        )
    )
    for note, files in notes.items():
        _err.print(f"  {_safe(', '.join(files))}: {_safe(note)}")


class _Reporter:
    """How a command talks while it works: a live display on a terminal, plain lines elsewhere.

    Implements the library's progress protocol (:class:`rnnexport.progress.Progress`).
    """

    def __init__(self, *, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.live = _err.is_terminal and not quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def headline(self, text: str) -> None:
        if not self.quiet:
            _err.print(f"[bold]{_safe(text)}[/]")

    def line(self, text: str) -> None:
        if not self.quiet:
            _err.print(f"  {_safe(text)}")

    def verdict(self, text: str) -> None:
        """'passed: ...' on a line of its own, whatever a table above had room to show."""
        if not self.quiet:
            _err.print(f"[bold green]passed[/]: {_safe(text)}", soft_wrap=True)

    def stage_started(self, stage: str, total: int | None = None) -> None:
        if not self.live:
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=_err,
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

    def stage_finished(self, stage: str, ok: bool, detail: str, seconds: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if self.quiet:
            return
        _err.print(f"{_mark(ok)} {stage:<11} {seconds:6.2f}s  {_safe(detail)}")

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
        table = Table(title=_safe(title), title_justify="left")
        for column in ("provider", "status", "max abs err", "worst err/allowed", "cases", "shapes"):
            table.add_column(column, no_wrap=column != "shapes", overflow="fold")
        colours = {"passed": "green", "failed": "red", "unavailable": "yellow", "skipped": "dim"}
        notes = []
        for provider, r in shown.items():
            short = provider.removesuffix("ExecutionProvider")
            axes = axis_ranges(contract, r.get("shapes", []))
            table.add_row(
                _safe(short),
                f"[{colours.get(r['status'], 'red')}]{_safe(r['status'])}[/]",
                f"{r['max_abs_error']:.2e}" if "max_abs_error" in r else "-",
                f"{r['max_error_ratio']:.3f}" if "max_error_ratio" in r else "-",
                str(r.get("cases", "-")),
                _safe(", ".join(f"{axis} {low}-{high}" for axis, (low, high) in axes.items())) or "-",
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
        _print_table(table, _err)
        for note in notes:
            _err.print(f"  {_safe(note)}")
        if hidden:
            _err.print(
                f"  [dim]{_safe(', '.join(hidden))} not available here (not requested; -v or "
                "manifest.json says why)[/]"
            )


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
            "Importing it runs that code; FILE.py is imported as 'python FILE.py' would run it, with its "
            "folder on sys.path during the import (so modules beside it can be imported).",
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
        typer.Option(
            help="torch.onnx exporter. Both export recurrent layers and packed sequences through "
            "rnnexport's rewrites, and both are checked and verified alike. auto tries the one measured "
            "better first and falls back to the other where it fails to export or its graph fails the "
            "checks (said, and recorded in manifest.json); never after a failed verification. torchscript "
            "or dynamo: that exporter only."
        ),
    ] = ExporterChoice.auto,
    opset: Annotated[int, typer.Option(help="ONNX opset (7 to 21).")] = 17,
    weights: Annotated[
        Path | None, typer.Option(help="Trained weights: .safetensors or a torch.save'd state_dict.")
    ] = None,
    state_dict_key: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint entry holding the state dict (e.g. model_state_dict); detected if unset."
        ),
    ] = None,
    strip_prefix: Annotated[
        str | None,
        typer.Option(
            help="Prefix to strip from the weights' keys (e.g. 'module.'; '' for none); detected if unset."
        ),
    ] = None,
    ignore_unexpected_keys: Annotated[
        bool,
        typer.Option(
            "--ignore-unexpected-keys",
            help="Load weights that hold keys the model does not have (e.g. an autoencoder's decoder when "
            "exporting its encoder), leaving them out; they are listed. Missing keys stay an error.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of sizes, e.g. {\"hidden_size\": 64}; 'rnnexport list' shows which. With "
            "--model: the keyword arguments NAME is called with."
        ),
    ] = None,
    input_size: Annotated[int | None, typer.Option(help="Input features (overrides --config).")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units (overrides --config).")] = None,
    output_size: Annotated[int | None, typer.Option(help="Output features (overrides --config).")] = None,
    branches: Annotated[int | None, typer.Option(help="Parallel branches (overrides --config).")] = None,
    inputs: Annotated[
        list[Path] | None,
        typer.Option(
            help="Extra verification cases: an .npz or .safetensors file (one array per model input), "
            "or a folder of test_data_set_N/ folders. Repeatable; each ships in the artifact."
        ),
    ] = None,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance (default 1e-5).")] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance (default 1e-4).")] = None,
    tf32: Annotated[
        bool, typer.Option("--tf32", help="Let the CUDA provider use TF32; verified at a looser tolerance.")
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="Comma-separated precisions to ship: fp32 (model.onnx, always), fp16, int8. Each is its own "
            "file, verified with its own tolerance; one that fails is not shipped (exit 1)."
        ),
    ] = "fp32",
    model_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated formats: onnx, ort (ORT format for mobile and minimal builds, with "
            "required_operators.config).",
        ),
    ] = "onnx",
    rule: Annotated[
        RuleChoice,
        typer.Option(
            help="oracle: error against a float64 run within 4x PyTorch float32's own (or within atol/rtol); "
            "tolerance: |ort - float32| <= atol + rtol*|float32|."
        ),
    ] = RuleChoice.oracle,
    streaming: Annotated[
        bool,
        typer.Option(
            "--streaming",
            help="Ship a stateful model: every recurrent state is an input (state_in.*) and an output "
            "(state_out.*), batch-major, starting from zeros or the model's own learned initial state "
            "(shipped in initial_state/); the manifest's 'streaming' section lists them. "
            "float32 ONNX only; a bidirectional recurrence is refused.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing rnnexport artifact completely.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")
    ] = False,
    runtimes: Annotated[
        str,
        typer.Option(
            help="Runtimes that check the shipped model: onnxruntime (always; it decides), and openvino "
            "(recorded in the manifest's verification.runtimes, passed or failed with the cause)."
        ),
    ] = "onnxruntime",
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export, simplify, verify and package an architecture into a deployable folder.

    Exit codes: 0 every requested provider passed; 1 export or verification failure; 2 usage error.
    """
    sizes = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": output_size,
        "branches": branches,
    }
    reporter = _Reporter(quiet=quiet, verbose=verbose)
    # What every build takes, whether of a registered architecture or of a --model.
    common: dict[str, Any] = {
        "out": out,
        "weights": weights,
        "device": device.value,
        "exporter": exporter.value,
        "opset": opset,
        "atol": atol,
        "rtol": rtol,
        "tf32": tf32,
        "inputs": inputs or None,
        "force": force,
        "state_dict_key": state_dict_key,
        "strip_prefix": strip_prefix,
        "ignore_unexpected_keys": ignore_unexpected_keys,
        "rule": rule.value,
        "precisions": precision,
        "formats": model_format,
        "streaming": streaming,
        "runtimes": runtimes,
    }
    if model is not None or io_file is not None or name is not None:
        with _reported(as_json=as_json):
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
            _require_build_extra()
            _build_user_model(
                model, io_file, name=name, config=config, as_json=as_json, reporter=reporter, **common
            )
        return
    with _reported(as_json=as_json):
        _require_build_extra()
        from rnnexport.registry import list_architectures

        if (arch is None) == (not build_all):
            raise UsageError(
                "Give exactly one of --arch NAME, --all or --model FILE.py:NAME. Run 'rnnexport list' to "
                "see the architectures' names."
            )
        per_arch = [weights, config, inputs or None, state_dict_key, strip_prefix, *sizes.values()]
        per_arch.append(ignore_unexpected_keys or None)
        if build_all and any(v is not None for v in per_arch):
            raise UsageError(
                "--all builds every architecture at its defaults; --weights, --config, --inputs and sizes "
                "go with --arch NAME."
            )
        names = [s.name for s in list_architectures()] if build_all else [arch or ""]
        given = {k: v for k, v in sizes.items() if v is not None}
        if config is not None:
            from rnnexport.builder.pipeline import read_config_file

            given = {**read_config_file(config), **given}

    from rnnexport.builder.pipeline import build as run_build

    summaries: list[dict[str, Any]] = []
    exit_code = 0
    with _reported(as_json=as_json):  # Ctrl-C stops the whole run, not just the current architecture
        try:
            for name in names:
                if not as_json or _err.is_terminal:
                    reporter.headline(f"building {name}")
                try:
                    manifest: Manifest = run_build(name, config=given, progress=reporter, **common)
                except RnnExportError as exc:  # report it, then go on with the other architectures
                    reporter.close()
                    _print_error(exc)
                    exit_code = max(exit_code, exc.exit_code)
                    summaries.append({"arch": name, "passed": False, **_error_json(exc), "error": str(exc)})
                    continue
                reporter.close()
                summary = _report_artifact(name, manifest, out / name, reporter, requested=device.value)
                exit_code = max(exit_code, 0 if summary["passed"] else 1)
                summaries.append(summary)
        finally:
            reporter.close()
    if as_json:
        _write_stdout(json.dumps({"passed": exit_code == 0, "artifacts": summaries}, indent=2))
    if exit_code:
        raise typer.Exit(exit_code)


def _passed_on(providers: dict[str, Any]) -> str:
    """The providers that passed, in words: 'CPU and CUDA'."""
    names = [p.removesuffix("ExecutionProvider") for p, r in providers.items() if r.get("status") == "passed"]
    return " and ".join(names) or "no provider"


def _report_artifact(
    name: str, manifest: Manifest, destination: Path, reporter: _Reporter, *, requested: str
) -> dict[str, Any]:
    """Print what a build shipped (providers, variants, variants left out); return its JSON summary.

    ``passed`` is False when a variant failed its gate: the rest shipped, and the command exits 1.
    """
    from rnnexport.feeds import axis_ranges

    providers = manifest.verification["providers"]
    if reporter.verbose:  # which exporter made model.onnx, and why that one
        chosen = manifest.export
        reporter.line(f"exporter: {chosen.get('exporter')} ({chosen.get('why')})")
        if "fallback" in chosen:
            reporter.line(
                f"{chosen['fallback'].get('from')} failed first: {chosen['fallback'].get('reason')}"
            )
    reporter.providers(
        f"{name}: verified artifact in {destination}",
        providers,
        requested=requested,
        contract=manifest.contract,
    )
    layout = manifest.export.get("external_data")
    if layout is not None:
        from rnnexport.limits import format_bytes

        reporter.line(
            f"weights in {layout['file']} ({format_bytes(layout['bytes'])}, ONNX external data): load "
            f"model.onnx by its path and keep {layout['file']} beside it"
        )
    failed = [v["file"] for v in manifest.variants if v.get("status") != "passed"]
    if not reporter.quiet and len(manifest.variants) > 1:
        _print_variants(f"{name}: variants", manifest.variants)
    if failed:
        verb = "was" if len(failed) == 1 else "were"
        _print_error(
            f"{', '.join(failed)} failed verification and {verb} not shipped; the other "
            f"files of {destination} passed and were shipped."
        )
    else:
        reporter.verdict(f"{name} verified on {_passed_on(providers)}, shipped to {destination}")
    return {
        "arch": name,
        "passed": not failed,
        "artifact": str(destination),
        # Each dynamic axis's range over the cases, read where the contract puts it.
        "providers": {
            p: {**r, "axes": axis_ranges(manifest.contract, r.get("shapes", []))}
            for p, r in providers.items()
        },
        "variants": manifest.variants,
        "external_data": layout,
    }


def _build_user_model(
    target: str,
    io_file: Path,
    *,
    name: str | None,
    out: Path,
    weights: Path | None,
    config: Path | None,
    inputs: list[Path] | None,
    as_json: bool,
    reporter: _Reporter,
    device: str,
    **options: Any,
) -> None:
    """``build --model``: import, instantiate with --config's kwargs, build, report."""
    from rnnexport.builder.pipeline import build_model_artifact
    from rnnexport.builder.usermodel import instantiate, load_factory, read_kwargs_file

    kwargs = read_kwargs_file(config) if config is not None else {}
    factory, source = load_factory(target)
    module = instantiate(factory, kwargs, what=source.name, file=source.path)
    artifact = name if name is not None else source.name.lower()
    if not as_json or _err.is_terminal:
        reporter.headline(f"building {artifact} from {target}")
    try:
        manifest = build_model_artifact(
            module,
            io=io_file,
            name=artifact,
            out=out,
            weights=weights,
            source=source,
            config=kwargs,
            inputs=inputs or None,
            device=device,
            progress=reporter,
            **options,
        )
    finally:
        reporter.close()
    summary = _report_artifact(artifact, manifest, out / artifact, reporter, requested=device)
    if as_json:
        _write_stdout(json.dumps({"passed": summary["passed"], "artifacts": [summary]}, indent=2))
    if not summary["passed"]:
        raise typer.Exit(1)


@app.command()
def verify(
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

    reporter = _Reporter(quiet=quiet, verbose=verbose)
    started = time.perf_counter()
    with _reported(as_json=as_json):
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
        _err.print(
            f"{_mark(True)} files      sha256 of every listed file matches the manifest; "
            + (f"{len(unlisted)} unlisted (below)" if unlisted else "no extra files")
        )
        if unlisted:
            shown = ", ".join(f"'{name}'" for name in unlisted[:UNLISTED_SHOWN])
            more = len(unlisted) - UNLISTED_SHOWN
            _err.print(
                f"[yellow]warning:[/] {len(unlisted)} file(s) in the folder are not in the manifest and "
                f"were not verified (nothing loads them; they are no part of the artifact): {_safe(shown)}"
                + (f" and {more} more" if more > 0 else ""),
                soft_wrap=True,
            )
        if report.external_data_bytes is not None:
            from rnnexport.artifact import EXTERNAL_DATA
            from rnnexport.limits import format_bytes

            _err.print(
                f"{_mark(True)} data       weights in {EXTERNAL_DATA} "
                f"({format_bytes(report.external_data_bytes)}), every reference inside it; run from a "
                "private copy of the verified bytes"
            )
        _err.print(f"{_mark(True)} contract   names, dtypes and dynamic axes match the manifest")
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
        _print_variants(f"{report.manifest.arch}: variants re-verified here", checked)
    if verbose:
        reporter.line(f"took {time.perf_counter() - started:.2f}s")
    if as_json:
        _write_stdout(json.dumps(report.to_json(), indent=2))
    if not report.passed:
        failed = ", ".join(
            [
                f"{r.provider} {r.status}" + (f" ({r.reason})" if r.reason else "")
                for r in report.results.values()
                if r.status != "passed"
            ]
            + [f"{name} failed" for name, v in report.variants.items() if not v.passed]
        )
        _print_error(f"verification did not pass: {failed or 'no provider could run here'}.")
        raise typer.Exit(1)
    files = f"model.onnx and {len(report.variants)} variant(s)" if report.variants else "model.onnx"
    reporter.verdict(f"{directory}: {files} verified on {_passed_on(providers)}")


def _add_deploy() -> None:
    from rnnexport.cli.deploy import deploy_app

    app.add_typer(deploy_app, name="deploy")


_add_deploy()


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


# -- bench -----------------------------------------------------------------------------------------


class BenchDevice(str, Enum):
    """Where to benchmark: ONNX Runtime's CPU or CUDA provider (PyTorch on the same device)."""

    cpu = "cpu"
    cuda = "cuda"


def _bench_table(data: dict[str, Any]) -> None:
    """The benchmark on stderr: latency per shape and runtime, then settings and ragged batches."""
    table = Table(title=_safe(f"{data['arch']}: {data['artifact']} ({data['device']})"), title_justify="left")
    columns = (
        "batch",
        "seq",
        "runtime",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "best round",
        "sequences/s",
        "speedup",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "runtime" else "right", no_wrap=True)
    artifact = {
        (r["batch"], r["seq"]): r["best_round_p50_ms"]
        for r in data["results"]
        if r["runtime"] == "onnxruntime"
    }
    for r in data["results"]:
        table.add_row(
            str(r["batch"]),
            str(r["seq"]),
            r["runtime"],
            f"{r['p50_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['best_round_p50_ms']:.3f}",
            f"{r['sequences_per_s']:,.0f}",
            "-"
            if r["runtime"] == "onnxruntime"
            else f"{r['best_round_p50_ms'] / artifact[r['batch'], r['seq']]:.2f}x",
        )
    _print_table(table, _err)
    _err.print(
        "  best round = the lowest of the rounds' medians (load only adds time); speedup = that runtime's "
        "best round / the artifact's (above 1: the artifact is faster)"
    )
    for name, status in data["runtimes"].items():
        if not status["available"]:
            _err.print(f"  {name}: not measured ({_safe(status['reason'])})")
    settings = data.get("settings")
    if settings:
        _err.print("[bold]recommended session settings[/] (" + _safe(settings["rule"]) + ")")
        for regime in ("latency", "throughput"):
            s = settings[regime]
            _err.print(
                f"  {regime:<10} batch {s['batch']}, seq {s['seq']}: {_safe(s['label'])} "
                f"({s['p50_ms']:.3f} ms; {s['gain_over_defaults']:.2f}x faster than the defaults' "
                f"{s['defaults_p50_ms']:.3f} ms)"
            )
    ragged = data.get("ragged")
    if ragged:
        _err.print(f"[bold]ragged batches[/] (batch {ragged['batch']}, seq {ragged['seq']}): p50 ms")
        for name, s in ragged["scenarios"].items():
            _err.print(f"  {s['p50_ms']:9.3f}  {_safe(name)}")


@app.command()
def bench(
    directory: Annotated[Path, typer.Argument(help="Artifact folder written by 'rnnexport build'.")],
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,32",
    seq: Annotated[str, typer.Option(help="Sequence lengths, comma-separated.")] = "1,10,100,1000",
    device: Annotated[BenchDevice, typer.Option(help="ONNX Runtime provider (and torch device).")] = (
        BenchDevice.cpu
    ),
    weights: Annotated[
        Path | None,
        typer.Option(help="The checkpoint an artifact was built from with --weights (for PyTorch eager)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="For an artifact built with --model: the model file it was built from (FILE.py, or "
            "FILE.py:NAME), checked against the manifest's sha256, to rebuild it for PyTorch eager.",
        ),
    ] = None,
    eager: Annotated[
        bool, typer.Option("--eager/--no-eager", help="Also time PyTorch eager (needs torch).")
    ] = True,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain/--no-plain", help="Also time a plain export of the model (needs torch, onnxsim)."
        ),
    ] = True,
    settings: Annotated[
        bool, typer.Option("--settings/--no-settings", help="Measure session settings per regime (CPU).")
    ] = True,
    ragged: Annotated[
        bool, typer.Option("--ragged/--no-ragged", help="Measure ragged batches (models with lengths).")
    ] = True,
    torch_threads: Annotated[
        int | None,
        typer.Option(help="PyTorch intra-op threads for eager (default: PyTorch's choice, all cores)."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Alternating rounds of every runtime.")] = 5,
    repeats: Annotated[int, typer.Option(help="Timed calls per runtime per round (at most).")] = 20,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            help="Seconds any one step may take (loading, or one burst of calls) before the run is "
            "stopped (default: derived from the model's size and each shape).",
        ),
    ] = None,
    record: Annotated[
        bool,
        typer.Option("--record", help="Write bench.json into the artifact and list it in the manifest."),
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of latency against sequence length (needs matplotlib).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON on stdout.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Time a shipped artifact on ONNX Runtime against PyTorch eager and a plain export, over a grid.

    Latency percentiles and throughput per batch x seq, all runtimes interleaved in one process;
    recommended session settings for batch-1 latency and batch-32 throughput; ragged-batch costs.
    Works without torch (ONNX Runtime only). Exit codes: 0 measured; 1 artifact problem; 2 usage error.
    """
    with _reported(as_json=as_json):
        from rnnexport.bench import (
            EAGER,
            ONNXRUNTIME,
            PLAIN,
            check_recordable,
            grid_shapes,
            parse_sizes,
            plot_latency,
            record_bench,
            require_matplotlib,
            run_bench,
        )

        shapes = grid_shapes(parse_sizes(batch, option="--batch"), parse_sizes(seq, option="--seq"))
        if plot is not None:
            require_matplotlib()  # refuse before measuring, not after
            if plot.suffix.lower() != ".png" or not plot.parent.is_dir():
                raise UsageError(
                    f"--plot writes a PNG file into an existing folder; got {plot}. Give a path ending in "
                    ".png whose folder exists."
                )
        if record:
            check_recordable(directory)  # refuse before measuring, not after
        runtimes = [ONNXRUNTIME] + ([EAGER] if eager else []) + ([PLAIN] if plain else [])

        def step(text: str) -> None:
            if not quiet:
                _err.print(f"  [dim]{_safe(text)}[/]")

        report = run_bench(
            directory,
            shapes=shapes,
            device=device.value,
            weights=weights,
            model=model,
            runtimes=runtimes,
            settings=settings,
            ragged=ragged,
            rounds=rounds,
            repeats=repeats,
            torch_threads=torch_threads,
            on_step=step,
            time_limit=time_limit,
        )
        if not quiet:
            _bench_table(report.to_json())
        if plot is not None:
            plot_latency(report, plot)
            if not quiet:
                _err.print(f"plot: {_safe(plot)}")
        if record:
            written = record_bench(directory, report)
            if not quiet:
                _err.print(f"recorded: {_safe(written)} (listed in the manifest; verify still passes)")
        if as_json:
            _write_stdout(json.dumps(report.to_json(), indent=2))


if __name__ == "__main__":
    main()
