"""Resolving a build request: every check that needs no model, before any work is done.

:func:`resolve_arch` (a registered architecture) and :func:`resolve_module` (a user's module) turn
the :class:`~rnnexport.builder.options.BuildOptions` and what is built into a :class:`Request`:
names, options, paths, sizes, weights, memory and the user's cases, all checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from rnnexport.artifact import EXTERNAL_DATA, MODEL, prepare_destination, sha256_file
from rnnexport.builder.cases import read_user_cases
from rnnexport.builder.iospec import check_signature, read_io
from rnnexport.builder.options import SWEEP_SHAPES, BuildOptions
from rnnexport.builder.patch_streaming import recurrent_states
from rnnexport.builder.plan import TF32_TOLERANCE
from rnnexport.builder.references import model_and_references, module_references
from rnnexport.builder.usermodel import ModelSource, OutputForm, UserCode, load_user_weights, state_sha256
from rnnexport.builder.weights import fit_to_arch, read_checkpoint
from rnnexport.errors import UsageError, VerificationError
from rnnexport.feeds import Case, Feeds, call_bytes
from rnnexport.limits import DEFAULT_LIMITS, Limits, available_memory, format_bytes
from rnnexport.registry import get_arch
from rnnexport.runtime import Device, probe_provider, resolve_devices
from rnnexport.runtime.compare import Tolerance
from rnnexport.safeio import loads_strict, read_bounded
from rnnexport.spec import ArchConfig, ArchSpec, Contract, TensorSpec
from rnnexport.variants import Format, Precision

__all__ = [
    "Request",
    "ResourceEstimate",
    "Subject",
    "estimate_resources",
    "read_config_file",
    "resolve_arch",
    "resolve_config",
    "resolve_module",
    "stores_externally",
]


@dataclass(frozen=True)
class Subject:
    """What is being built: a registered architecture at some sizes, or a user's module."""

    name: str  # the artifact folder, and rnnexport.arch in the model's metadata
    contract: Contract
    config: dict[str, Any]  # the manifest's config: an architecture's sizes, a user model's kwargs
    # The model, every verification case with its reference outputs, and the weights' origin.
    load: Callable[[Request], tuple[torch.nn.Module, list[Case], dict[str, Any]]]
    source: dict[str, Any] | None = None  # a user model's module, class and config
    reference: str = "forward"  # the method whose outputs are the reference (see ArchSpec.reference)
    # How it streams (see StreamingForm): the method, and its own states (resolved templates).
    stream_method: str = "forward"
    stream_extra: tuple[TensorSpec, ...] = ()
    # A user model: where its code lives (errors are reported at its lines), and how its forward's
    # result maps to the declared outputs (filled in by the first call).
    user: UserCode | None = None
    outputs: OutputForm | None = None


@dataclass(frozen=True)
class Request:
    """A build request, resolved and validated before any work is done."""

    subject: Subject
    options: BuildOptions
    destination: Path
    devices: list[Device]
    tolerances: dict[Device, Tolerance]
    state: dict[str, torch.Tensor] | None
    weights_read: dict[str, Any]  # how the checkpoint was read (entry, prefix, dtypes), for the manifest
    user_cases: list[tuple[str, Feeds]]
    notes: list[str]
    # The weights go to model.onnx.data (decided from their float32 size, before anything is built).
    external: bool = False
    # Runtimes besides ONNX Runtime that check the shipped model and get a manifest record.
    runtimes: tuple[str, ...] = ()


def _tolerances(options: BuildOptions, atol: float, rtol: float) -> dict[Device, Tolerance]:
    """Per device: the options' tolerance (else the subject's default); CUDA's looser under --tf32."""
    tolerance = Tolerance(
        atol=atol if options.atol is None else options.atol,
        rtol=rtol if options.rtol is None else options.rtol,
    )
    return {"cpu": tolerance, "cuda": TF32_TOLERANCE if options.tf32 else tolerance}


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
    unused = sorted(set(explicit) - set(spec.sizes))
    if unused:
        takes = ", ".join(f"{k} (default {v})" for k, v in spec.default_sizes.items())
        raise UsageError(
            f"'{spec.name}' does not take {', '.join(unused)}: its sizes are {takes}. Remove "
            f"{'it' if len(unused) == 1 else 'them'} from the command line or --config."
        )
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
    # graph and its serialized proto, onnxsim's input and output, and an ONNX Runtime session. A
    # model past the inline limit is exported to a file and goes to onnxsim as a path, which trades
    # a copy in memory for one in a temporary file; onnxsim still holds its own copies, so the
    # estimate stays the same for both layouts.
    COPIES = 6


def estimate_resources(
    spec: ArchSpec, config: ArchConfig, shapes: Sequence[tuple[int, int]] = SWEEP_SHAPES
) -> ResourceEstimate:
    """Parameters, model bytes and peak memory of building ``spec`` at ``config``, before building,
    verifying at ``shapes`` (batch, seq).

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
    largest = max(batch * seq for batch, seq in shapes)
    activations = 2 * 4 * largest * (config.input_size + 6 * width + config.output_size)
    return ResourceEstimate(parameters, weight_bytes, ResourceEstimate.COPIES * weight_bytes + activations)


def _check_resources(
    spec: ArchSpec, config: ArchConfig, shapes: Sequence[tuple[int, int]], *, available: int | None
) -> ResourceEstimate:
    """Refuse, with the numbers, a build that cannot fit in memory (a model of any size fits on disk:
    past the inline limit its weights go to ONNX external data)."""
    estimate = estimate_resources(spec, config, shapes)
    sizes = ", ".join(f"{k}={v}" for k, v in config.subset(spec.sizes).items())
    what = (
        f"'{spec.name}' with {sizes} has {estimate.parameters:,} parameters, "
        f"{format_bytes(estimate.weight_bytes)} of float32 weights"
    )
    if available is not None and estimate.memory_bytes > available:
        raise UsageError(
            f"{what}; building and verifying it needs about {format_bytes(estimate.memory_bytes)} of memory "
            f"(the weights held about {ResourceEstimate.COPIES} times over, plus the verification sweep's "
            f"activations), but only {format_bytes(available)} is available here. Nothing was built. Choose "
            + ("smaller sizes" if tuple(shapes) == SWEEP_SHAPES else "smaller sizes or shorter --verify-seqs")
            + ", or build on a machine with more memory."
        )
    return estimate


# A user module's activations are unknown; its largest sweep case is held at least this many times
# over: its inputs and outputs in float32 and float64 (the oracle's run) on the PyTorch side, and
# again in ONNX Runtime, with the layers' own activations on top.
_CALL_COPIES = 8


def _check_module_memory(
    what: str,
    contract: Contract,
    weight_bytes: int,
    shapes: Sequence[tuple[int, int]],
    *,
    available: int | None,
) -> None:
    """Refuse, with the numbers, a user module whose verification sweep cannot fit in memory (its
    sequence lengths come from --verify-seqs, which may ask for any)."""
    batch, seq = max(shapes, key=lambda shape: call_bytes(contract, *shape))
    needed = ResourceEstimate.COPIES * weight_bytes + _CALL_COPIES * call_bytes(contract, batch, seq)
    if available is not None and needed > available:
        raise UsageError(
            f"Verifying the model {what!r} at batch {batch}, seq {seq} needs at least "
            f"{format_bytes(needed)} of memory (its inputs and outputs there, held about {_CALL_COPIES} "
            f"times over, and its {format_bytes(weight_bytes)} of weights about {ResourceEstimate.COPIES} "
            f"times), but only {format_bytes(available)} is available here. Nothing was built. Pass "
            "shorter --verify-seqs, or build on a machine with more memory."
        )


def stores_externally(
    weight_bytes: int,
    limits: Limits,
    precisions: Sequence[Precision],
    formats: Sequence[Format],
    *,
    what: str,
) -> bool:
    """Whether ``weight_bytes`` of weights go to ONNX external data; refuses variants for such a model.

    The variants are made and verified from one serialized model (float16 and int8 conversion,
    the ORT format, which has no external data at all), so a model that does not fit in one
    protobuf message gets ``model.onnx`` and its data file only; refused before anything is built.
    """
    external = weight_bytes >= limits.inline_model_bytes
    if external and (list(precisions) != ["fp32"] or list(formats) != ["onnx"]):
        raise UsageError(
            f"{what} has {format_bytes(weight_bytes)} of float32 weights, over the "
            f"{format_bytes(limits.inline_model_bytes)} that fit inside one model.onnx, so it ships as "
            f"model.onnx with its weights in {EXTERNAL_DATA}; --precision {','.join(precisions)} "
            f"--format {','.join(formats)} asks for variants, which rnnexport makes from a single-file "
            "model only (the ORT format has no external data). Nothing was built. Leave --precision "
            "and --format out, or choose smaller sizes."
        )
    return external


def _external_note(weight_bytes: int, limits: Limits) -> str:
    return (
        f"{format_bytes(weight_bytes)} of weights, over the inline limit of "
        f"{format_bytes(limits.inline_model_bytes)}: they ship in {EXTERNAL_DATA} beside {MODEL}"
    )


def _requested_devices(device: str) -> list[Device]:
    devices = resolve_devices(device)
    if device == "cuda" and not probe_provider("cuda").available:
        # Fail before any work: the one provider asked for cannot run here.
        raise VerificationError(
            f"--device cuda was requested, but CUDA is unavailable here: {probe_provider('cuda').reason}. "
            "Nothing was built. Use --device cpu (or auto), or run on a machine with an NVIDIA GPU and "
            "onnxruntime-gpu's CUDA and cuDNN 9 libraries."
        )
    return devices


def resolve_arch(arch: str, options: BuildOptions) -> Request:
    """Every check that needs no model: names, options, paths, weights, sizes, user inputs."""
    spec = get_arch(arch)
    options.check()
    destination, recovered = prepare_destination(options.out, spec.name, force=options.force)
    devices = _requested_devices(options.device)
    # Names, dtypes and shapes first (for safetensors, from the header alone); data once they fit.
    checkpoint = (
        read_checkpoint(
            options.weights, spec, state_dict_key=options.state_dict_key, strip_prefix=options.strip_prefix
        )
        if options.weights is not None
        else None
    )
    config, notes = resolve_config(spec, options.config, checkpoint.shapes if checkpoint else None)
    estimate = _check_resources(spec, config, options.sweep_shapes, available=available_memory())
    external = stores_externally(
        estimate.weight_bytes,
        options.limits,
        options.precision_list,
        options.format_list,
        what=f"'{spec.name}'",
    )
    notes = [*recovered, *notes, f"estimated {format_bytes(estimate.memory_bytes)} of memory at the peak"]
    if external:
        notes.append(_external_note(estimate.weight_bytes, options.limits))
    contract = spec.contract(config)
    state = None
    if checkpoint is not None:
        checkpoint = fit_to_arch(checkpoint, spec, config, ignore_unexpected=options.ignore_unexpected_keys)
        state = checkpoint.load()
        notes = [*checkpoint.notes, *notes]
    user_cases = read_user_cases(options.inputs, contract)
    subject = Subject(
        name=spec.name,
        contract=contract,
        config=config.subset(spec.sizes),
        load=lambda request: model_and_references(request, spec, config),
        reference=spec.reference,
        stream_method=spec.streaming.method if spec.streaming else "forward",
        stream_extra=tuple(spec.resolve(t, config) for t in spec.streaming.states) if spec.streaming else (),
    )
    return Request(
        subject=subject,
        options=options,
        destination=destination,
        devices=devices,
        tolerances=_tolerances(options, spec.atol, spec.rtol),
        state=state,
        weights_read=checkpoint.manifest_entry() if checkpoint else {},
        user_cases=user_cases,
        notes=notes,
        external=external,
        runtimes=options.runtime_list,
    )


def resolve_module(
    module: torch.nn.Module,
    io: Mapping[str, Any] | str | Path,
    options: BuildOptions,
    *,
    name: str | None,
    source: ModelSource | None,
) -> tuple[Request, torch.nn.Module]:
    """:func:`resolve_arch` for a user's module; also the module, in eval mode."""
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"build_model_artifact needs an nn.Module, got a {type(module).__name__}.")
    contract, io_origin = read_io(io)
    what = type(module).__name__
    user = UserCode.of(module, source.path if source is not None else None)
    check_signature(module.forward, contract, what=what, origin=io_origin)
    name = name if name is not None else what.lower()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"--name {name!r} cannot name a folder; use letters, digits, '-' or '_'.")
    options.check()
    if options.streaming:
        recurrent_states(module)  # refuses a bidirectional recurrence before anything is done
    destination, recovered = prepare_destination(options.out, name, force=options.force)
    devices = _requested_devices(options.device)
    with user.running(f"{what}.eval()", fix="Fix the error there."):
        module = module.eval()
    origin, weights_read, notes = _module_weights(module, options)
    user_cases = read_user_cases(options.inputs, contract)
    weight_bytes = 4 * sum(p.numel() for p in module.parameters())  # float32, as shipped
    _check_module_memory(what, contract, weight_bytes, options.sweep_shapes, available=available_memory())
    external = stores_externally(
        weight_bytes, options.limits, options.precision_list, options.format_list, what=f"The model {what!r}"
    )
    notes = [*notes, *recovered]
    if external:
        notes = [*notes, _external_note(weight_bytes, options.limits)]
    # The API takes a mapping of the module's keyword arguments here (the CLI's --config kwargs).
    recorded = dict(cast(Mapping[str, Any], options.config or {}))
    subject = Subject(
        name=name,
        contract=contract,
        config=recorded,
        load=lambda request: module_references(
            request, module, what, dict(origin), user=user, io_origin=io_origin
        ),
        source=(source or ModelSource(module=type(module).__module__, name=what, kind="class")).to_json(
            recorded
        ),
        user=user,
        outputs=OutputForm(),
    )
    request = Request(
        subject=subject,
        options=options,
        destination=destination,
        devices=devices,
        tolerances=_tolerances(options, 1e-5, 1e-4),
        state=None,
        weights_read=weights_read,
        user_cases=user_cases,
        notes=notes,
        external=external,
        runtimes=options.runtime_list,
    )
    return request, module


def _module_weights(
    module: torch.nn.Module, options: BuildOptions
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Load ``--weights`` into the user's module (strictly): the weights' origin for the manifest,
    how the checkpoint was read, and notes; without weights, the module's own state is recorded."""
    if options.weights is None:
        return {"source": "module", "state_sha256": state_sha256(module)}, {}, []
    path = options.weights
    # The entry and prefix are detected against the module's own key names (and shapes).
    checkpoint = read_checkpoint(
        path, module=module, state_dict_key=options.state_dict_key, strip_prefix=options.strip_prefix
    )
    checkpoint = load_user_weights(module, checkpoint, ignore_unexpected=options.ignore_unexpected_keys)
    weights_read = checkpoint.manifest_entry()
    origin = {"source": "user", "file": path.name, "sha256": sha256_file(path), **weights_read}
    return origin, weights_read, list(checkpoint.notes)
