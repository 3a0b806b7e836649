"""``rnnexport bench``: time a shipped artifact on ONNX Runtime against PyTorch eager and a plain
export. Works without torch (ONNX Runtime only)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rnnexport.cli import console
from rnnexport.cli.console import QuietOption, print_table, reported, safe, write_stdout
from rnnexport.errors import UsageError


class BenchDevice(str, Enum):
    """Where to benchmark: ONNX Runtime's CPU or CUDA provider (PyTorch on the same device)."""

    cpu = "cpu"
    cuda = "cuda"


def _bench_table(data: dict[str, Any]) -> None:
    """The benchmark on stderr: latency per shape and runtime, then settings and ragged batches."""
    table = Table(title=safe(f"{data['arch']}: {data['artifact']} ({data['device']})"), title_justify="left")
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
    print_table(table, console.err)
    console.err.print(
        "  best round = the lowest of the rounds' medians (load only adds time); speedup = that runtime's "
        "best round / the artifact's (above 1: the artifact is faster)"
    )
    for name, status in data["runtimes"].items():
        if not status["available"]:
            console.err.print(f"  {name}: not measured ({safe(status['reason'])})")
    settings = data.get("settings")
    if settings:
        console.err.print("[bold]recommended session settings[/] (" + safe(settings["rule"]) + ")")
        for regime in ("latency", "throughput"):
            s = settings[regime]
            console.err.print(
                f"  {regime:<10} batch {s['batch']}, seq {s['seq']}: {safe(s['label'])} "
                f"({s['p50_ms']:.3f} ms; {s['gain_over_defaults']:.2f}x faster than the defaults' "
                f"{s['defaults_p50_ms']:.3f} ms)"
            )
    ragged = data.get("ragged")
    if ragged:
        console.err.print(f"[bold]ragged batches[/] (batch {ragged['batch']}, seq {ragged['seq']}): p50 ms")
        for name, s in ragged["scenarios"].items():
            console.err.print(f"  {s['p50_ms']:9.3f}  {safe(name)}")


def bench(  # long: one Annotated declaration per option
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
    with reported(as_json=as_json):
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
                console.err.print(f"  [dim]{safe(text)}[/]")

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
                console.err.print(f"plot: {safe(plot)}")
        if record:
            written = record_bench(directory, report)
            if not quiet:
                console.err.print(f"recorded: {safe(written)} (listed in the manifest; verify still passes)")
        if as_json:
            write_stdout(json.dumps(report.to_json(), indent=2))
