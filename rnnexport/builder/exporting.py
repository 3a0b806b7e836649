"""The export and simplify stages: the PyTorch model becomes the checked ``model.onnx`` that ships.

Under ``--exporter auto`` a second exporter runs where the first fails to export or its graph fails
the contract checks; the graph is simplified, checked again, stamped with its metadata, and (past
the inline limit) written with its weights as ONNX external data.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from rnnexport._version import __version__
from rnnexport.artifact import EXTERNAL_DATA, MODEL, write_external_model
from rnnexport.builder.export import TRACE_BATCH, TRACE_SEQ, Exporter, export_onnx, exporter_order
from rnnexport.builder.references import user_code
from rnnexport.builder.request import Request, Subject, stores_externally
from rnnexport.builder.timing import timed_stage
from rnnexport.errors import ContractError, ExportError
from rnnexport.feeds import Feeds
from rnnexport.graph.contract import check_contract
from rnnexport.graph.simplify import SimplifyStats, simplify_onnx
from rnnexport.limits import format_bytes
from rnnexport.progress import Progress
from rnnexport.runtime import Device
from rnnexport.runtime.compare import ProviderResult
from rnnexport.safeio import write_file, writing
from rnnexport.spec import Contract
from rnnexport.streaming import Streaming
from rnnexport.text import first_line

__all__ = ["Exported", "export_and_simplify", "frozen_shape_hint"]


@dataclass(frozen=True)
class Exported:
    """The simplified graph that ships, staged, and the records of how it was made."""

    model: onnx.ModelProto
    data: bytes  # model.onnx as shipped (with external data: the file that refers to it)
    source: bytes | Path  # what ONNX Runtime loads: the bytes, or the staged file beside its data
    record: dict[str, Any]  # the manifest's export record: which exporter, tried first, why
    stats: SimplifyStats
    layout: dict[str, Any] | None  # the external data layout; None for a single file

    @property
    def exporter(self) -> Exporter:
        """The exporter that made the graph."""
        exporter: Exporter = self.record["exporter"]
        return exporter


def export_and_simplify(
    request: Request,
    model: torch.nn.Module,
    contract: Contract,
    *,
    check_feeds: Feeds,
    stream_contract: Streaming | None,
    staging: Path,
    progress: Progress,
) -> Exported:
    """Export ``model`` under ``contract``, check, simplify (onnxsim compares the two on
    ``check_feeds``), check again, and stage ``model.onnx`` (and its external data) in ``staging``."""
    subject = request.subject
    # A model for external data goes through files from the export on: none of its stages
    # may serialize it whole (protobuf stops at 2 GiB), and each file is private to the build.
    with _export_folder(request.external) as work:
        to = None if work is None else work / MODEL
        with timed_stage(progress, "export") as stage, user_code(subject, "while it was traced for export"):
            exported, record = _export_checked(model, contract, request, to=to)
            exporter: Exporter = record["exporter"]
            stage.details.append(
                f"{exporter}, opset {request.options.opset}, {len(exported.graph.node)} nodes"
            )
            if "fallback" in record:
                stage.details.append(record["fallback"]["summary"])
        with timed_stage(progress, "simplify") as stage:
            # A streaming call is mostly per-node overhead (see simplify_onnx).
            simplified, stats = simplify_onnx(
                exported, check_feeds=check_feeds, path=to, streaming=stream_contract is not None
            )
            del exported
            _finalise_model(simplified, subject, contract, stream_contract)
            layout = _write_external(request, simplified, staging)
            # The checker reads the staged files for external data (see check_contract).
            staged = staging / MODEL if layout is not None else None
            _check_traced(simplified, contract, exporter, stage="after simplification", path=staged)
            stage.details.append(stats.describe())
            stage.more += stats.tidy.lines() if stats.tidy is not None else []
            if layout is not None:
                stage.details.append(
                    f"{layout['tensors']} tensors ({format_bytes(layout['bytes'])}) written to "
                    f"{EXTERNAL_DATA}, beside {MODEL}"
                )
    if layout is None:
        data = simplified.SerializeToString()
        write_file(staging / MODEL, data, where=request.destination.parent)
    else:
        data = (staging / MODEL).read_bytes()
        layout["inline_limit_bytes"] = request.options.limits.inline_model_bytes
        if not layout["tensors"]:  # no tensor reached the size for external data: one file after all
            layout = None
    # With external data, ONNX Runtime resolves model.onnx.data beside the staged model.onnx:
    # verification runs the files that ship, and never a serialized copy of the whole model.
    source: bytes | Path = data if layout is None else staging / MODEL
    return Exported(simplified, data, source, record, stats, layout)


def _write_external(request: Request, simplified: onnx.ModelProto, staging: Path) -> dict[str, Any] | None:
    """Stage a model whose weights go to external data, and return its layout; else None."""
    limits = request.options.limits
    held = _tensor_bytes(simplified)
    if not (request.external or held >= limits.inline_model_bytes):
        return None
    # Tested again on what the graph holds: an export may hold more than the parameters (a
    # constant the trace folded in).
    options = request.options
    stores_externally(
        held, limits, options.precision_list, options.format_list, what=f"'{request.subject.name}'"
    )
    with writing(request.destination.parent):
        return write_external_model(simplified, staging)


def _finalise_model(
    model: onnx.ModelProto, subject: Subject, contract: Contract, streaming: Streaming | None
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
    model: torch.nn.Module, contract: Contract, request: Request, *, to: Path | None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Export with the exporter(s) ``request.exporter`` names (see :func:`exporter_order`) and check
    the graph; the manifest's record of which exporter made it, which was tried first and why.

    Under ``auto`` the second exporter runs only where the first fails to export or its graph fails
    the contract and graph checks; a graph that passes them is kept, and verified, whatever its
    numbers turn out to be (a wrong one fails the build, it is not swapped for the other exporter's).
    Where both fail, the error says why each did.
    """
    order, why = exporter_order(request.options.exporter)
    failed: list[tuple[Exporter, ExportError]] = []
    for exporter in order:
        if failed and to is not None:  # the first attempt's files go; the folder is the build's own
            for leftover in to.parent.iterdir():
                leftover.unlink()
        try:
            exported = export_onnx(model, contract, exporter=exporter, opset=request.options.opset, to=to)
            _check_traced(exported, contract, exporter, stage=f"after export ({exporter})", path=to)
        except ExportError as exc:  # ContractError included: the graph checks
            if len(order) == 1:
                raise
            failed.append((exporter, exc))
            continue
        record: dict[str, Any] = {
            "exporter": exporter,
            "requested": request.options.exporter,
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


def frozen_shape_hint(results: Mapping[Device, ProviderResult]) -> str:
    """Why a graph may fail only at other shapes: a trace that froze the sequence length."""
    text = " ".join(line for r in results.values() for line in r.failures)
    return _FROZEN_TRACE if "shape" in text or "error" in text.lower() else ""
