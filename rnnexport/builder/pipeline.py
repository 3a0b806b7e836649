"""``build``: model -> export -> simplify -> verify -> variants -> package.

Read top to bottom; each stage is a plain function from its own module (:mod:`.request` checks the
request, :mod:`.stages` and :mod:`.exporting` run the stages). Nothing reaches the destination
unless every requested provider verified: the artifact is assembled in a temporary folder beside
it and moved into place as the very last step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rnnexport.artifact import Manifest, staging_folder
from rnnexport.builder.export import DEFAULT_OPSET
from rnnexport.builder.exporting import export_and_simplify
from rnnexport.builder.options import SWEEP_BATCHES, SWEEP_SEQS, SWEEP_SHAPES, BuildOptions
from rnnexport.builder.plan import TF32_TOLERANCE
from rnnexport.builder.request import (
    Request,
    ResourceEstimate,
    estimate_resources,
    read_config_file,
    resolve_arch,
    resolve_config,
    resolve_module,
)
from rnnexport.builder.stages import (
    check_other_runtimes,
    make_variants,
    package,
    prepare_model,
    verify_providers,
)
from rnnexport.builder.usermodel import ModelSource, declared_outputs
from rnnexport.progress import Progress, SilentProgress

__all__ = [
    "SWEEP_BATCHES",
    "SWEEP_SEQS",
    "SWEEP_SHAPES",
    "TF32_TOLERANCE",
    "BuildOptions",
    "ResourceEstimate",
    "build",
    "build_model_artifact",
    "estimate_resources",
    "read_config_file",
    "resolve_config",
]

# BuildOptions is torch-free, so it cannot import the exporter's default opset: they must agree.
assert BuildOptions.opset == DEFAULT_OPSET


def _options(options: BuildOptions | None, keywords: Mapping[str, Any]) -> BuildOptions:
    """The options given whole, or as the keyword arguments of the earlier API (not both)."""
    if options is None:
        return BuildOptions(**keywords)
    if keywords:
        raise TypeError(
            f"pass the options either as a BuildOptions or as keywords, not both: {sorted(keywords)}"
        )
    return options


def build(
    arch: str, options: BuildOptions | None = None, *, progress: Progress | None = None, **keywords: Any
) -> Manifest:
    """Export, simplify, verify and package ``arch`` into ``out/arch``; return the manifest.

    ``options`` (a :class:`BuildOptions`) says how; its fields may be given as keyword arguments
    instead (``build("attention", out="dist", weights="w.safetensors")``).

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
    return _run(resolve_arch(arch, _options(options, keywords)), progress)


def build_model_artifact(
    module: torch.nn.Module,
    io: Mapping[str, Any] | str | Path,
    options: BuildOptions | None = None,
    *,
    name: str | None = None,
    source: ModelSource | None = None,
    progress: Progress | None = None,
    **keywords: Any,
) -> Manifest:
    """Export, simplify, verify and package any recurrent ``module`` into ``out/name``.

    ``options`` (a :class:`BuildOptions`, or its fields as keyword arguments) as for :func:`build`.

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
    request, module = resolve_module(module, io, _options(options, keywords), name=name, source=source)
    contract, form = request.subject.contract, request.subject.outputs
    # Every call of the module returns exactly the declared outputs while the build runs.
    with declared_outputs(module, contract, what=type(module).__name__, form=form):
        return _run(request, progress)


def _run(request: Request, progress: Progress | None) -> Manifest:
    """The stages, top to bottom, for any subject: model -> export -> simplify -> verify -> variants
    -> package."""
    progress = progress or SilentProgress()
    with staging_folder(request.destination) as staging:
        prepared = prepare_model(request, progress)
        exported = export_and_simplify(
            request,
            prepared.model,
            prepared.contract,
            check_feeds=prepared.plan.cases[-1].inputs,
            stream_contract=prepared.stream_contract,
            staging=staging,
            progress=progress,
        )
        results = verify_providers(request, prepared.plan, exported, progress)
        runtimes = check_other_runtimes(request, prepared.plan, exported, progress)
        variants = make_variants(request, prepared, exported, results, staging=staging, progress=progress)
        return package(
            request, prepared, exported, (results, runtimes, variants), staging=staging, progress=progress
        )
