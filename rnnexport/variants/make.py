"""Making the variants of a verified float32 model: float16, int8, the ORT format, their file
names, and where each can run (read off ONNX Runtime's own tools).

The third-party quirks live here: the quantizer's advice printed through the root logger, the ORT
converter's prints and its absolute paths in the config file, the quantizer's blindness to weights
held in ``Constant`` nodes. Torch-free; the converters are imported only when a variant is made.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from rnnexport.errors import UsageError
from rnnexport.graph.nodes import constants_to_initializers, topological_order
from rnnexport.runtime import probe_provider

__all__ = [
    "FORMATS",
    "PRECISIONS",
    "REQUIRED_OPERATORS",
    "SUPPORT_PROVIDERS",
    "Format",
    "Precision",
    "ReduceRange",
    "Variant",
    "choose_reduce_range",
    "make_variants",
    "parse_choices",
    "provider_support",
    "required_operators_config",
    "to_float16",
    "to_int8",
    "to_ort_format",
    "variant_file",
]

Precision = Literal["fp32", "fp16", "int8"]
Format = Literal["onnx", "ort"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
FORMATS: tuple[Format, ...] = ("onnx", "ort")
REQUIRED_OPERATORS = "required_operators.config"

# Providers a user is likely to target, with ONNX Runtime's names.
SUPPORT_PROVIDERS: dict[str, str] = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
    "XNNPACK": "XnnpackExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "NNAPI": "NnapiExecutionProvider",
}


def parse_choices(value: str | Sequence[str] | None, allowed: Sequence[str], *, option: str) -> list[str]:
    """``"fp32,int8"`` (or a list) -> ``["fp32", "int8"]``, in the order of ``allowed``, validated."""
    if value is None:
        return [allowed[0]]
    items = value.split(",") if isinstance(value, str) else list(value)
    chosen = [item.strip() for item in items if item.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise UsageError(
            f"{option} takes a comma-separated list of {', '.join(allowed)}; got {value!r}"
            + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else "")
            + f". For example {option} {','.join(allowed)}."
        )
    return [a for a in allowed if a in chosen]


def variant_file(precision: Precision, fmt: Format) -> str:
    """``model.onnx``, ``model.fp16.onnx``, ``model.int8.ort``, ..."""
    return "model" + ("" if precision == "fp32" else f".{precision}") + f".{fmt}"


# -- int8 ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReduceRange:
    """Whether int8 weights use 7 bits (``reduce_range``), and why."""

    reduce_range: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        return {"reduce_range": self.reduce_range, "reason": self.reason}


# x86 instructions that multiply u8 x s8 into int32 without the 16-bit intermediate saturation of
# AVX2's vpmaddubsw (the reason reduce_range exists).
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags of this Linux machine, or None where /proc/cpuinfo cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def choose_reduce_range(flags: Iterable[str] | None = None, machine: str | None = None) -> ReduceRange:
    """7-bit weights where int8 products may saturate: x86 without VNNI, or an unknown x86 CPU.

    ``flags`` and ``machine`` default to this machine's (``/proc/cpuinfo``, ``platform.machine()``);
    tests pass them in. The choice is made on the build machine: an artifact meant for another CPU
    family should be built there, and the manifest records which was used.
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return ReduceRange(False, f"{machine}: ARM int8 kernels accumulate without saturation")
    found = set(flags) if flags is not None else _cpu_flags()
    if found is None:
        return ReduceRange(True, f"{machine}: CPU features unknown, so the saturation-safe 7-bit weights")
    vnni = sorted(found & set(_VNNI_FLAGS))
    if vnni:
        return ReduceRange(False, f"{machine} with {', '.join(vnni)}: full 8-bit weights")
    return ReduceRange(True, f"{machine} without VNNI: 7-bit weights avoid u8 x s8 saturation")


def _constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every tensor-valued ``Constant`` node turned into an initializer.

    The export stores some weights (the fused branches' W/R/B) in Constant nodes; ONNX Runtime's
    quantizer only quantizes initializers, and would leave those LSTMs in float32.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    constants_to_initializers(result.graph)
    return result


@contextlib.contextmanager
def _quiet_tools() -> Iterator[None]:
    """ONNX Runtime's tools talk: the quantizer logs advice ("consider pre-processing") through the
    root logger, the ORT converter prints progress and logs each config it writes through a logger
    with its own handler. rnnexport reports what they did itself, so their output is held back."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def to_int8(model: onnx.ModelProto, *, reduce_range: ReduceRange) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Dynamically quantized copy of ``model`` and what was quantized (for the manifest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = _constants_as_initializers(model)
    with tempfile.TemporaryDirectory() as tmp, _quiet_tools():
        path = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            source,
            path,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range.reduce_range,
            per_channel=False,
        )
        quantized = onnx.load(str(path))
    before, after = _op_counts(source), _op_counts(quantized)
    quantized_ops = {
        "LSTM -> DynamicQuantizeLSTM": before["LSTM"] - after["LSTM"],
        "MatMul/Gemm -> MatMulInteger": after["MatMulInteger"],
    }
    details: dict[str, Any] = {
        "method": "onnxruntime.quantization.quantize_dynamic (QInt8 weights, per tensor)",
        **reduce_range.to_json(),
        "quantized": {k: v for k, v in quantized_ops.items() if v},
        "left_in_float32": {op: after[op] for op in ("LSTM", "GRU", "MatMul", "Gemm") if after[op]},
    }
    if after["GRU"]:
        details["note"] = (
            "ONNX Runtime has no quantized GRU kernel (there is no DynamicQuantizeGRU): the GRU stays "
            "float32, and only the MatMul/Gemm around it were quantized"
        )
    return quantized, details


# -- fp16 ------------------------------------------------------------------------------------------


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs, as ONNX requires.

    The float16 converter appends the Cast nodes it creates for float32 inputs at the end of the
    node list; ONNX Runtime sorts on load, but onnx's checker and ONNX Runtime's own mobile usability
    checker do not.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    # A cycle or a dangling input leaves the rest as it was, at the end: the checks report it.
    ordered, stuck = topological_order(graph.node, available=available, by_level=True)
    ordered += stuck
    copies = []
    for node in ordered:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def _cpu_inserted_casts(model: onnx.ModelProto) -> int | None:
    """How many Cast nodes ONNX Runtime's CPU provider adds to run ``model`` (None if it cannot load it).

    Read off the graph the CPU session actually runs (basic optimisations, saved to a temporary file).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "cpu.onnx")
        try:
            ort.InferenceSession(
                model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
            ran = onnx.load(options.optimized_model_filepath)
        except Exception:  # ORT refusing the model: verification reports it
            return None
    return _op_counts(ran)["Cast"] - _op_counts(model)["Cast"]


def to_float16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """float16 weights and compute with float32 inputs and outputs, and a note on CPU execution."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.ModelProto()
    source.CopyFrom(model)
    converted = convert_float_to_float16(source, keep_io_types=True)
    _sort_topologically(converted.graph)
    casts = _cpu_inserted_casts(converted)
    details: dict[str, Any] = {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)",
        "cpu_inserted_casts": casts,
        "note": (
            "float16 weights and compute, float32 inputs and outputs; meant for GPUs. ONNX Runtime's CPU "
            "provider lacks float16 kernels for these operators (LSTM, GRU among them) and runs them in "
            "float32 with Cast nodes it inserts"
            + ("" if casts is None else f" ({casts} here)")
            + ": on a CPU the file is smaller, not faster"
        ),
    }
    return converted, details


# -- ORT format ------------------------------------------------------------------------------------


def to_ort_format(models: dict[str, bytes]) -> dict[str, bytes]:
    """``{"model.int8.onnx": bytes}`` -> ``{"model.int8.ort": bytes}`` with ONNX Runtime's converter.

    Fixed optimisation style (the graph is optimised once, at conversion, for the CPU provider that
    mobile and minimal builds run), no platform-specific layout transforms.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "onnx", Path(tmp) / "ort"
        source.mkdir()
        for name, data in models.items():
            (source / name).write_bytes(data)
        # The converter prints progress to stdout and logs the config it writes.
        with _quiet_tools():
            convert_onnx_models_to_ort(
                source, output_dir=target, optimization_styles=[OptimizationStyle.Fixed]
            )
        return {
            name.removesuffix(".onnx") + ".ort": (target / (name.removesuffix(".onnx") + ".ort")).read_bytes()
            for name in models
        }


def required_operators_config(folder: Path, files: Sequence[str]) -> str | None:
    """Write ``required_operators.config`` for the ORT-format ``files`` in ``folder``; its text.

    ONNX Runtime's writer names the models by absolute path in its header comments; they are
    rewritten to the file names, so the artifact does not depend on where it was built.
    """
    if not files:
        return None
    from onnxruntime.tools.convert_onnx_models_to_ort import create_config_from_models

    config = folder / REQUIRED_OPERATORS
    with _quiet_tools():
        create_config_from_models([folder / f for f in files], config, False)
    lines = []
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("# - "):
            line = f"# - {Path(line[4:].strip()).name}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    config.write_text(text, encoding="utf-8")
    return text


# -- where a variant can run -----------------------------------------------------------------------


def _assignment(data: bytes, provider: str) -> dict[str, Any]:
    """Nodes ONNX Runtime's partitioner gives ``provider`` (the rest fall back to the CPU)."""
    import onnxruntime as ort

    method = "onnxruntime session partitioning (get_provider_graph_assignment_info)"
    if provider not in ort.get_available_providers():
        return {
            "status": "unavailable",
            "method": method,
            "reason": f"this onnxruntime build ({ort.__version__}) has no {provider}",
        }
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        cuda = probe_provider("cuda")  # TensorRT runs through the CUDA provider's libraries
        if not cuda.available:
            prefix = "" if provider == "CUDAExecutionProvider" else "TensorRT needs the CUDA provider: "
            return {"status": "unavailable", "method": method, "reason": prefix + cuda.reason}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    ort.set_default_logger_severity(4)  # a provider library that cannot load is reported below, not logged
    try:
        # ORT's Python wrapper prints "EP Error ... Falling back" when a provider fails to load; the
        # fallback is detected below and reported with the reason instead.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        return {"status": "unavailable", "method": method, "reason": f"session creation failed: {exc}"}
    finally:
        ort.set_default_logger_severity(2)
    if session.get_providers()[0] != provider:
        return {
            "status": "unavailable",
            "method": method,
            "reason": f"onnxruntime fell back to {session.get_providers()} (its {provider} cannot load here)",
        }
    taken: Counter[str] = Counter()
    left: Counter[str] = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        target = taken if subgraph.ep_name == provider else left
        target.update(node.op_type for node in subgraph.get_nodes())
    total = sum(taken.values()) + sum(left.values())
    return {
        "status": "checked",
        "method": method,
        "nodes": total,
        "taken": sum(taken.values()),
        "ops_taken": dict(sorted(taken.items())),
        "ops_left_to_cpu": dict(sorted(left.items())),
        "note": "nodes of the session graph after ONNX Runtime's optimisations",
    }


def _mobile_partitions(model: onnx.ModelProto, provider: str) -> dict[str, Any]:
    """NNAPI / CoreML (ML Program) support from ONNX Runtime's mobile usability checker."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    try:
        shaped = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:  # contrib operators (com.microsoft) have no ONNX shape function
        shaped = onnx.shape_inference.infer_shapes(model)

    def check(fixed: bool) -> Any:
        if provider == "NNAPI":
            return usability_checker.check_nnapi_partitions(shaped, require_fixed_input_sizes=fixed)
        return usability_checker.check_coreml_partitions(shaped, fixed, "coreml_supported_mlprogram_ops.md")

    dynamic, fixed = check(True), check(False)
    return {
        "status": "checked",
        "method": "onnxruntime.tools.mobile_helpers.usability_checker"
        + (" (CoreML ML Program)" if provider == "CoreML" else ""),
        "nodes": dynamic.num_nodes,
        "taken": dynamic.num_supported_nodes,
        "partitions": dynamic.num_partitions,
        "suitability": dynamic.suitability().name,
        "unsupported_ops": sorted(dynamic.unsupported_ops),
        "if_shapes_fixed": {
            "taken": fixed.num_supported_nodes,
            "partitions": fixed.num_partitions,
            "suitability": fixed.suitability().name,
        },
        "note": "operator-level check of the ONNX graph against ONNX Runtime's list for this provider; "
        "with dynamic batch/seq axes only nodes on fixed-size tensors count",
    }


def provider_support(
    model: onnx.ModelProto, data: bytes, *, fmt: Format = "onnx"
) -> dict[str, dict[str, Any]]:
    """For each provider in :data:`SUPPORT_PROVIDERS`: how many of the variant's nodes it takes.

    CPU, CUDA, TensorRT and XNNPACK: ONNX Runtime's own partitioner, from a session created here with
    that provider first (``unavailable``, with the reason, where it cannot load on this machine).
    CoreML and NNAPI: ONNX Runtime's mobile usability checker on ``model`` (for an ORT-format file,
    the ONNX model it was converted from). ``data`` is the file as shipped. ORT-format sessions do not
    record their partitioning, so for them the session checks also read the ONNX model they were
    converted from, and say so.
    """
    source = data if fmt == "onnx" else model.SerializeToString()
    support = {
        short: _assignment(source, SUPPORT_PROVIDERS[short])
        for short in ("CPU", "CUDA", "TensorRT", "XNNPACK")
    }
    if fmt == "ort":
        for entry in support.values():
            entry["note"] = (
                entry.get("note", "") + "; " if entry.get("note") else ""
            ) + "read from the ONNX model this ORT-format file was converted from"
    for short in ("CoreML", "NNAPI"):
        support[short] = _mobile_partitions(model, short)
    return support


# -- making them -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One variant file, made but not yet verified."""

    file: str
    precision: Precision
    format: Format
    data: bytes
    # The ONNX model it is (or, for the ORT format, was converted from): what the mobile checks read.
    source: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)


def make_variants(
    model: onnx.ModelProto,
    data: bytes,
    *,
    precisions: Sequence[Precision],
    formats: Sequence[Format],
    reduce_range: ReduceRange | None = None,
) -> list[Variant]:
    """Every requested precision x format of the float32 ``model`` (``data``: its shipped bytes).

    ``model.onnx`` itself is always the first variant (fp32, onnx); the others follow in the order
    precisions x formats.
    """
    onnx_models: dict[Precision, tuple[onnx.ModelProto, bytes, dict[str, Any]]] = {"fp32": (model, data, {})}
    for precision in precisions:
        if precision == "fp16":
            converted, details = to_float16(model)
        elif precision == "int8":
            converted, details = to_int8(model, reduce_range=reduce_range or choose_reduce_range())
        else:
            continue
        onnx_models[precision] = (converted, converted.SerializeToString(), details)
    variants = [Variant(variant_file("fp32", "onnx"), "fp32", "onnx", data, model)]
    ort_files = (
        to_ort_format({variant_file(p, "onnx"): onnx_models[p][1] for p in precisions})
        if "ort" in formats
        else {}
    )
    for precision in precisions:
        source, blob, details = onnx_models[precision]
        for fmt in formats:
            name = variant_file(precision, fmt)
            if name == variants[0].file:
                continue
            payload = blob if fmt == "onnx" else ort_files[name]
            extra: dict[str, Any] = {}
            if fmt == "ort":
                extra["converted_with"] = "onnxruntime.tools.convert_onnx_models_to_ort (Fixed)"
                extra["ort_note"] = "optimised once, at conversion, for ONNX Runtime's CPU provider" + (
                    ", which bakes in the float32 Cast nodes that provider inserts for float16: the file "
                    "holds float32 copies of the weights and is larger than model.fp16.onnx"
                    if precision == "fp16"
                    else ""
                )
            variants.append(Variant(name, precision, fmt, payload, source, {**details, **extra}))
    return variants
