"""``build``: export -> contract check -> simplify -> contract check -> verify -> package.

Read top to bottom; each stage is a plain function from its own module. Nothing reaches the
destination unless every requested provider verified: the artifact is assembled in a temporary
folder beside it and moved into place as the very last step.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from rnnexport._version import __version__
from rnnexport.artifact import (
    MODEL,
    Manifest,
    hash_files,
    prepare_destination,
    publish,
    sha256_file,
    staging_folder,
    write_test_data,
)
from rnnexport.compare import ProviderResult, Tolerance, verify_on_device
from rnnexport.contract import check_contract
from rnnexport.errors import InputError, UsageError, VerificationError
from rnnexport.export import DEFAULT_OPSET, EXPORTERS, TRACE_BATCH, TRACE_SEQ, Exporter, export_onnx
from rnnexport.feeds import Case, Feeds, make_feeds, validate_feeds
from rnnexport.golden import load_golden
from rnnexport.limits import (
    DEFAULT_LIMITS,
    PROTOBUF_LIMIT,
    Limits,
    available_memory,
    check_tolerance,
    format_bytes,
)
from rnnexport.reference import TorchRunner, build_model
from rnnexport.registry import get_arch
from rnnexport.runtime import DEVICES, Device, probe_provider, resolve_devices
from rnnexport.safeio import check_path, load_npz, loads_strict, read_bounded, write_file, writing
from rnnexport.simplify import simplify_onnx
from rnnexport.spec import ArchConfig, ArchSpec, Contract
from rnnexport.weights import check_state_dict, load_state_dict

__all__ = [
    "SWEEP_BATCHES",
    "SWEEP_SEQS",
    "TF32_TOLERANCE",
    "ResourceEstimate",
    "StageCallback",
    "build",
    "estimate_resources",
    "read_config_file",
    "resolve_config",
]

# The shape sweep every build verifies, none equal to the trace shape (batch 2, seq 3).
SWEEP_BATCHES = (1, 3, 16)
SWEEP_SEQS = (1, 7, 64, 257)
# Sweep shapes that also ship as test data: seq 1, a short batch, and a long sequence.
TEST_DATA_SHAPES = ((1, 1), (3, 7), (3, 257))
SWEEP_SEED = 0
# TF32 keeps 10 mantissa bits: about 1e-3 relative error per product, which recurrences compound.
TF32_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2)

StageCallback = Callable[[str, bool, str, float], None]


class _Stage:
    """What a running stage reports: details to show and whether it succeeded."""

    def __init__(self) -> None:
        self.details: list[str] = []
        self.ok = True


@contextmanager
def _stage(callback: StageCallback | None, name: str) -> Iterator[_Stage]:
    """Time a stage and report it to ``callback`` (stage, ok, detail, seconds) once it finished."""
    start = time.perf_counter()
    stage = _Stage()
    yield stage
    if callback is not None:
        callback(name, stage.ok, "; ".join(stage.details), time.perf_counter() - start)


_CONFIG_EXAMPLE = (
    'Expected a JSON object such as {"input_size": 10, "hidden_size": 20, "output_size": 5, "branches": 3}.'
)


def read_config_file(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A ``--config`` file's sizes: a bounded read and a strict JSON object of whole numbers.

    Refused: anything but a small regular file (``/dev/zero``, a FIFO, a huge file), invalid or
    deeply nested JSON, duplicate keys, non-finite numbers, unknown keys and null values.
    """
    data = read_bounded(path, limit=limits.config_bytes, what="--config", fix=_CONFIG_EXAMPLE)
    config = loads_strict(data, what=f"--config {path}", fix=_CONFIG_EXAMPLE)
    if not isinstance(config, dict):
        raise UsageError(
            f"--config {path} holds a JSON {type(config).__name__}, expected an object of sizes. "
            + _CONFIG_EXAMPLE
        )
    _check_config_keys(config, origin=f"--config {path}")
    nulls = sorted(k for k, v in config.items() if v is None)
    if nulls:
        raise UsageError(
            f"--config {path} gives null for {', '.join(map(repr, nulls))}: expected whole numbers. "
            "Remove a key to use its default."
        )
    return config


def _check_config_keys(config: Mapping[str, Any], *, origin: str) -> None:
    """Unknown keys are refused whatever their value (a misspelt key set to null included)."""
    known = {f.name for f in dataclasses.fields(ArchConfig)}
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise UsageError(
            f"Unknown key(s) {', '.join(map(repr, unknown))} in {origin}: the valid keys are "
            f"{', '.join(sorted(known))}. Remove or rename them."
        )


def resolve_config(
    spec: ArchSpec,
    config: ArchConfig | Mapping[str, Any] | str | Path | None,
    state_shapes: Mapping[str, tuple[int, ...]] | None,
) -> tuple[ArchConfig, list[str]]:
    """Sizes from, in order of precedence: ``config`` (a config, a mapping or a JSON file), the
    checkpoint's tensor shapes where the architecture can read them, then the defaults.

    In a mapping, ``None`` means "not given"; unknown keys are errors whatever their value.
    Returns the config and human-readable notes on what was inferred.
    """
    if isinstance(config, ArchConfig):
        return config, []
    if isinstance(config, (str, Path)):
        config = read_config_file(Path(config))
    _check_config_keys(config or {}, origin="the sizes given")
    explicit = {k: v for k, v in (config or {}).items() if v is not None}
    inferred = spec.infer_sizes(state_shapes) if state_shapes else {}
    notes = [f"inferred {k}={v} from the checkpoint" for k, v in inferred.items() if k not in explicit]
    return ArchConfig.from_mapping(inferred | explicit, origin="the sizes given"), notes


@dataclasses.dataclass(frozen=True)
class ResourceEstimate:
    """What building a model of given sizes will take, worked out from the sizes alone."""

    parameters: int
    weight_bytes: int  # float32, as shipped
    memory_bytes: int  # peak of the whole build, roughly

    # The weights are held about this many times over at the peak: the eager model, the exporter's
    # graph and its serialized proto, onnxsim's input and output, and an ONNX Runtime session.
    COPIES = 6


def estimate_resources(spec: ArchSpec, config: ArchConfig) -> ResourceEstimate:
    """Parameters, model bytes and peak memory of building ``spec`` at ``config``, before building.

    The module is constructed on PyTorch's ``meta`` device: parameters get shapes but no storage, so
    this costs microseconds whatever the sizes.
    """
    with torch.device("meta"):
        model = spec.build_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = 4 * parameters
    sizes = config.subset(spec.sizes)
    width = sizes.get("branches", 1) * config.hidden_size
    # Activations of the largest sweep case, on both sides (gates, states, outputs), float32.
    largest = max(SWEEP_BATCHES) * max(SWEEP_SEQS)
    activations = 2 * 4 * largest * (config.input_size + 6 * width + config.output_size)
    return ResourceEstimate(parameters, weight_bytes, ResourceEstimate.COPIES * weight_bytes + activations)


def _check_resources(spec: ArchSpec, config: ArchConfig, *, available: int | None) -> ResourceEstimate:
    """Refuse, with the numbers, a build whose model cannot be one ONNX file or cannot fit in memory."""
    estimate = estimate_resources(spec, config)
    sizes = ", ".join(f"{k}={v}" for k, v in config.subset(spec.sizes).items())
    what = (
        f"'{spec.name}' with {sizes} has {estimate.parameters:,} parameters, "
        f"{format_bytes(estimate.weight_bytes)} of float32 weights"
    )
    if estimate.weight_bytes >= PROTOBUF_LIMIT:
        raise UsageError(
            f"{what}; a single-file ONNX model must stay under 2 GiB (protobuf's limit on one message), and "
            "rnnexport ships exactly one model.onnx. Nothing was built. Choose smaller sizes "
            "(--hidden-size, --input-size" + (", --branches" if "branches" in spec.sizes else "") + ")."
        )
    if available is not None and estimate.memory_bytes > available:
        raise UsageError(
            f"{what}; building and verifying it needs about {format_bytes(estimate.memory_bytes)} of memory "
            f"(the weights held about {ResourceEstimate.COPIES} times over, plus the verification sweep's "
            f"activations), but only {format_bytes(available)} is available here. Nothing was built. Choose "
            "smaller sizes, or build on a machine with more memory."
        )
    return estimate


def _read_inputs_file(path: Path, contract: Contract, *, limits: Limits = DEFAULT_LIMITS) -> Feeds:
    """User-supplied verification inputs: ``.npz`` (no pickles) or ``.safetensors``, keyed by input name.

    Bounded: the file is read once within a size limit, and what it decompresses to is capped by
    the sizes its entries declare, before anything is decompressed.
    """
    fix = (
        "Expected an .npz (np.savez, no object arrays) or a .safetensors file with one tensor per model "
        f"input ({contract.input_names})."
    )
    # safetensors is not compressed: its size on disk is what it holds, so the tighter cap applies.
    safetensors = path.suffix == ".safetensors"
    limit = limits.inputs_bytes if safetensors else limits.inputs_file_bytes
    data = read_bounded(path, limit=limit, what="--inputs", error=InputError, fix=fix)
    if safetensors:
        try:
            from safetensors.numpy import load

            feeds = dict(load(data))
        except Exception as exc:  # SafetensorError and friends: the bytes are not a safetensors file
            raise InputError(f"Cannot read --inputs {path}: {exc}. {fix}") from None
    else:
        feeds = load_npz(data, origin=str(path), limit=limits.inputs_bytes, error=InputError)
    validate_feeds(contract, feeds, origin=str(path))
    return feeds


def _sweep(contract: Contract, runner: TorchRunner) -> list[Case]:
    """The build-time shape sweep with eager-PyTorch references (seeded)."""
    rng = np.random.default_rng(SWEEP_SEED)
    cases = []
    for batch in SWEEP_BATCHES:
        for seq in SWEEP_SEQS:
            feeds = make_feeds(contract, batch=batch, seq=seq, rng=rng)
            cases.append(Case(f"sweep:b{batch}s{seq}", feeds, runner.infer(feeds)))
    assert all(c.shapes["x"][:2] != [TRACE_BATCH, TRACE_SEQ] for c in cases)
    return cases


def _finalise_model(
    model: onnx.ModelProto, spec: ArchSpec, config: ArchConfig, contract: Contract
) -> onnx.ModelProto:
    """Make the bytes reproducible and the model self-describing.

    Exporters leave doc strings that may carry source locations; they are cleared so that the same
    model built from another folder is byte-identical. Metadata carries the architecture, the
    rnnexport version and the I/O contract, for anyone holding only the .onnx file.
    """
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    del model.metadata_props[:]
    props = {
        "rnnexport.arch": spec.name,
        "rnnexport.version": __version__,
        "rnnexport.config": json.dumps(config.subset(spec.sizes), sort_keys=True),
        "rnnexport.contract": json.dumps(contract.to_json(), sort_keys=True),
    }
    onnx.helper.set_model_props(model, props)
    return model


def _versions() -> dict[str, str]:
    import onnxruntime
    import onnxsim

    return {
        "rnnexport": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _summary(results: Mapping[Device, ProviderResult]) -> str:
    lines = []
    for r in results.values():
        line = f"{r.provider}: {r.status}"
        if r.reason:
            line += f" ({r.reason})"
        if r.status == "failed":
            line += "; " + "; ".join(r.failures[:3])
        lines.append(line)
    return " | ".join(lines)


@dataclass(frozen=True)
class _Request:
    """A build request, resolved and validated before any work is done."""

    spec: ArchSpec
    config: ArchConfig
    contract: Contract
    destination: Path
    devices: list[Device]
    device: str
    exporter: Exporter
    opset: int
    tolerances: dict[Device, Tolerance]
    tf32: bool
    force: bool
    weights: Path | None
    state: dict[str, torch.Tensor] | None
    user_inputs: tuple[str, Feeds] | None
    notes: list[str]


def _resolve(
    arch: str,
    *,
    out: Path,
    weights: Path | None,
    config: ArchConfig | Mapping[str, Any] | str | Path | None,
    device: str,
    exporter: Exporter,
    opset: int,
    atol: float | None,
    rtol: float | None,
    tf32: bool,
    inputs: Path | None,
    force: bool,
) -> _Request:
    """Every check that needs no model: names, options, paths, weights, sizes, user inputs."""
    spec = get_arch(arch)
    if exporter not in EXPORTERS:
        raise UsageError(f"Unknown exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}.")
    if not 7 <= opset <= 21:
        raise UsageError(f"--opset must be between 7 and 21 (17 is the tested default), got {opset}.")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None:
            check_tolerance(f"--{name}", value)
    for option, path in (("--weights", weights), ("--inputs", inputs)):
        if path is not None:
            check_path(path, what=option)
    destination, recovered = prepare_destination(out, spec.name, force=force)
    devices = resolve_devices(device)
    if device == "cuda" and not probe_provider("cuda").available:
        # Fail before any work: the one provider asked for cannot run here.
        raise VerificationError(
            f"--device cuda was requested, but CUDA is unavailable here: {probe_provider('cuda').reason}. "
            "Nothing was built. Use --device cpu (or auto), or run on a machine with an NVIDIA GPU and "
            "onnxruntime-gpu's CUDA and cuDNN 9 libraries."
        )
    state = load_state_dict(weights) if weights is not None else None
    shapes = {k: tuple(v.shape) for k, v in state.items()} if state else None
    config_, notes = resolve_config(spec, config, shapes)
    estimate = _check_resources(spec, config_, available=available_memory())
    notes = [*recovered, *notes, f"estimated {format_bytes(estimate.memory_bytes)} of memory at the peak"]
    contract = spec.contract(config_)
    if state is not None:
        check_state_dict(spec, config_, state, origin=str(weights))
    user_inputs = (inputs.name, _read_inputs_file(inputs, contract)) if inputs is not None else None
    tolerance = Tolerance(atol=spec.atol if atol is None else atol, rtol=spec.rtol if rtol is None else rtol)
    return _Request(
        spec=spec,
        config=config_,
        contract=contract,
        destination=destination,
        devices=devices,
        device=device,
        exporter=exporter,
        opset=opset,
        tolerances={"cpu": tolerance, "cuda": TF32_TOLERANCE if tf32 else tolerance},
        tf32=tf32,
        force=force,
        weights=weights,
        state=state,
        user_inputs=user_inputs,
        notes=notes,
    )


def _model_and_references(request: _Request) -> tuple[torch.nn.Module, list[Case], dict[str, Any]]:
    """The PyTorch model, every verification case with its reference outputs, and the weights' origin.

    Default sizes without a checkpoint use the committed golden weights and cases; other sizes use
    a seeded initialisation; a checkpoint is used as given. Either way the shape sweep's references
    are computed here from eager PyTorch.
    """
    spec, config = request.spec, request.config
    golden_cases: list[Case] = []
    origin: dict[str, Any]
    if request.state is not None and request.weights is not None:
        model = build_model(spec, config, state_dict=request.state)
        origin = {"source": "user", "file": request.weights.name, "sha256": sha256_file(request.weights)}
    elif config == ArchConfig():
        golden = load_golden(spec)
        model = build_model(
            spec, config, state_dict={k: torch.from_numpy(v) for k, v in golden.weights.items()}
        )
        golden_cases = golden.cases
        origin = {"source": "golden", "sha256": golden.meta["weights"]["sha256"], "seed": golden.meta["seed"]}
    else:
        model = build_model(spec, config, seed=0)
        origin = {
            "source": "seeded",
            "seed": 0,
            "note": "PyTorch default init; sizes differ from the golden data",
        }
    runner = TorchRunner(spec, model)
    cases = golden_cases + _sweep(request.contract, runner)
    if request.user_inputs is not None:
        name, feeds = request.user_inputs
        cases.append(Case(f"user:{name}", feeds, runner.infer(feeds)))
    origin["references"] = (
        ("committed golden cases + " if golden_cases else "")
        + f"eager PyTorch on CPU at build time (float32, seed {SWEEP_SEED})"
        + (" using the packed formulation" if spec.masked else "")
    )
    return model, cases, origin


def _provider_entries(request: _Request, results: Mapping[Device, ProviderResult]) -> dict[str, Any]:
    """The manifest's ``verification.providers``: results for what was requested, the rest probed."""
    providers = {r.provider: r.to_json() for r in results.values()}
    for d in DEVICES:
        if d not in results:
            probe = probe_provider(d)
            if probe.available:
                providers[probe.provider] = {
                    "status": "skipped",
                    "device": d,
                    "reason": f"not requested (--device {request.device})",
                }
            else:
                providers[probe.provider] = {"status": "unavailable", "device": d, "reason": probe.reason}
    return providers


def build(
    arch: str,
    *,
    out: str | Path = "dist",
    weights: str | Path | None = None,
    config: ArchConfig | Mapping[str, Any] | str | Path | None = None,
    device: str = "auto",
    exporter: Exporter = "torchscript",
    opset: int = DEFAULT_OPSET,
    atol: float | None = None,
    rtol: float | None = None,
    tf32: bool = False,
    inputs: str | Path | None = None,
    force: bool = False,
    on_stage: StageCallback | None = None,
) -> Manifest:
    """Export, simplify, verify and package ``arch`` into ``out/arch``; return the manifest.

    ``config`` gives sizes (an :class:`ArchConfig`, a mapping, or a JSON file); sizes it leaves out
    are read off ``weights`` where possible, else defaulted. ``device`` is ``cpu``, ``cuda`` or
    ``auto`` (every provider that really works here). ``on_stage(stage, ok, detail, seconds)`` is
    called after each stage. Raises an :class:`~rnnexport.errors.RnnExportError` subclass on any
    failure, and on failure or interruption leaves ``out`` exactly as it was.
    """
    request = _resolve(
        arch,
        out=Path(out),
        weights=None if weights is None else Path(weights),
        config=config,
        device=device,
        exporter=exporter,
        opset=opset,
        atol=atol,
        rtol=rtol,
        tf32=tf32,
        inputs=None if inputs is None else Path(inputs),
        force=force,
    )
    spec, contract = request.spec, request.contract
    with staging_folder(request.destination) as staging:
        with _stage(on_stage, "model") as stage:
            model, cases, weights_origin = _model_and_references(request)
            stage.details += [
                *request.notes,
                f"{sum(p.numel() for p in model.parameters())} parameters, {len(cases)} reference cases",
            ]

        trace = f"batch {TRACE_BATCH}, seq {TRACE_SEQ}"
        with _stage(on_stage, "export") as stage:
            exported = export_onnx(model, contract, exporter=exporter, opset=opset)
            check_contract(exported, contract, stage=f"after export ({exporter})", trace_sizes=trace)
            stage.details.append(f"{exporter}, opset {opset}, {len(exported.graph.node)} nodes")
        with _stage(on_stage, "simplify") as stage:
            simplified, stats = simplify_onnx(exported, check_feeds=cases[-1].inputs)
            check_contract(simplified, contract, stage="after simplification", trace_sizes=trace)
            stage.details.append(f"{stats.nodes_before} -> {stats.nodes_after} nodes")
        model_bytes = _finalise_model(simplified, spec, request.config, contract).SerializeToString()
        write_file(staging / MODEL, model_bytes, where=request.destination.parent)

        # Verify the bytes that will ship, on every requested provider; all must pass.
        results: dict[Device, ProviderResult] = {}
        for d in request.devices:
            with _stage(on_stage, f"verify {d}") as stage:
                result = results[d] = verify_on_device(
                    model_bytes, cases, device=d, tol=request.tolerances[d], tf32=tf32
                )
                stage.ok = result.status == "passed"
                stage.details.append(
                    f"{result.status}: {result.reason}"
                    if result.reason
                    else f"{result.status}, max abs error {result.max_abs:.2e} over {len(cases)} cases"
                )
        if not results or any(r.status != "passed" for r in results.values()):
            unavailable = any(r.status == "unavailable" for r in results.values())
            raise VerificationError(
                f"Verification of '{spec.name}' did not pass, so nothing was shipped: {_summary(results)}. "
                + (
                    "Use --device cpu, or install onnxruntime-gpu with CUDA and cuDNN 9 on a GPU machine."
                    if unavailable
                    else "The exported graph computes something else than the PyTorch model at these shapes."
                )
            )

        with _stage(on_stage, "package") as stage, writing(request.destination.parent):
            shipped = [
                c
                for c in cases
                if c.name.startswith("sweep:") and tuple(c.shapes["x"][:2]) in TEST_DATA_SHAPES
            ]
            test_data = write_test_data(staging, shipped, contract)
            manifest = Manifest(
                arch=spec.name,
                config=request.config.subset(spec.sizes),
                contract=contract,
                versions=_versions(),
                export={
                    "exporter": exporter,
                    "opset": opset,
                    "trace_shape": {"batch": TRACE_BATCH, "seq": TRACE_SEQ},
                },
                simplification=stats.to_json(),
                weights=weights_origin,
                verification={
                    "rule": "|ort - ref| <= atol + rtol*|ref|, all values finite",
                    "tolerance": {d: t.to_json() for d, t in request.tolerances.items()},
                    "tf32": tf32,
                    "tf32_policy": "CUDA provider use_tf32=" + ("1 (looser tolerance)" if tf32 else "0"),
                    "providers": _provider_entries(request, results),
                },
                test_data=test_data,
                files=hash_files(staging),
            )
            manifest.write(staging)
            publish(staging, request.destination, force=force)
            stage.details.append(str(request.destination))
    return manifest
