"""``rnnexport build``: export, simplify, verify and package an architecture or a user's model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rnnexport.builder.options import BuildOptions
from rnnexport.cli import console
from rnnexport.cli.console import (
    DeviceChoice,
    QuietOption,
    Reporter,
    VerboseOption,
    error_json,
    passed_on,
    print_error,
    print_variants,
    reported,
    write_stdout,
)
from rnnexport.errors import RnnExportError, UsageError

if TYPE_CHECKING:
    from rnnexport.artifact import Manifest

BUILD_EXTRA_MODULES = ("torch", "onnxsim", "safetensors")


def require_build_extra() -> None:
    """Fail in one sentence where this install can verify artifacts but not build them."""
    missing = [m for m in BUILD_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"'rnnexport build' needs the build extra, which this install lacks ({', '.join(missing)} "
            "not found): install it with pip install 'rnnexport[build,cpu]' (or 'rnnexport[build,gpu]' "
            "on an NVIDIA GPU machine); without it rnnexport can list architectures and verify artifacts."
        )


class ExporterChoice(str, Enum):
    """torch.onnx exporter: auto (the measured better one first, the other where it fails), or one."""

    auto = "auto"
    torchscript = "torchscript"
    dynamo = "dynamo"


class RuleChoice(str, Enum):
    """Which rule decides verification (see rnnexport.runtime.compare)."""

    oracle = "oracle"
    tolerance = "tolerance"


def build(  # long: one Annotated declaration per option
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
    precisions: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Comma-separated precisions to ship: fp32 (model.onnx, always), fp16, int8. Each is its own "
            "file, verified with its own tolerance; one that fails is not shipped (exit 1).",
        ),
    ] = "fp32",
    formats: Annotated[
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
    verify_seqs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated sequence lengths the shape sweep verifies at, each at batch 1, 3 and 16 "
            "(default 1,7,64,257; batch 3 at seq 1000 is always verified), e.g. 1,7,64,257,16000."
        ),
    ] = None,
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
    options = BuildOptions.from_params(locals())  # every parameter named like an option is one
    sizes = {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": output_size,
        "branches": branches,
    }
    reporter = Reporter(quiet=quiet, verbose=verbose)
    if model is not None or io_file is not None or name is not None:
        with reported(as_json=as_json):
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
            require_build_extra()
            _build_user_model(model, io_file, options, name=name, as_json=as_json, reporter=reporter)
        return
    with reported(as_json=as_json):
        require_build_extra()
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
            from rnnexport.builder.request import read_config_file

            given = {**read_config_file(config), **given}
    _build_archs(names, dataclasses.replace(options, config=given), reporter, as_json=as_json)


def _build_archs(names: list[str], options: BuildOptions, reporter: Reporter, *, as_json: bool) -> None:
    """``build --arch`` / ``--all``: build each architecture, report it, and exit with the worst code."""
    from rnnexport.builder.pipeline import build as run_build

    summaries: list[dict[str, Any]] = []
    exit_code = 0
    with reported(as_json=as_json):  # Ctrl-C stops the whole run, not just the current architecture
        try:
            for name in names:
                if not as_json or console.err.is_terminal:
                    reporter.headline(f"building {name}")
                try:
                    manifest: Manifest = run_build(name, options, progress=reporter)
                except RnnExportError as exc:  # report it, then go on with the other architectures
                    reporter.close()
                    print_error(exc)
                    exit_code = max(exit_code, exc.exit_code)
                    summaries.append({"arch": name, "passed": False, **error_json(exc), "error": str(exc)})
                    continue
                reporter.close()
                summary = _report_artifact(
                    name, manifest, options.out / name, reporter, requested=options.device
                )
                exit_code = max(exit_code, 0 if summary["passed"] else 1)
                summaries.append(summary)
        finally:
            reporter.close()
    if as_json:
        write_stdout(json.dumps({"passed": exit_code == 0, "artifacts": summaries}, indent=2))
    if exit_code:
        raise typer.Exit(exit_code)


def _report_artifact(
    name: str, manifest: Manifest, destination: Path, reporter: Reporter, *, requested: str
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
        print_variants(f"{name}: variants", manifest.variants)
    if failed:
        verb = "was" if len(failed) == 1 else "were"
        print_error(
            f"{', '.join(failed)} failed verification and {verb} not shipped; the other "
            f"files of {destination} passed and were shipped."
        )
    else:
        reporter.verdict(f"{name} verified on {passed_on(providers)}, shipped to {destination}")
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
    options: BuildOptions,
    *,
    name: str | None,
    as_json: bool,
    reporter: Reporter,
) -> None:
    """``build --model``: import, instantiate with --config's kwargs, build, report."""
    from rnnexport.builder.pipeline import build_model_artifact
    from rnnexport.builder.usermodel import instantiate, load_factory, read_kwargs_file

    config = options.config
    kwargs = read_kwargs_file(Path(config)) if isinstance(config, (str, Path)) else {}
    factory, source = load_factory(target)
    module = instantiate(factory, kwargs, what=source.name, file=source.path)
    artifact = name if name is not None else source.name.lower()
    if not as_json or console.err.is_terminal:
        reporter.headline(f"building {artifact} from {target}")
    try:
        manifest = build_model_artifact(
            module,
            io_file,
            dataclasses.replace(options, config=kwargs),
            name=artifact,
            source=source,
            progress=reporter,
        )
    finally:
        reporter.close()
    summary = _report_artifact(artifact, manifest, options.out / artifact, reporter, requested=options.device)
    if as_json:
        write_stdout(json.dumps({"passed": summary["passed"], "artifacts": [summary]}, indent=2))
    if not summary["passed"]:
        raise typer.Exit(1)
