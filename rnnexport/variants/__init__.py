"""Variants of a verified float32 model for other targets: float16, int8, and the ORT format.

Each variant is its own file beside ``model.onnx`` (which stays the float32 ONNX model):

- ``model.fp16.onnx``: float16 weights and compute, float32 inputs and outputs (``keep_io_types``), so
  the I/O contract is unchanged. For GPU targets: ONNX Runtime's CPU provider lacks float16 kernels
  for LSTM, GRU and more, and runs them in float32 with Cast nodes it inserts (smaller file, no
  speed-up on a CPU; the manifest counts the casts).
- ``model.int8.onnx``: ONNX Runtime dynamic quantization (``quantize_dynamic``, int8 weights,
  activations quantized per call): LSTM becomes ``DynamicQuantizeLSTM``, MatMul/Gemm become
  ``MatMulInteger``. ONNX Runtime has no quantized GRU kernel, so a GRU stays float32 and only the
  products around it are quantized; the manifest lists both.
- ``model.ort``, ``model.fp16.ort``, ``model.int8.ort``: the ORT format (flatbuffers) of the ONNX
  variants, for mobile and minimal builds, with ``required_operators.config`` for a reduced build of
  ONNX Runtime.

Every variant is verified like the model itself, against the float32 and float64 references, with
its own tolerance (:data:`VARIANT_TOLERANCES`); one that fails is not shipped. Where it can run is
read off ONNX Runtime's own tools (:func:`provider_support`), not a hand-kept table.

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
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from rnnexport.errors import ArtifactError, ContractError, RnnExportError, UsageError
from rnnexport.feeds import Case, Feeds
from rnnexport.graph.contract import check_contract
from rnnexport.runtime import Device, probe_provider
from rnnexport.runtime.compare import Criterion, ProviderResult, Tolerance, verify_on_device
from rnnexport.runtime.oracle import seq_axes
from rnnexport.spec import Contract
from rnnexport.text import capped

__all__ = [
    "FORMATS",
    "ORT_IDENTIFIER",
    "PRECISIONS",
    "REQUIRED_OPERATORS",
    "SUPPORT_PROVIDERS",
    "VARIANT_TOLERANCES",
    "Format",
    "ModelFacts",
    "Precision",
    "ReduceRange",
    "ShippedVariant",
    "Variant",
    "VariantResult",
    "check_session_contract",
    "choose_reduce_range",
    "file_problems",
    "make_variants",
    "parse_choices",
    "provider_support",
    "required_operators_config",
    "shipped_variants",
    "to_float16",
    "to_int8",
    "to_ort_format",
    "variant_file",
    "variant_problem",
    "variant_tolerances",
    "verify_shipped_variants",
    "verify_variant",
]

Precision = Literal["fp32", "fp16", "int8"]
Format = Literal["onnx", "ort"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
FORMATS: tuple[Format, ...] = ("onnx", "ort")
REQUIRED_OPERATORS = "required_operators.config"

# What each precision is held to, against float64 (the oracle rule's floor; PyTorch float32's own
# error is negligible beside these). float16 keeps 11 significant bits (unit roundoff 4.9e-4), and a
# recurrence compounds it over the steps; int8 keeps about 2.5 significant digits per product. The
# built-in architectures use 2-6% (fp16) and 4-13% (int8) of these gates at up to 1000 steps, while a
# broken conversion gives errors of the order of the outputs themselves.
# None: the build's own tolerance (float32 is held to what the float32 model is held to).
VARIANT_TOLERANCES: dict[Precision, Tolerance | None] = {
    "fp32": None,
    "fp16": Tolerance(atol=5e-3, rtol=1e-2),
    "int8": Tolerance(atol=5e-2, rtol=5e-2),
}

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
    graph = result.graph
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
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
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as it was, the checks report it
            ordered += pending
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
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


# -- contracts of sessions -------------------------------------------------------------------------

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "float64": "tensor(double)"}


def check_session_contract(session: Any, contract: Contract, *, where: str) -> None:
    """Raise :class:`ContractError` unless a session's inputs and outputs carry the contract's names,
    dtypes and shapes (dynamic axes as symbols). For ORT-format files, which onnx cannot read."""
    problems = []
    for kind, declared, actual in (
        ("input", contract.inputs, session.get_inputs()),
        ("output", contract.outputs, session.get_outputs()),
    ):
        if [t.name for t in declared] != [a.name for a in actual]:
            problems.append(
                f"{kind}s [{capped((repr(a.name) for a in actual), sep=', ')}], expected "
                f"[{capped((repr(t.name) for t in declared), sep=', ')}]"
            )
            continue
        for t, a in zip(declared, actual, strict=True):
            if a.type != _ORT_TYPES.get(t.dtype):
                problems.append(f"{kind} '{t.name}' has type {a.type}, expected {t.dtype}")
            if list(a.shape) != list(t.shape):
                problems.append(f"{kind} '{t.name}' has shape {list(a.shape)}, expected {list(t.shape)}")
    if problems:
        raise ContractError(
            f"{where} does not keep the I/O contract: {capped(problems)}. A variant must take and return "
            "what model.onnx does; rebuild the artifact."
        )


# -- what a file is --------------------------------------------------------------------------------

# The flatbuffer file identifier of the ORT format, at bytes 4..8 of every ORT-format file. ONNX
# Runtime picks the format by it (a full build loads either kind from any file name); mobile and
# minimal builds load only files that carry it.
ORT_IDENTIFIER = b"ORTM"

# Operators that compute on 8-bit integers: ONNX's, and the com.microsoft ones ONNX Runtime's
# quantizer and its ORT-format optimisations produce (QLinear* are matched by prefix).
_QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
        "QAttention",
    }
)
_INT8_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
# Nested subgraphs read at most this deep (ONNX Runtime's flatbuffer verifier stops at 64 tables).
_MAX_DEPTH = 32


@dataclass(frozen=True)
class ModelFacts:
    """What a model file computes with, read off its graph (an ONNX model or an ORT-format file)."""

    operators: Counter[str]
    float16: bool  # a float16 weight, constant or value, or a Cast to float16
    int8_weights: bool  # an 8-bit integer weight or constant
    external: tuple[str, ...] = ()  # ORT-format tensors that refer to data outside the file

    @property
    def quantized(self) -> list[str]:
        """The operators among :attr:`operators` that compute on 8-bit integers."""
        return sorted(op for op in self.operators if op in _QUANTIZED_OPS or op.startswith("QLinear"))

    @classmethod
    def of_onnx(cls, model: onnx.ModelProto) -> ModelFacts:
        """The facts of an ONNX model: every graph, subgraphs and functions included."""
        ops: Counter[str] = Counter()
        types: set[int] = set()

        def visit(nodes: Iterable[onnx.NodeProto], tensors: Iterable[onnx.TensorProto], depth: int) -> None:
            types.update(t.data_type for t in tensors)
            for node in nodes:
                ops[node.op_type] += 1
                for attr in node.attribute:
                    if node.op_type == "Cast" and attr.name == "to":
                        types.add(attr.i)
                    types.update(
                        t.data_type for t in (*attr.tensors, *([attr.t] if attr.HasField("t") else []))
                    )
                    if depth < _MAX_DEPTH:
                        for graph in (*attr.graphs, *([attr.g] if attr.HasField("g") else [])):
                            visit(graph.node, graph.initializer, depth + 1)

        visit(model.graph.node, model.graph.initializer, 0)
        for function in model.functions:
            visit(function.node, (), 0)
        values = (*model.graph.input, *model.graph.output, *model.graph.value_info)
        types.update(v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type"))
        return cls(ops, onnx.TensorProto.FLOAT16 in types, bool(types & set(_INT8_TYPES)))

    @classmethod
    def of_ort(cls, data: bytes) -> ModelFacts:
        """The facts of an ORT-format file, read with ONNX Runtime's own flatbuffer schema.

        Read before anything loads ``data``: a malformed buffer raises (the caller reports it), and
        the walk is bounded in depth and in the elements it reads, so no buffer makes it run long.
        """
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import (
            InferenceSession,
        )
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorTypeAndShape import (
            TensorTypeAndShape,
        )
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TypeInfoValue import TypeInfoValue

        ops: Counter[str] = Counter()
        types: set[int] = set()
        external: list[str] = []
        # Every element of a vector takes at least 4 bytes of the file, so a walk that reads more
        # elements than that is going round shared subgraphs (or lengths the file cannot hold): stop.
        budget = [len(data) // 4 + 64]

        def elements(count: int) -> range:
            budget[0] -= count
            if budget[0] < 0:
                raise ValueError("its graphs refer to more elements than the file can hold")
            return range(count)

        def tensor(t: Any) -> None:
            types.add(t.DataType())
            if t.ExternalDataOffset() >= 0:
                external.append((t.Name() or b"").decode("utf-8", "replace"))

        def visit(graph: Any, depth: int) -> None:
            for i in elements(graph.InitializersLength()):
                tensor(graph.Initializers(i))
            for i in elements(graph.SparseInitializersLength()):
                tensor(graph.SparseInitializers(i).Values())
            for i in elements(graph.NodeArgsLength()):
                kind = graph.NodeArgs(i).Type()
                if kind is not None and kind.ValueType() == TypeInfoValue.tensor_type:
                    shaped = TensorTypeAndShape()
                    table = kind.Value()
                    shaped.Init(table.Bytes, table.Pos)
                    types.add(shaped.ElemType())
            for i in elements(graph.NodesLength()):
                node = graph.Nodes(i)
                ops[(node.OpType() or b"").decode("utf-8", "replace")] += 1
                for a in elements(node.AttributesLength()):
                    attr = node.Attributes(a)
                    if node.OpType() == b"Cast" and attr.Name() == b"to":
                        types.add(attr.I())
                    for t in [attr.T(), *(attr.Tensors(j) for j in elements(attr.TensorsLength()))]:
                        if t is not None:
                            tensor(t)
                    if depth < _MAX_DEPTH:
                        for g in [attr.G(), *(attr.Graphs(j) for j in elements(attr.GraphsLength()))]:
                            if g is not None:
                                visit(g, depth + 1)

        session = InferenceSession.GetRootAs(data, 0)
        model = session.Model()
        graph = None if model is None else model.Graph()
        if graph is not None:
            visit(graph, 0)
        return cls(ops, onnx.TensorProto.FLOAT16 in types, bool(types & set(_INT8_TYPES)), tuple(external))


def _precision_problem(file: str, precision: Precision, facts: ModelFacts) -> str | None:
    """Why ``facts`` are not what a ``precision`` variant computes with, or None.

    int8: operators that compute on 8-bit integers, and 8-bit weights for them; float16: float16
    weights or compute, and no quantized operator; float32: no quantized operator. Accuracy alone
    cannot tell: the float32 model passes the looser gates of int8 and float16.
    """
    quantized = facts.quantized
    if precision == "int8" and not (quantized and facts.int8_weights):
        what = "no operator that computes on 8-bit integers" if not quantized else "no 8-bit integer weights"
        return (
            f"{file} claims int8 but has {what} (an int8 variant holds DynamicQuantizeLSTM, MatMulInteger, "
            "DynamicQuantizeLinear, QLinear* or similar, with int8 weights): it is not a quantized model"
        )
    if precision == "fp16" and (quantized or not facts.float16):
        what = f"quantized operators ({', '.join(quantized)})" if quantized else "no float16 tensor at all"
        return f"{file} claims fp16 but has {what}: it is not a float16 model"
    if precision == "fp32" and quantized:
        return f"{file} claims fp32 but has quantized operators ({', '.join(quantized)})"
    return None


def file_problems(file: str, fmt: Format, data: bytes) -> list[str]:
    """Why ``data`` is not a file of format ``fmt`` that stands alone, before anything loads it.

    The format is the file's own identifier, not its name: ``.ort`` must carry the ORT-format
    identifier at bytes 4..8 (mobile and minimal builds of ONNX Runtime load nothing else), and
    ``.onnx`` must not (ONNX Runtime would load it as the ORT format).
    """
    tagged = data[4:8] == ORT_IDENTIFIER
    if fmt == "ort" and not tagged:
        return [
            f"{file} is not an ORT-format file: bytes 4..8 are {data[4:8]!r}, where an ORT-format file "
            f"carries the identifier {ORT_IDENTIFIER.decode()!r} (an ONNX model under an .ort name loads in "
            "a full ONNX Runtime, but not in the mobile and minimal builds the ORT format is for)"
        ]
    if fmt == "onnx" and tagged:
        return [
            f"{file} is an ORT-format file (identifier {ORT_IDENTIFIER.decode()!r} at bytes 4..8), not an "
            "ONNX model"
        ]
    return []


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


# -- verifying them --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantResult:
    """One variant verified on every requested device, with its gate's verdict."""

    file: str
    precision: Precision
    format: Format
    bytes: int
    tolerances: dict[Device, Tolerance]
    results: dict[Device, ProviderResult]
    criterion: Criterion
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    support: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """The quality gate: the contract held and every requested device passed."""
        return (
            not self.reason
            and bool(self.results)
            and all(r.status == "passed" for r in self.results.values())
        )

    @property
    def status(self) -> str:
        """``passed`` or ``failed``."""
        return "passed" if self.passed else "failed"

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``variants`` entry: what a runtime needs to pick one, and the evidence."""
        first = next(iter(self.results.values()), None)
        errors: dict[str, Any] = {}
        if first is not None and first.status in ("passed", "failed"):
            errors = {"provider": first.provider, "err_allowed": first.max_ratio, **first.errors}
        data: dict[str, Any] = {
            "file": self.file,
            "precision": self.precision,
            "format": self.format,
            "status": self.status,
            "shipped": self.passed,
            "tolerance": {
                "rule": self.criterion.rule,
                **({"factor": self.criterion.factor} if self.criterion.rule == "oracle" else {}),
                **{d: t.to_json() for d, t in self.tolerances.items()},
            },
            "errors": errors,
            "bytes": self.bytes,
        }
        if self.reason:
            data["reason"] = self.reason
        data["verification"] = {
            r.provider: {
                k: v
                for k, v in r.to_json().items()
                if k
                in ("status", "reason", "max_error_ratio", "max_abs_error", "failures", "cases", "per_case")
            }
            for r in self.results.values()
        }
        data["details"] = self.details
        if self.support:
            data["runs_on"] = self.support
        return data


def variant_problem(file: str, precision: Precision, fmt: Format, data: bytes, *, contract: Contract) -> str:
    """Why a variant file is not what its manifest entry says, or ``""``: checked before anything runs.

    Its format by the file's identifier, no external data anywhere in it, its I/O contract, and its
    precision as a fact of its graph (:class:`ModelFacts`). ``verify`` and ``bench`` both run it
    first (an ``.ort`` file's contract check opens a session: callers bound it as they bound a run).
    """
    import onnxruntime as ort

    # The one rule verify applies to every model file's external data (artifact imports this module).
    from rnnexport.artifact import _external_data_problems

    try:
        problems = file_problems(file, fmt, data)
        if problems:
            raise ArtifactError(capped(problems))
        if fmt == "onnx":
            model = onnx.load_from_string(data)
            # No data file: every external reference, anywhere in the model, is refused unread. ONNX
            # Runtime would resolve it against the current folder of whoever loads the variant.
            external, _ = _external_data_problems(model, data_size=None)
            if external:
                raise ArtifactError(
                    f"{file} refers to data outside itself: {capped(external)}; a variant is one "
                    "self-contained file"
                )
            check_contract(model, contract, stage=f"in {file}")
            facts = ModelFacts.of_onnx(model)
        else:
            facts = ModelFacts.of_ort(data)
            if facts.external:
                raise ArtifactError(
                    f"{file} refers to external data for the tensors "
                    f"[{capped(map(repr, facts.external), sep=', ')}]; a variant is one self-contained file"
                )
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
            check_session_contract(session, contract, where=file)
        problem = _precision_problem(file, precision, facts)
        if problem:
            raise ArtifactError(problem)
    except RnnExportError as exc:
        return str(exc)
    except Exception as exc:  # protobuf / ORT refusing the bytes: the file is not a model
        return f"{file} cannot be read as an {fmt.upper()} model: {exc}"
    return ""


def verify_variant(
    file: str,
    precision: Precision,
    fmt: Format,
    data: bytes,
    cases: Sequence[Case],
    float64: Mapping[str, Feeds],
    *,
    contract: Contract,
    devices: Sequence[Device],
    tolerances: Mapping[Device, Tolerance],
    criterion: Criterion,
    tf32: bool = False,
    details: Mapping[str, Any] | None = None,
    support: Mapping[str, dict[str, Any]] | None = None,
    on_case: Callable[[int], None] | None = None,
    run: Callable[..., ProviderResult] = verify_on_device,
) -> VariantResult:
    """Check what a variant file is, then verify it on every device against both references.

    Before anything runs: :func:`variant_problem`. Never raises for a
    verification outcome: any of these failing gives a failed result with the reason. Used at build
    time (the gate) and by ``rnnexport verify`` on the target, which passes a ``run`` with a time
    bound (:func:`rnnexport.runtime.worker.verify_with_deadline`).
    """
    chosen = {d: tolerances[d] for d in devices}
    reason = variant_problem(file, precision, fmt, data, contract=contract)
    results: dict[Device, ProviderResult] = {}
    if not reason:
        axes = seq_axes(contract)
        progress = {} if on_case is None else {"on_case": on_case}
        for d in devices:
            results[d] = run(
                data,
                cases,
                device=d,
                tol=chosen[d],
                tf32=tf32 and d == "cuda",
                criterion=criterion,
                float64=float64,
                seq_axes=axes,
                **progress,
            )
    return VariantResult(
        file,
        precision,
        fmt,
        len(data),
        chosen,
        results,
        criterion,
        reason=reason,
        details=dict(details or {}),
        support=dict(support or {}),
    )


def variant_tolerances(precision: Precision, own: Mapping[Device, Tolerance]) -> dict[Device, Tolerance]:
    """What a variant of ``precision`` is held to on each device (``own``: the float32 model's)."""
    fixed = VARIANT_TOLERANCES[precision]
    return {d: fixed or t for d, t in own.items()}


def _entry_tolerance(entry: Mapping[str, Any], device: Device, fallback: Tolerance) -> Tolerance:
    """The tolerance a manifest records for a variant, never looser than what a build gives it.

    The manifest is not signed: a recorded tolerance above the build's (``fallback``) would let any
    variant pass, so it is refused like a float32 tolerance out of bounds.
    """
    recorded = entry.get("tolerance", {}).get(device)
    if recorded is None:
        return fallback
    atol, rtol = recorded.get("atol"), recorded.get("rtol")
    if not all(isinstance(v, float) and 0 <= v < 1 for v in (atol, rtol)):
        raise TypeError(f"the tolerance of {entry.get('file')!r} must hold numbers in [0, 1)")
    if atol > fallback.atol or rtol > fallback.rtol:
        raise ValueError(
            f"the tolerance of {entry.get('file')!r} (atol {atol:g}, rtol {rtol:g}) is looser than a build "
            f"gives that variant (atol {fallback.atol:g}, rtol {fallback.rtol:g})"
        )
    return Tolerance(atol=atol, rtol=rtol)


@dataclass(frozen=True)
class ShippedVariant:
    """A manifest's entry for a variant that ships, checked: the file and what it is held to."""

    file: str
    precision: Precision
    format: Format
    tolerances: dict[Device, Tolerance]


def shipped_variants(
    folder: Path,
    entries: Sequence[Mapping[str, Any]],
    listed: Collection[str],
    *,
    devices: Sequence[Device] = (),
    own: Mapping[Device, Tolerance] | None = None,
) -> list[ShippedVariant]:
    """The variants a manifest ships other than ``model.onnx``, each with its tolerance per device.

    ``listed`` are the files the manifest lists; ``own`` the float32 model's tolerance per device.
    Raises :class:`ArtifactError` for an entry that is malformed, names a file the manifest does not
    list, or is not shipped yet listed. Reads no file: ``verify`` calls it before running anything.
    """
    shipped: list[ShippedVariant] = []
    for entry in entries:
        try:
            if not isinstance(entry, Mapping):
                raise TypeError("each variant entry must be an object")
            name, precision, fmt = entry["file"], entry["precision"], entry["format"]
            if not (isinstance(name, str) and precision in PRECISIONS and fmt in FORMATS):
                raise ValueError(
                    f"variant entry {entry.get('file')!r} has no valid file, precision or format"
                )
            if name == variant_file("fp32", "onnx"):
                continue
            if entry.get("shipped") is not True:
                # A file the build did not ship must not be there: nothing would verify it.
                if name in listed:
                    raise ValueError(f"variant {name!r} is marked as not shipped, yet the artifact lists it")
                continue
            if name != variant_file(precision, fmt) or name not in listed:
                raise ValueError(f"variant {name!r} is not one of the artifact's listed model files")
            tolerances = {
                d: _entry_tolerance(entry, d, VARIANT_TOLERANCES[precision] or (own or {})[d])
                for d in devices
            }
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"The manifest in {folder} has a malformed 'variants' entry ({type(exc).__name__}: "
                f"{capped([str(exc)])}). Rebuild the artifact."
            ) from exc
        shipped.append(ShippedVariant(name, precision, fmt, tolerances))
    return shipped


def verify_shipped_variants(
    folder: Path,
    entries: Sequence[Mapping[str, Any]],
    contents: Mapping[str, bytes],
    cases: Sequence[Case],
    float64: Mapping[str, Feeds],
    *,
    run: Callable[..., ProviderResult],
    contract: Contract,
    devices: Sequence[Device],
    own: Mapping[Device, Tolerance],
    criterion: Criterion,
    tf32: bool = False,
) -> dict[str, VariantResult]:
    """``rnnexport verify`` for every shipped variant other than ``model.onnx`` (see
    :func:`shipped_variants`): what the file is, its contract and outputs, each with the tolerance
    its manifest entry records (``own``: the float32 model's per device).

    ``contents`` are the listed files' bytes, read once and already checked against their hashes;
    ``run`` verifies one model on one device (with a time bound, on the target).
    """
    return {
        v.file: verify_variant(
            v.file,
            v.precision,
            v.format,
            contents[v.file],
            cases,
            float64,
            contract=contract,
            devices=devices,
            tolerances=v.tolerances,
            criterion=criterion,
            tf32=tf32,
            run=run,
        )
        for v in shipped_variants(folder, entries, contents, devices=devices, own=own)
    }
