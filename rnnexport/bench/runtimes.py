"""The runtimes timed against the artifact: its shipped variants, PyTorch eager, and the plain export."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rnnexport.artifact import Manifest
from rnnexport.bench.facts import _graph_facts
from rnnexport.bench.job import _Job
from rnnexport.bench.sessions import _ort_call, _session
from rnnexport.errors import RnnExportError
from rnnexport.feeds import Case, Feeds, make_feeds
from rnnexport.runtime import PROVIDERS, Device
from rnnexport.runtime.compare import compare_outputs
from rnnexport.spec import Contract
from rnnexport.variants import shipped_variants, variant_problem

ONNXRUNTIME, EAGER, PLAIN = "onnxruntime", "pytorch-eager", "plain-export"
RUNTIMES = (ONNXRUNTIME, EAGER, PLAIN)


class _Unavailable(Exception):
    """A runtime that cannot be measured here; the message says why (it goes into the report)."""


@dataclass
class _Runtime:
    """One way of running the model: how to make a timed call for given feeds."""

    name: str
    prepare: Callable[[Feeds], Callable[[], object]]
    sync: Callable[[], None] = lambda: None
    detail: dict[str, Any] = field(default_factory=dict)


def _variant_runtimes(job: _Job) -> list[tuple[_Runtime, dict[str, Any]]]:
    """A runtime per shipped variant other than ``model.onnx`` whose build verified it, from the bytes
    that were hashed; a variant file that is not what its entry says is reported, never loaded."""
    found = []
    passed = {e.get("file") for e in job.manifest.variants if e.get("status") == "passed"}
    for variant in shipped_variants(job.folder, job.manifest.variants, job.manifest.files):
        if variant.file not in passed:
            continue
        name, data = f"{ONNXRUNTIME}:{variant.file}", job.variants[variant.file]
        detail = {"precision": variant.precision, "format": variant.format, "bytes": len(data)}
        problem = variant_problem(
            variant.file, variant.precision, variant.format, data, contract=job.manifest.contract
        )
        if problem:
            found.append((_Runtime(name, _no_call), {"available": False, "reason": problem, **detail}))
            continue
        session = _session(data, job.device, ort_format=variant.format == "ort")
        runtime = _Runtime(name, functools.partial(_ort_call, session), detail=detail)
        found.append((runtime, {"available": True, "provider": PROVIDERS[job.device], **detail}))
    return found


def _no_call(feeds: Feeds) -> Callable[[], object]:
    raise AssertionError("an unavailable runtime is never timed")


def _eager_runtime(model: Any, contract: Contract, device: Device, threads: int | None) -> _Runtime:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = torch.device(device)

    def prepare(feeds: Feeds) -> Callable[[], object]:
        args = [torch.from_numpy(feeds[n]).to(torch_device) for n in contract.input_names]

        def call() -> object:
            with torch.inference_mode():
                return model(*args)

        return call

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return _Runtime(EAGER, prepare, sync, {"torch": torch.__version__, "threads": torch.get_num_threads()})


def plain_export(model: Any, contract: Contract, *, opset: int) -> bytes:
    """``model`` exported as it stands: TorchScript ``torch.onnx.export`` with the contract's dynamic
    axes, then onnxsim. No rnnexport rewrite, no verification beyond the contract check; the caller
    compares its outputs before trusting it."""
    import torch

    from rnnexport.graph.contract import check_contract
    from rnnexport.graph.simplify import native_stderr_discarded, simplify_onnx

    example = make_feeds(contract, batch=2, seq=3, rng=np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[n]) for n in contract.input_names)
    dynamic_axes = {t.name: t.dynamic_axes for t in contract.inputs + contract.outputs if t.dynamic_axes}
    buffer = io.BytesIO()
    # The exporter's deprecation and batch-size warnings are noise here, as in rnnexport build.
    # No export patches: the modules trace as they run in eager PyTorch (rnnexport's rewrites are
    # applied from outside the model, by rnnexport.builder.patch, during its own export only).
    # torch's C++ shape inference warns about packed sequences straight to the terminal.
    with (
        native_stderr_discarded(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.cpu(),
            args,
            buffer,  # type: ignore[arg-type]  # file objects work; the stub admits paths only
            dynamo=False,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            input_names=contract.input_names,
            output_names=contract.output_names,
        )
    exported = onnx.load_from_string(buffer.getvalue())
    simplified, _ = simplify_onnx(exported, check_feeds=example)
    check_contract(simplified, contract, stage="plain export")
    return bytes(simplified.SerializeToString())


def _plain_runtime(
    model: Any, manifest: Manifest, device: Device, cases: Sequence[Case]
) -> tuple[_Runtime, bytes]:
    """The plain export as a runtime, refused (as unavailable) unless it matches the artifact's test data."""
    opset = int(manifest.export.get("opset", 17))
    try:
        data = plain_export(model, manifest.contract, opset=opset)
    except RnnExportError as exc:
        raise _Unavailable(f"the plain export could not be built: {exc}") from None
    except Exception as exc:  # the exporter raises many types; all mean "no baseline"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _Unavailable(
            f"torch.onnx could not export the model plainly: {type(exc).__name__}: {first}"
        ) from None
    finally:
        model.to(device)
    try:
        session = _session(data, device)
    except RnnExportError as exc:
        raise _Unavailable(str(exc)) from None
    names = [o.name for o in session.get_outputs()]
    tolerance = manifest.tolerance("cpu")
    for case in cases:
        got = dict(zip(names, session.run(names, case.inputs), strict=True))
        if not all(c.passed for c in compare_outputs(got, case.outputs, tolerance)):
            raise _Unavailable(
                "the plain export computes something else than the model at the artifact's test shapes "
                "(it has no dynamic-shape support for this model), so it is no baseline"
            )
    graph = onnx.load_from_string(data).graph
    detail = {"opset": opset, "nodes": len(graph.node), "bytes": len(data), **_graph_facts(graph)}
    return _Runtime(PLAIN, lambda feeds: _ort_call(session, feeds), detail=detail), data
