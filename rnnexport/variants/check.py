"""Checking a variant: what its file is (format, external data, contract, precision as a fact of its
graph), then its outputs against both references at its precision's tolerance; and the variants a
manifest ships, as ``verify`` checks them. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rnnexport.artifact.external import external_data_problems
from rnnexport.errors import ArtifactError, ContractError, RnnExportError
from rnnexport.graph.contract import check_contract
from rnnexport.runtime import Device
from rnnexport.runtime.compare import Criterion, ProviderResult, Tolerance, verify_on_device
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import Contract
from rnnexport.text import capped
from rnnexport.variants.make import FORMATS, PRECISIONS, Format, Precision, variant_file

__all__ = [
    "ORT_IDENTIFIER",
    "VARIANT_TOLERANCES",
    "ModelFacts",
    "ShippedVariant",
    "VariantResult",
    "check_session_contract",
    "file_problems",
    "shipped_variants",
    "variant_problem",
    "variant_tolerances",
    "verify_shipped_variants",
    "verify_variant",
]

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

    try:
        problems = file_problems(file, fmt, data)
        if problems:
            raise ArtifactError(capped(problems))
        if fmt == "onnx":
            model = onnx.load_from_string(data)
            # No data file: every external reference, anywhere in the model, is refused unread. ONNX
            # Runtime would resolve it against the current folder of whoever loads the variant.
            external, _ = external_data_problems(model, data_size=None)
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
    plan: VerificationPlan,
    *,
    contract: Contract,
    devices: Sequence[Device],
    details: Mapping[str, Any] | None = None,
    support: Mapping[str, dict[str, Any]] | None = None,
    on_case: Callable[[int], None] | None = None,
    run: Callable[..., ProviderResult] = verify_on_device,
) -> VariantResult:
    """Check what a variant file is, then verify it on every device against both references.

    ``plan`` already holds this precision's tolerances (:func:`variant_tolerances`, or what the
    manifest records). Before anything runs: :func:`variant_problem`. Never raises for a
    verification outcome: any of these failing gives a failed result with the reason. Used at build
    time (the gate) and by ``rnnexport verify`` on the target, which passes a ``run`` with a time
    bound (:func:`rnnexport.runtime.worker.verify_with_deadline`).
    """
    chosen = {d: plan.tolerance(d) for d in devices}
    reason = variant_problem(file, precision, fmt, data, contract=contract)
    results: dict[Device, ProviderResult] = {}
    if not reason:
        # A variant's cases run each from its recorded inputs: streams are replayed call by call on
        # model.onnx alone.
        each = dataclasses.replace(plan, chains=(), state_pairs={})
        progress = {} if on_case is None else {"on_case": on_case}
        for d in devices:
            results[d] = run(data, each, device=d, **progress)
    return VariantResult(
        file,
        precision,
        fmt,
        len(data),
        chosen,
        results,
        plan.criterion,
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
    plan: VerificationPlan,
    *,
    run: Callable[..., ProviderResult],
    contract: Contract,
    devices: Sequence[Device],
) -> dict[str, VariantResult]:
    """``rnnexport verify`` for every shipped variant other than ``model.onnx`` (see
    :func:`shipped_variants`): what the file is, its contract and outputs, by ``plan`` (the float32
    model's) at the tolerance each variant's manifest entry records.

    ``contents`` are the listed files' bytes, read once and already checked against their hashes;
    ``run`` verifies one model on one device (with a time bound, on the target).
    """
    own = {d: plan.tolerance(d) for d in devices}
    return {
        v.file: verify_variant(
            v.file,
            v.precision,
            v.format,
            contents[v.file],
            plan.with_tolerances(v.tolerances),
            contract=contract,
            devices=devices,
            run=run,
        )
        for v in shipped_variants(folder, entries, contents, devices=devices, own=own)
    }
