"""``build``: export -> contract check -> simplify -> contract check -> verify -> variants -> package.

Read top to bottom; each stage is a plain function from its own module. Nothing reaches the
destination unless every requested provider verified: the artifact is assembled in a temporary
folder beside it and moved into place as the very last step.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch

from rnnexport._version import __version__
from rnnexport.artifact import (
    EXTERNAL_DATA,
    MODEL,
    Manifest,
    check_publishable,
    hash_files,
    prepare_destination,
    publish,
    sha256_file,
    staging_folder,
    write_external_model,
    write_initial_states,
    write_test_data,
)
from rnnexport.builder.accuracy import (
    build_variants,
    float64_references,
    one_torch_thread,
    write_variant_files,
)
from rnnexport.builder.export import (
    DEFAULT_OPSET,
    EXPORTER_OPTIONS,
    TRACE_BATCH,
    TRACE_SEQ,
    Exporter,
    ExporterOption,
    export_onnx,
    exporter_order,
)
from rnnexport.builder.golden import load_golden
from rnnexport.builder.iospec import check_signature, read_io
from rnnexport.builder.patch import recurrent_states
from rnnexport.builder.reference import ModuleRunner, TorchRunner, build_model
from rnnexport.builder.stateful import (
    StreamingModel,
    chain_cases,
    check_streamable,
    make_streaming,
    require_streamable,
    single_call_cases,
)
from rnnexport.builder.usermodel import (
    ModelSource,
    OutputForm,
    UserCode,
    check_outputs,
    declared_outputs,
    lengths_hint,
    load_user_weights,
    state_sha256,
)
from rnnexport.builder.weights import fit_to_arch, read_checkpoint
from rnnexport.deploy.runtimes import check_runtimes, other_runtimes
from rnnexport.errors import (
    ContractError,
    ExportError,
    InputError,
    RnnExportError,
    UsageError,
    VerificationError,
)
from rnnexport.feeds import Case, Feeds, in_order, make_feeds, validate_feeds
from rnnexport.graph.contract import check_contract
from rnnexport.graph.simplify import simplify_onnx
from rnnexport.limits import (
    DEFAULT_LIMITS,
    Limits,
    available_memory,
    check_tolerance,
    format_bytes,
)
from rnnexport.progress import Progress, SilentProgress
from rnnexport.registry import get_arch
from rnnexport.runtime import DEVICES, Device, probe_provider, resolve_devices
from rnnexport.runtime.compare import RULES, Criterion, ProviderResult, Rule, Tolerance, verify_on_device
from rnnexport.runtime.oracle import seq_axes, write_float64_outputs
from rnnexport.safeio import check_path, load_npz, loads_strict, read_bounded, write_file, writing
from rnnexport.spec import ArchConfig, ArchSpec, Contract, TensorSpec
from rnnexport.streaming import INITIAL_FOLDER, Streaming
from rnnexport.text import first_line
from rnnexport.variants import FORMATS, PRECISIONS, Format, Precision, parse_choices

__all__ = [
    "SWEEP_BATCHES",
    "SWEEP_SEQS",
    "SWEEP_SHAPES",
    "TF32_TOLERANCE",
    "ResourceEstimate",
    "build",
    "build_model_artifact",
    "estimate_resources",
    "read_config_file",
    "resolve_config",
]

# The shape sweep every build verifies, none equal to the trace shape (batch 2, seq 3).
SWEEP_BATCHES = (1, 3, 16)
SWEEP_SEQS = (1, 7, 64, 257)
assert TRACE_BATCH not in SWEEP_BATCHES
assert TRACE_SEQ not in SWEEP_SEQS
# Long sequences, where float32 error grows the most (batch, seq); also shipped as test data.
LONG_SHAPES = ((3, 1000),)
# Every (batch, seq) a build verifies, none equal to the trace shape.
SWEEP_SHAPES = tuple((b, s) for b in SWEEP_BATCHES for s in SWEEP_SEQS) + LONG_SHAPES
# Sweep shapes that also ship as test data: seq 1, a short batch, and long sequences.
TEST_DATA_SHAPES = ((1, 1), (3, 7), (3, 257), *LONG_SHAPES)
SWEEP_SEED = 0
# TF32 keeps 10 mantissa bits: about 1e-3 relative error per product, which recurrences compound.
TF32_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2)


class _Stage:
    """What a running stage reports: details to show and whether it succeeded."""

    def __init__(self) -> None:
        self.details: list[str] = []
        self.ok = True


@contextmanager
def _stage(progress: Progress, name: str, total: int | None = None) -> Iterator[_Stage]:
    """Time a stage and report its start and (when it did not raise) its end to ``progress``."""
    start = time.perf_counter()
    stage = _Stage()
    progress.stage_started(name, total)
    yield stage
    progress.stage_finished(name, stage.ok, "; ".join(stage.details), time.perf_counter() - start)


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
    largest = max(batch * seq for batch, seq in SWEEP_SHAPES)
    activations = 2 * 4 * largest * (config.input_size + 6 * width + config.output_size)
    return ResourceEstimate(parameters, weight_bytes, ResourceEstimate.COPIES * weight_bytes + activations)


def _check_resources(spec: ArchSpec, config: ArchConfig, *, available: int | None) -> ResourceEstimate:
    """Refuse, with the numbers, a build that cannot fit in memory (a model of any size fits on disk:
    past the inline limit its weights go to ONNX external data)."""
    estimate = estimate_resources(spec, config)
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
            "smaller sizes, or build on a machine with more memory."
        )
    return estimate


# File signatures of the formats --inputs reads: an .npz is a zip archive; safetensors starts with
# the little-endian length of its JSON header, whose first byte is '{'.
_ZIP_MAGIC = b"PK\x03\x04"


def _inputs_format(path: Path, head: bytes) -> str:
    """``npz`` or ``safetensors``, from the file's first bytes (never from its name alone)."""
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise InputError(
        f"--inputs {path} is neither an .npz archive (np.savez) nor a safetensors file: its first bytes "
        f"are {head[:8]!r}. Save the inputs with np.savez(path, **{{name: array}}), or pass a folder of "
        "test_data_set_N/input_K.pb files."
    )


def _read_inputs_file(path: Path, contract: Contract, *, limits: Limits = DEFAULT_LIMITS) -> Feeds:
    """One case from an ``.npz`` (no pickles) or ``.safetensors`` file, keyed by input name.

    Bounded: the file is read once within a size limit, its format is told by its first bytes, and
    what it decompresses to is capped by the sizes its entries declare, before anything is
    decompressed.
    """
    fix = (
        "Expected an .npz (np.savez, no object arrays) or a .safetensors file with one tensor per model "
        f"input ({contract.input_names})."
    )
    data = read_bounded(path, limit=limits.inputs_file_bytes, what="--inputs", error=InputError, fix=fix)
    if _inputs_format(path, data[:9]) == "npz":
        return load_npz(data, origin=str(path), limit=limits.inputs_bytes, error=InputError)
    # safetensors is not compressed: its size on disk is what it holds.
    if len(data) > limits.inputs_bytes:
        raise InputError(
            f"--inputs {path} is {len(data):,} bytes; the limit is {limits.inputs_bytes:,} bytes of "
            "tensors. Pass fewer or smaller cases."
        )
    try:
        from safetensors.numpy import load

        return dict(load(data))
    except Exception as exc:  # SafetensorError and friends: the bytes are not a safetensors file
        raise InputError(f"Cannot read --inputs {path}: {exc}. {fix}") from None


def _read_inputs_folder(folder: Path, contract: Contract) -> list[tuple[str, Feeds]]:
    """Cases from ``test_data_set_N/input_K.pb`` folders (the ONNX test-data layout), inputs only."""
    from onnx import TensorProto, numpy_helper

    sets = sorted(
        (p for p in folder.iterdir() if p.name.startswith("test_data_set_") and p.is_dir()),
        key=lambda p: p.name,
    )
    if not sets:
        raise InputError(
            f"--inputs {folder} is a folder without test_data_set_N/ folders. Expected the ONNX test-data "
            "layout (test_data_set_0/input_0.pb, ...), or pass an .npz / .safetensors file instead."
        )
    cases = []
    for directory in sets:
        feeds: Feeds = {}
        for k, spec in enumerate(contract.inputs):
            tensor_path = directory / f"input_{k}.pb"
            tensor = TensorProto()
            data = read_bounded(
                tensor_path,
                limit=DEFAULT_LIMITS.inputs_bytes,
                what="--inputs",
                error=InputError,
                fix=f"Expected a TensorProto for input '{spec.name}' ({spec.shape_str()}).",
            )
            try:
                tensor.ParseFromString(data)
                if tensor.data_location == TensorProto.EXTERNAL:
                    raise ValueError("it refers to external data, which --inputs does not follow")
                feeds[tensor.name or spec.name] = numpy_helper.to_array(tensor).copy()  # writable
            except Exception as exc:  # OSError, DecodeError, ValueError: unreadable tensor file
                raise InputError(
                    f"Cannot read --inputs {tensor_path}: {exc}. Expected a TensorProto for input "
                    f"'{spec.name}' ({spec.shape_str()})."
                ) from exc
        cases.append((f"{folder.name}/{directory.name}", feeds))
    return cases


def read_user_cases(paths: Sequence[Path], contract: Contract) -> list[tuple[str, Feeds]]:
    """Verification inputs the user supplied: one case per ``.npz`` / ``.safetensors`` file, and one per
    ``test_data_set_N`` folder under a folder. Each is validated against ``contract``."""
    cases: list[tuple[str, Feeds]] = []
    for path in paths:
        if path.is_dir():
            found = _read_inputs_folder(path, contract)
        else:  # the bounded reader refuses a missing path, a link, a pipe or a device, with the reason
            found = [(path.name, _read_inputs_file(path, contract))]
        for name, feeds in found:
            validate_feeds(contract, feeds, origin=f"--inputs {name}")
            cases.append((name, in_order(contract.input_names, feeds)))
    return cases


def _sweep_name(batch: int, seq: int) -> str:
    return f"sweep:b{batch}s{seq}"


def _sweep(contract: Contract, runner: ModuleRunner) -> list[Case]:
    """The build-time shape sweep with eager-PyTorch references (seeded)."""
    rng = np.random.default_rng(SWEEP_SEED)
    cases = []
    for batch, seq in SWEEP_SHAPES:
        feeds = make_feeds(contract, batch=batch, seq=seq, rng=rng)
        cases.append(Case(_sweep_name(batch, seq), feeds, runner.infer(feeds)))
    return cases


def _finalise_model(
    model: onnx.ModelProto, subject: _Subject, contract: Contract, streaming: Streaming | None
) -> onnx.ModelProto:
    """Make the bytes reproducible and the model self-describing.

    Exporters leave doc strings that may carry source locations; they are cleared so that the same
    model built from another folder is byte-identical. Metadata carries the architecture (or the
    user model's artifact name), the rnnexport version, the config and the I/O contract, for anyone
    holding only the .onnx file; a streaming model also its ``rnnexport.streaming`` section.
    """
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    del model.metadata_props[:]
    props = {
        "rnnexport.arch": subject.name,
        "rnnexport.version": __version__,
        "rnnexport.config": json.dumps(subject.config, sort_keys=True),
        "rnnexport.contract": json.dumps(contract.to_json(), sort_keys=True),
    }
    if streaming is not None:
        props["rnnexport.streaming"] = json.dumps(streaming.to_json(chains=False), sort_keys=True)
    onnx.helper.set_model_props(model, props)
    return model


def _versions() -> dict[str, str]:
    import onnxruntime
    import onnxscript
    import onnxsim

    return {
        "rnnexport": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,  # the dynamo exporter's translator
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
class _Subject:
    """What is being built: a registered architecture at some sizes, or a user's module."""

    name: str  # the artifact folder, and rnnexport.arch in the model's metadata
    contract: Contract
    config: dict[str, Any]  # the manifest's config: an architecture's sizes, a user model's kwargs
    # The model, every verification case with its reference outputs, and the weights' origin.
    load: Callable[[_Request], tuple[torch.nn.Module, list[Case], dict[str, Any]]]
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
class _Request:
    """A build request, resolved and validated before any work is done."""

    subject: _Subject
    destination: Path
    devices: list[Device]
    device: str
    exporter: ExporterOption  # auto, or the one exporter to use
    opset: int
    tolerances: dict[Device, Tolerance]
    criterion: Criterion
    precisions: list[Precision]
    formats: list[Format]
    tf32: bool
    force: bool
    weights: Path | None
    state: dict[str, torch.Tensor] | None
    weights_read: dict[str, Any]  # how the checkpoint was read (entry, prefix, dtypes), for the manifest
    user_cases: list[tuple[str, Feeds]]
    notes: list[str]
    streaming: bool = False
    limits: Limits = DEFAULT_LIMITS
    # The weights go to model.onnx.data (decided from their float32 size, before anything is built).
    external: bool = False
    # Runtimes besides ONNX Runtime that check the shipped model and get a manifest record.
    runtimes: tuple[str, ...] = ()


def _stores_externally(
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


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of values the model's initializers hold in the proto itself (external ones count 0)."""
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) + 4 * (len(tensor.float_data) + len(tensor.int32_data))
        total += 8 * (len(tensor.int64_data) + len(tensor.double_data))
    return total


@contextmanager
def _export_folder(external: bool) -> Iterator[Path | None]:
    """A private temporary folder for an export that goes to a file (external data), else None.

    torch.onnx writes a large model's weights as one file per tensor beside the model file, named
    after the tensors; a folder of our own keeps those names from meeting anything else.
    """
    if not external:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="rnnexport-export-") as folder:
        yield Path(folder)


def _accuracy_options(
    rule: str, precisions: str | Sequence[str] | None, formats: str | Sequence[str] | None
) -> tuple[Criterion, list[Precision], list[Format]]:
    """The verification rule and the variants of any build, checked."""
    if rule not in RULES:
        raise UsageError(
            f"Unknown --rule {rule!r}: expected oracle (judge against float64 relative to PyTorch float32's "
            "own error, the default) or tolerance (plain atol/rtol against float32)."
        )
    chosen_precisions = cast(list[Precision], parse_choices(precisions, PRECISIONS, option="--precision"))
    chosen_formats = cast(list[Format], parse_choices(formats, FORMATS, option="--format"))
    return Criterion(rule), chosen_precisions, chosen_formats


def _check_streaming(
    streaming: bool, precisions: list[Precision], formats: list[Format], exporter: str
) -> None:
    """A streaming build ships float32 ONNX only (its variants are not verified as streams)."""
    if streaming and (precisions != ["fp32"] or formats != ["onnx"]):
        raise UsageError(
            f"--streaming builds ship model.onnx in float32 only; got --precision {','.join(precisions)} "
            f"--format {','.join(formats)}. Their chained state is verified for that file alone. Leave "
            "--precision and --format out with --streaming, or build the variants without --streaming."
        )


def _check_options(*, exporter: str, opset: int, atol: float | None, rtol: float | None) -> None:
    """The exporter, opset and tolerance options of any build."""
    if exporter not in EXPORTER_OPTIONS:
        raise UsageError(
            f"Unknown exporter {exporter!r}: expected one of {', '.join(EXPORTER_OPTIONS)} (auto tries the "
            "measured better one first and falls back to the other where it cannot export the model)."
        )
    if not 7 <= opset <= 21:
        raise UsageError(f"--opset must be between 7 and 21 (17 is the tested default), got {opset}.")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None:
            check_tolerance(f"--{name}", value)


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


def _resolve(
    arch: str,
    *,
    out: Path,
    weights: Path | None,
    config: ArchConfig | Mapping[str, Any] | str | Path | None,
    device: str,
    exporter: ExporterOption,
    opset: int,
    atol: float | None,
    rtol: float | None,
    tf32: bool,
    inputs: Sequence[Path],
    force: bool,
    state_dict_key: str | None,
    strip_prefix: str | None,
    rule: str,
    precisions: str | Sequence[str] | None,
    formats: str | Sequence[str] | None,
    streaming: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    ignore_unexpected_keys: bool = False,
) -> _Request:
    """Every check that needs no model: names, options, paths, weights, sizes, user inputs."""
    spec = get_arch(arch)
    _check_options(exporter=exporter, opset=opset, atol=atol, rtol=rtol)
    for option, path in [("--weights", weights), *(("--inputs", p) for p in inputs)]:
        if path is not None:
            check_path(path, what=option)
    criterion, chosen_precisions, chosen_formats = _accuracy_options(rule, precisions, formats)
    _check_streaming(streaming, chosen_precisions, chosen_formats, exporter)
    destination, recovered = prepare_destination(out, spec.name, force=force)
    devices = _requested_devices(device)
    _require_weights(weights, state_dict_key, strip_prefix, ignore_unexpected_keys)
    # Names, dtypes and shapes first (for safetensors, from the header alone); data once they fit.
    checkpoint = (
        read_checkpoint(weights, spec, state_dict_key=state_dict_key, strip_prefix=strip_prefix)
        if weights is not None
        else None
    )
    config_, notes = resolve_config(spec, config, checkpoint.shapes if checkpoint else None)
    estimate = _check_resources(spec, config_, available=available_memory())
    external = _stores_externally(
        estimate.weight_bytes, limits, chosen_precisions, chosen_formats, what=f"'{spec.name}'"
    )
    notes = [*recovered, *notes, f"estimated {format_bytes(estimate.memory_bytes)} of memory at the peak"]
    if external:
        notes.append(_external_note(estimate.weight_bytes, limits))
    contract = spec.contract(config_)
    state = None
    if checkpoint is not None:
        checkpoint = fit_to_arch(checkpoint, spec, config_, ignore_unexpected=ignore_unexpected_keys)
        state = checkpoint.load()
        notes = [*checkpoint.notes, *notes]
    user_cases = read_user_cases(inputs, contract)
    tolerance = Tolerance(atol=spec.atol if atol is None else atol, rtol=spec.rtol if rtol is None else rtol)
    subject = _Subject(
        name=spec.name,
        contract=contract,
        config=config_.subset(spec.sizes),
        load=lambda request: _model_and_references(request, spec, config_),
        reference=spec.reference,
        stream_method=spec.streaming.method if spec.streaming else "forward",
        stream_extra=tuple(spec.resolve(t, config_) for t in spec.streaming.states) if spec.streaming else (),
    )
    return _Request(
        subject=subject,
        destination=destination,
        devices=devices,
        device=device,
        exporter=exporter,
        opset=opset,
        tolerances={"cpu": tolerance, "cuda": TF32_TOLERANCE if tf32 else tolerance},
        criterion=criterion,
        precisions=chosen_precisions,
        formats=chosen_formats,
        tf32=tf32,
        force=force,
        weights=weights,
        state=state,
        weights_read=checkpoint.manifest_entry() if checkpoint else {},
        user_cases=user_cases,
        notes=notes,
        streaming=streaming,
        limits=limits,
        external=external,
    )


def _require_weights(
    weights: str | Path | None, state_dict_key: str | None, strip_prefix: str | None, ignore_unexpected: bool
) -> None:
    """The options that say how to read a checkpoint need one."""
    given = [
        option
        for option, value in (
            ("--state-dict-key", state_dict_key is not None),
            ("--strip-prefix", strip_prefix is not None),
            ("--ignore-unexpected-keys", ignore_unexpected),
        )
        if value
    ]
    if weights is None and given:
        raise UsageError(
            f"{' and '.join(given)} say{'s' if len(given) == 1 else ''} how to read a checkpoint, but no "
            f"--weights was given. Pass --weights FILE, or leave {'it' if len(given) == 1 else 'them'} out."
        )


def _external_note(weight_bytes: int, limits: Limits) -> str:
    return (
        f"{format_bytes(weight_bytes)} of weights, over the inline limit of "
        f"{format_bytes(limits.inline_model_bytes)}: they ship in {EXTERNAL_DATA} beside {MODEL}"
    )


_FROZEN_TRACE = (
    " With the TorchScript exporter, a size that follows the example (batch "
    f"{TRACE_BATCH}, seq {TRACE_SEQ}) means the trace froze it: typically a Python loop over the time "
    "steps (nn.LSTMCell) or a data-dependent Python branch in forward. Use nn.LSTM / nn.GRU / nn.RNN over "
    "the whole sequence, and torch.where instead of a Python branch."
)


def _check_traced(
    model: onnx.ModelProto, contract: Contract, exporter: Exporter, *, stage: str, path: Path | None = None
) -> None:
    """:func:`check_contract`, whose failure after a trace gets the usual cause and fix added."""
    try:
        check_contract(
            model, contract, stage=stage, trace_sizes=f"batch {TRACE_BATCH}, seq {TRACE_SEQ}", path=path
        )
    except ContractError as exc:
        if exporter != "torchscript":
            raise
        raise ContractError(f"{exc}{_FROZEN_TRACE}") from exc


def _export_checked(
    model: torch.nn.Module, contract: Contract, request: _Request, *, to: Path | None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Export with the exporter(s) ``request.exporter`` names (see :func:`exporter_order`) and check
    the graph; the manifest's record of which exporter made it, which was tried first and why.

    Under ``auto`` the second exporter runs only where the first fails to export or its graph fails
    the contract and graph checks; a graph that passes them is kept, and verified, whatever its
    numbers turn out to be (a wrong one fails the build, it is not swapped for the other exporter's).
    Where both fail, the error says why each did.
    """
    order, why = exporter_order(request.exporter)
    failed: list[tuple[Exporter, ExportError]] = []
    for exporter in order:
        if failed and to is not None:  # the first attempt's files go; the folder is the build's own
            for leftover in to.parent.iterdir():
                leftover.unlink()
        try:
            exported = export_onnx(model, contract, exporter=exporter, opset=request.opset, to=to)
            _check_traced(exported, contract, exporter, stage=f"after export ({exporter})", path=to)
        except ExportError as exc:  # ContractError included: the graph checks
            if len(order) == 1:
                raise
            failed.append((exporter, exc))
            continue
        record: dict[str, Any] = {
            "exporter": exporter,
            "requested": request.exporter,
            "tried_first": order[0],
            "why": why,
            "opset_import": {o.domain or "ai.onnx": o.version for o in exported.opset_import},
            "ir_version": exported.ir_version,
        }
        if failed:
            first, error = failed[0]
            record["fallback"] = {
                "from": first,
                "summary": f"the {first} exporter failed, so {exporter} exported it: "
                + first_line(error).split(". ")[0][:200],
                "reason": str(error),
            }
        return exported, record
    (first, error), (_, last) = failed
    raise type(last)(
        f"{last} (The {first} exporter, tried first under --exporter auto, failed too: {error})"
    ) from last.__cause__


def _frozen_shape_hint(results: Mapping[Device, ProviderResult]) -> str:
    """Why a graph may fail only at other shapes: a trace that froze the sequence length."""
    text = " ".join(line for r in results.values() for line in r.failures)
    return _FROZEN_TRACE if "shape" in text or "error" in text.lower() else ""


def _model_and_references(
    request: _Request, spec: ArchSpec, config: ArchConfig
) -> tuple[torch.nn.Module, list[Case], dict[str, Any]]:
    """The PyTorch model, every verification case with its reference outputs, and the weights' origin.

    Default sizes without a checkpoint use the committed golden weights and cases; other sizes use
    a seeded initialisation; a checkpoint is used as given. Either way the shape sweep's references
    are computed here from eager PyTorch.
    """
    golden_cases: list[Case] = []
    origin: dict[str, Any]
    if request.state is not None and request.weights is not None:
        model = build_model(spec, config, state_dict=request.state)
        origin = {
            "source": "user",
            "file": request.weights.name,
            "sha256": sha256_file(request.weights),
            **request.weights_read,
        }
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
    cases = golden_cases + _sweep(request.subject.contract, runner)
    cases += [Case(f"user:{name}", feeds, runner.infer(feeds)) for name, feeds in request.user_cases]
    origin["references"] = (
        ("committed golden cases + " if golden_cases else "")
        + f"eager PyTorch on CPU at build time (float32, seed {SWEEP_SEED})"
        + (f" ({spec.reference})" if spec.reference != "forward" else "")
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
    exporter: ExporterOption = "auto",
    opset: int = DEFAULT_OPSET,
    atol: float | None = None,
    rtol: float | None = None,
    tf32: bool = False,
    inputs: str | Path | Sequence[str | Path] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    rule: Rule = "oracle",
    precisions: str | Sequence[str] | None = None,
    formats: str | Sequence[str] | None = None,
    streaming: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    ignore_unexpected_keys: bool = False,
    runtimes: str | Sequence[str] | None = None,
) -> Manifest:
    """Export, simplify, verify and package ``arch`` into ``out/arch``; return the manifest.

    ``config`` gives sizes (an :class:`ArchConfig`, a mapping, or a JSON file); sizes it leaves out
    are read off ``weights`` where possible, else defaulted. ``device`` is ``cpu``, ``cuda`` or
    ``auto`` (every provider that really works here). ``inputs`` adds verification cases (files or
    test-data folders, see :func:`read_user_cases`); they ship in the artifact's test data.
    ``progress`` receives each stage's start, progress and end.

    ``streaming`` ships a stateful model instead: every recurrent state (and the architecture's own
    streaming state, such as attention's running softmax) is a graph input and output, verified per
    call and over chained calls (see :mod:`rnnexport.streaming`); float32 ONNX only.

    ``rule`` decides verification: ``oracle`` (default) judges the artifact against a float64 run of
    the same model relative to PyTorch float32's own error, ``tolerance`` by atol/rtol against float32
    (see :mod:`rnnexport.runtime.compare`). ``precisions`` (``fp32``, ``fp16``, ``int8``) and ``formats``
    (``onnx``, ``ort``), comma-separated or lists, add variant files (see :mod:`rnnexport.variants`);
    each is verified with its own tolerance, and one that fails is left out of the artifact while the
    rest ship: ``manifest.variants`` says which (``status``). ``state_dict_key`` (the checkpoint
    entry holding the state dict) and ``strip_prefix`` (removed from the keys that carry it; ``""``
    for none) are detected when left ``None``; ``ignore_unexpected_keys`` loads a checkpoint with
    keys the model does not have, leaving them out (the manifest lists them); a missing key stays an
    error. ``limits`` holds the bounds, among them
    ``inline_model_bytes``: float32 weights of that size or more ship in ``model.onnx.data``, ONNX
    external data beside ``model.onnx`` (float32 ONNX only; variants are refused). Raises an
    :class:`~rnnexport.errors.RnnExportError` subclass on any failure, and on failure or interruption
    leaves ``out`` exactly as it was.
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
        inputs=[Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs or ()],
        force=force,
        state_dict_key=state_dict_key,
        strip_prefix=strip_prefix,
        rule=rule,
        precisions=precisions,
        formats=formats,
        streaming=streaming,
        limits=limits,
        ignore_unexpected_keys=ignore_unexpected_keys,
    )
    return _run(dataclasses.replace(request, runtimes=other_runtimes(runtimes)), progress)


def _run(request: _Request, progress: Progress | None) -> Manifest:
    """The stages, top to bottom, for any subject: model -> export -> simplify -> verify -> package."""
    subject, opset, tf32, force = (
        request.subject,
        request.opset,
        request.tf32,
        request.force,
    )
    progress = progress or SilentProgress()
    contract = subject.contract
    stream: StreamingModel | None = None
    chains: list[list[str]] = []
    with staging_folder(request.destination) as staging:
        with _stage(progress, "model") as stage, one_torch_thread():
            model, cases, weights_origin = subject.load(request)
            reference = subject.reference
            if subject.outputs is not None and subject.source is not None:
                form = subject.outputs
                if form.by_name or form.dropped or form.skipped_none:  # a plain tensor or tuple goes unsaid
                    stage.details.append(form.describe())
                subject.source["outputs"] = form.to_json()
            if request.streaming:
                # Every case becomes one call of a new stream (zero state), plus chained calls; the
                # references are the streaming wrapper in eager PyTorch, state carried by PyTorch.
                with _user_code(subject, "in the streaming wrapper (chunk by chunk, state carried)"):
                    stream = make_streaming(
                        model, contract, method=subject.stream_method, extra=subject.stream_extra
                    )
                    chained, chains = chain_cases(stream, contract, seed=SWEEP_SEED)
                    problems = check_streamable(contract, model, chained, chains)
                    require_streamable(problems, f"'{subject.name}'")
                    cases = single_call_cases(stream, cases) + chained
                contract, model, reference = stream.contract, stream.module, "forward"
                stage.details.append(f"streaming: {len(stream.streaming.states)} state tensors")
                learned = sorted(stream.streaming.shipped)
                if learned:  # a new stream starts from what the model passes as hx, not from zeros
                    stage.details.append(
                        f"{len(learned)} start from the model's own learned initial state "
                        f"(shipped in {INITIAL_FOLDER}/: {', '.join(learned)})"
                    )
            float64, oracle = _float64_oracle(subject, contract, model, cases, reference)
            if not oracle["ran"]:
                stage.details.append(f"float64 oracle not run: {oracle['reason']}")
                if request.criterion.rule == "oracle":
                    request = dataclasses.replace(request, criterion=Criterion("tolerance"))
            stage.details += [
                *request.notes,
                f"{sum(p.numel() for p in model.parameters())} parameters, {len(cases)} reference cases",
            ]

        streaming = stream.streaming if stream is not None else None
        layout: dict[str, Any] | None = None
        # A model for external data goes through files from the export on: none of its stages
        # may serialize it whole (protobuf stops at 2 GiB), and each file is private to the build.
        with _export_folder(request.external) as work:
            to = None if work is None else work / MODEL
            with (
                _stage(progress, "export") as stage,
                _user_code(subject, "while it was traced for export"),
            ):
                exported, chosen = _export_checked(model, contract, request, to=to)
                exporter: Exporter = chosen["exporter"]
                stage.details.append(f"{exporter}, opset {opset}, {len(exported.graph.node)} nodes")
                if "fallback" in chosen:
                    stage.details.append(chosen["fallback"]["summary"])
            with _stage(progress, "simplify") as stage:
                # A streaming call is mostly per-node overhead (see simplify_onnx).
                simplified, stats = simplify_onnx(
                    exported, check_feeds=cases[-1].inputs, path=to, streaming=stream is not None
                )
                del exported
                _finalise_model(simplified, subject, contract, streaming)
                held = _tensor_bytes(simplified)
                if request.external or held >= request.limits.inline_model_bytes:
                    # Tested again on what the graph holds: an export may hold more than the
                    # parameters (a constant the trace folded in).
                    _stores_externally(
                        held,
                        request.limits,
                        request.precisions,
                        request.formats,
                        what=f"'{subject.name}'",
                    )
                    with writing(request.destination.parent):
                        layout = write_external_model(simplified, staging)
                # The checker reads the staged files for external data (see check_contract).
                staged = staging / MODEL if layout is not None else None
                _check_traced(simplified, contract, exporter, stage="after simplification", path=staged)
                stage.details.append(stats.describe())
                if layout is not None:
                    stage.details.append(
                        f"{layout['tensors']} tensors ({format_bytes(layout['bytes'])}) written to "
                        f"{EXTERNAL_DATA}, beside {MODEL}"
                    )
        if layout is None:
            model_bytes = simplified.SerializeToString()
            write_file(staging / MODEL, model_bytes, where=request.destination.parent)
        else:
            model_bytes = (staging / MODEL).read_bytes()
            layout["inline_limit_bytes"] = request.limits.inline_model_bytes
            if not layout["tensors"]:  # no tensor reached the size for external data: one file after all
                layout = None
        # With external data, ONNX Runtime resolves model.onnx.data beside the staged model.onnx:
        # verification runs the files that ship, and never a serialized copy of the whole model.
        model_source: bytes | Path = model_bytes if layout is None else staging / MODEL

        # Verify the bytes that will ship, on every requested provider; all must pass.
        results: dict[Device, ProviderResult] = {}
        for d in request.devices:
            with _stage(progress, f"verify {d}", total=len(cases)) as stage:
                result = results[d] = verify_on_device(
                    model_source,
                    cases,
                    device=d,
                    tol=request.tolerances[d],
                    tf32=tf32,
                    on_case=progress.advanced,
                    criterion=request.criterion,
                    float64=float64,
                    seq_axes=seq_axes(contract),
                    chains=chains,
                    state_pairs=streaming.pairs if streaming is not None else None,
                )
                stage.ok = result.status == "passed"
                stage.details.append(
                    f"{result.status}: {result.reason}"
                    if result.reason
                    else f"{result.status}, max abs error {result.max_abs:.2e} over {len(cases)} cases "
                    f"({request.criterion.rule} rule, worst err/allowed {result.max_ratio:.3f})"
                )
        if not results or any(r.status != "passed" for r in results.values()):
            unavailable = any(r.status == "unavailable" for r in results.values())
            raise VerificationError(
                f"Verification of '{subject.name}' did not pass, so nothing was shipped: "
                f"{_summary(results)}. "
                + (
                    "Use --device cpu, or install onnxruntime-gpu with CUDA and cuDNN 9 on a GPU machine."
                    if unavailable
                    else f"The graph the {exporter} exporter wrote computes something else than the PyTorch "
                    "model at these shapes. A wrong graph is reported, not replaced by the other exporter's: "
                    f"'--exporter {'dynamo' if exporter == 'torchscript' else 'torchscript'}' builds with "
                    "that one, if you choose to." + _frozen_shape_hint(results)
                )
            )

        runtimes = check_runtimes(
            request.runtimes,
            model_source,
            cases,
            stage=lambda name: _stage(progress, name, total=len(cases)),
            tol=request.tolerances["cpu"],
            seconds=request.limits.run_seconds(len(model_bytes)),
            criterion=request.criterion,
            float64=float64,
            seq_axes=seq_axes(contract),
            chains=chains,
            state_pairs=streaming.pairs if streaming is not None else None,
        )

        variants = build_variants(
            simplified,
            model_bytes,
            results,
            cases,
            float64,
            contract=contract,
            precisions=request.precisions,
            formats=request.formats,
            devices=request.devices,
            tolerances=request.tolerances,
            criterion=request.criterion,
            tf32=tf32,
            stage=lambda name: _stage(progress, name, total=len(cases)),
            on_case=progress.advanced,
        )
        write_variant_files(staging, variants)

        with _stage(progress, "package") as stage, writing(request.destination.parent):
            names = [_sweep_name(batch, seq) for batch, seq in TEST_DATA_SHAPES]
            shipped = [c for c in cases if c.name.startswith("user:")]
            shipped += sorted((c for c in cases if c.name in names), key=lambda c: names.index(c.name))
            shipped += [c for c in cases if any(c.name in chain for chain in chains)]
            test_data = write_test_data(staging, shipped, contract)
            if streaming is not None:
                folder_of = {e["case"]: e["dir"] for e in test_data}
                streaming = dataclasses.replace(
                    streaming, chains=tuple(tuple(folder_of[n] for n in chain) for chain in chains)
                )
            if oracle["ran"]:
                write_float64_outputs(staging, [float64[c.name] for c in shipped], contract)
            if stream is not None:  # learned initial states, hashed with the rest below
                write_initial_states(staging, stream.files)
            manifest = Manifest(
                arch=subject.name,
                config=subject.config,
                contract=contract,
                versions=_versions(),
                export={
                    **chosen,
                    "opset": opset,
                    "trace_shape": {"batch": TRACE_BATCH, "seq": TRACE_SEQ},
                    **({"external_data": layout} if layout is not None else {}),
                },
                simplification=stats.to_json(),
                weights=weights_origin,
                verification={
                    "rule": request.criterion.to_json(),
                    "references": {
                        "float32": "eager PyTorch, float32 (test_data_set_N/output_K.pb)",
                        "float64": "the same module and weights in float64, copy.deepcopy(model).double(), "
                        "float inputs widened, torch's default dtype float64 during the run "
                        "(test_data_set_N/float64_output_K.pb)"
                        if oracle["ran"]
                        else f"not run: {oracle['reason']}",
                    },
                    "float64_oracle": oracle,
                    "tolerance": {d: t.to_json() for d, t in request.tolerances.items()},
                    "tf32": tf32,
                    "tf32_policy": "CUDA provider use_tf32=" + ("1 (looser tolerance)" if tf32 else "0"),
                    "providers": _provider_entries(request, results),
                    **({"runtimes": runtimes} if runtimes else {}),
                },
                test_data=test_data,
                files=hash_files(staging),
                variants=[result.to_json() for result, _ in variants],
                source=subject.source,
                streaming=None if streaming is None else streaming.to_json(),
            )
            manifest.write(staging)
            # What verify would refuse is never published (a bug if it happens: the checks above
            # should have refused the build first).
            check_publishable(staging, limits=request.limits)
            publish(staging, request.destination, force=force)
            stage.details.append(str(request.destination))
    return manifest


@contextmanager
def _user_code(subject: _Subject, when: str) -> Iterator[None]:
    """A user model's code running inside the block (a no-op for an architecture): what it raises,
    ``sys.exit()`` included, is reported at the line of its file it came from, as is an export
    failure whose cause was raised there."""
    user = subject.user
    if user is None:
        yield
        return
    action = f"Your model's forward ({user.name}.forward), {when},"
    try:
        with user.running(action, fix="Fix the error there (it ran in eager PyTorch without raising)."):
            yield
    except ExportError as exc:
        # The exporter may wrap what the model raised (torch.export's TorchExportError has it as its
        # own cause): look down the chain for the exception raised in the user's files.
        cause: BaseException | None = exc.__cause__
        while cause is not None:
            spot = user.locate(cause)
            if spot.startswith("at "):
                raise type(exc)(f"{exc} {action} raised it {spot}.") from cause
            cause = cause.__cause__ or cause.__context__
        raise


_ORACLE_RAN = {"ran": True, "default_dtype": "float64 during the run"}


def _float64_oracle(
    subject: _Subject, contract: Contract, model: torch.nn.Module, cases: Sequence[Case], method: str
) -> tuple[dict[str, Feeds], dict[str, Any]]:
    """The float64 references, and the manifest's ``verification.float64_oracle`` entry.

    A user model that cannot run in float64 (it casts to float32 itself, or mixes in float32 tensors
    it makes from numpy) is built anyway, without float64 references and so under the tolerance
    rule against float32, with the reason printed and recorded; ``sys.exit()`` there is still an
    error. An architecture's failure is a bug and keeps its traceback.
    """
    user = subject.user
    if user is None:
        return float64_references(contract, model, cases, method=method), dict(_ORACLE_RAN)
    try:
        float64 = float64_references(contract, model, cases, method=method)
    except (RnnExportError, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:  # the model's own float32-only code: no oracle, said so
        reason = f"in float64, {user.name}.forward raised {user.describe(exc)}"
    except BaseException as exc:  # SystemExit
        raise user.error(exc, f"Your model's forward ({user.name}.forward), in float64,", fix="") from exc
    else:
        narrow = next(
            (
                f"in float64, {user.name}.forward returned '{name}' as {array.dtype} (it casts it itself)"
                for outputs in float64.values()
                for name, array in outputs.items()
                if array.dtype == np.float32
            ),
            None,
        )
        if narrow is None:
            return float64, dict(_ORACLE_RAN)
        reason = narrow
    reason += "; verified under the tolerance rule against PyTorch float32 instead"
    return {}, {"ran": False, "reason": reason}


def _module_references(
    request: _Request,
    model: torch.nn.Module,
    what: str,
    origin: dict[str, Any],
    *,
    user: UserCode,
    io_origin: str,
) -> tuple[torch.nn.Module, list[Case], dict[str, Any]]:
    """A user module's reference cases: the sweep (and ``--inputs``), from ``forward`` in eager PyTorch.

    Every call's outputs are checked against the declared outputs first, and a module that raises on
    the generated inputs is reported as a usage problem (its description, or the module, is wrong),
    at the line of the user's code it came from.
    """
    contract = request.subject.contract
    runner = ModuleRunner(contract, model)

    def reference(name: str, feeds: Feeds) -> Case:
        sizes = {
            d: int(feeds[t.name].shape[axis])
            for t in contract.inputs
            for axis, d in enumerate(t.shape)
            if isinstance(d, str)
        }
        try:
            results = runner.run(feeds)
        except (RnnExportError, KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # the user's forward failed on inputs its description allows
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            hint = (
                lengths_hint(contract, model, feeds, origin=io_origin) if isinstance(exc, Exception) else ""
            )
            raise user.error(
                exc,
                f"Your model's forward ({what}.forward)",
                fix=f"It ran on inputs generated from {io_origin} ({shapes}): check the description "
                f"against the model (shapes, dtypes, the range of integer inputs).{hint}",
            ) from exc
        check_outputs(contract, results, sizes, what=what)
        return Case(
            name,
            feeds,
            {n: t.detach().cpu().numpy() for n, t in zip(contract.output_names, results, strict=True)},
        )

    rng = np.random.default_rng(SWEEP_SEED)
    cases = [
        reference(_sweep_name(batch, seq), make_feeds(contract, batch=batch, seq=seq, rng=rng))
        for batch, seq in SWEEP_SHAPES
    ]
    cases += [reference(f"user:{name}", feeds) for name, feeds in request.user_cases]
    origin["references"] = f"eager PyTorch on CPU at build time (float32, seed {SWEEP_SEED}): {what}.forward"
    return model, cases, origin


def build_model_artifact(
    module: torch.nn.Module,
    *,
    io: Mapping[str, Any] | str | Path,
    name: str | None = None,
    out: str | Path = "dist",
    weights: str | Path | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    source: ModelSource | None = None,
    config: Mapping[str, Any] | None = None,
    device: str = "auto",
    exporter: ExporterOption = "auto",
    opset: int = DEFAULT_OPSET,
    atol: float | None = None,
    rtol: float | None = None,
    tf32: bool = False,
    inputs: str | Path | Sequence[str | Path] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    rule: Rule = "oracle",
    precisions: str | Sequence[str] | None = None,
    formats: str | Sequence[str] | None = None,
    streaming: bool = False,
    runtimes: str | Sequence[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    ignore_unexpected_keys: bool = False,
) -> Manifest:
    """Export, simplify, verify and package any recurrent ``module`` into ``out/name``.

    ``io`` is the I/O description (a mapping in the ``io.json`` format, or the path of such a file;
    see :mod:`rnnexport.builder.iospec`): ``forward`` is called with the declared inputs positionally, and
    must return the declared outputs (a nested tuple counts leaf by leaf). ``name`` defaults to the
    lowercased class name. ``weights`` (a checkpoint file) is loaded into ``module`` strictly; the
    entry holding the state dict and a key prefix are detected against the module's own key names
    unless ``state_dict_key`` / ``strip_prefix`` name them, and ``ignore_unexpected_keys`` leaves
    out keys the module does not have, as for :func:`build`; without ``weights`` the module's
    current weights are used.
    ``source`` and ``config`` are what the manifest records about where the module came from (the
    CLI fills them from ``--model`` and ``--config``). The rest is as for :func:`build`; so is the
    verification: the same shape sweep, lengths-aware inputs, rule (``rule``), variants
    (``precisions``, ``formats``) and report, against ``forward`` in eager PyTorch. ``streaming``
    ships a stateful model (see :mod:`rnnexport.streaming`); a bidirectional recurrence is refused.
    ``limits`` as for :func:`build`: weights past ``limits.inline_model_bytes`` ship as external data.
    """
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"build_model_artifact needs an nn.Module, got a {type(module).__name__}.")
    contract, io_origin = read_io(io)
    what = type(module).__name__
    user = UserCode.of(module, source.path if source is not None else None)
    check_signature(module.forward, contract, what=what, origin=io_origin)
    name = name if name is not None else what.lower()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"--name {name!r} cannot name a folder; use letters, digits, '-' or '_'.")
    _check_options(exporter=exporter, opset=opset, atol=atol, rtol=rtol)
    criterion, chosen_precisions, chosen_formats = _accuracy_options(rule, precisions, formats)
    _check_streaming(streaming, chosen_precisions, chosen_formats, exporter)
    if streaming:
        recurrent_states(module)  # refuses a bidirectional recurrence before anything is done
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs or ()]
    for option, path in [("--weights", weights), *(("--inputs", p) for p in paths)]:
        if path is not None:
            check_path(path, what=option)
    destination, recovered = prepare_destination(Path(out), name, force=force)
    devices = _requested_devices(device)
    with user.running(f"{what}.eval()", fix="Fix the error there."):
        module = module.eval()
    origin: dict[str, Any]
    weights_read: dict[str, Any] = {}
    _require_weights(weights, state_dict_key, strip_prefix, ignore_unexpected_keys)
    if weights is not None:
        path = Path(weights)
        # The entry and prefix are detected against the module's own key names (and shapes).
        checkpoint = read_checkpoint(
            path, module=module, state_dict_key=state_dict_key, strip_prefix=strip_prefix
        )
        checkpoint = load_user_weights(module, checkpoint, ignore_unexpected=ignore_unexpected_keys)
        weights_read = checkpoint.manifest_entry()
        recovered = [*checkpoint.notes, *recovered]
        origin = {"source": "user", "file": path.name, "sha256": sha256_file(path), **weights_read}
    else:
        origin = {"source": "module", "state_sha256": state_sha256(module)}
    user_cases = read_user_cases(paths, contract)
    weight_bytes = 4 * sum(p.numel() for p in module.parameters())  # float32, as shipped
    external = _stores_externally(
        weight_bytes, limits, chosen_precisions, chosen_formats, what=f"The model {what!r}"
    )
    if external:
        recovered = [*recovered, _external_note(weight_bytes, limits)]
    tolerance = Tolerance(atol=1e-5 if atol is None else atol, rtol=1e-4 if rtol is None else rtol)
    recorded = dict(config or {})
    form = OutputForm()
    subject = _Subject(
        name=name,
        contract=contract,
        config=recorded,
        load=lambda request: _module_references(
            request, module, what, dict(origin), user=user, io_origin=io_origin
        ),
        source=(source or ModelSource(module=type(module).__module__, name=what, kind="class")).to_json(
            recorded
        ),
        user=user,
        outputs=form,
    )
    request = _Request(
        subject=subject,
        destination=destination,
        devices=devices,
        device=device,
        exporter=exporter,
        opset=opset,
        tolerances={"cpu": tolerance, "cuda": TF32_TOLERANCE if tf32 else tolerance},
        criterion=criterion,
        precisions=chosen_precisions,
        formats=chosen_formats,
        tf32=tf32,
        force=force,
        weights=None if weights is None else Path(weights),
        state=None,
        weights_read=weights_read,
        user_cases=user_cases,
        notes=recovered,
        streaming=streaming,
        limits=limits,
        external=external,
    )
    # Every call of the module returns exactly the declared outputs while the build runs.
    with declared_outputs(module, contract, what=what, form=form):
        return _run(dataclasses.replace(request, runtimes=other_runtimes(runtimes)), progress)
