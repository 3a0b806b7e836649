"""The model with its weights beside it: writing ``model.onnx.data``, and the one rule for reading it.

A build writes every large tensor into the one file ``model.onnx.data``; ``verify`` (for ``model.onnx``)
and the variant checks (for every other model file) accept external-data references only where and as
rnnexport writes them, and never follow any other. Torch-free.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import onnx
from onnx import TensorProto

from rnnexport.artifact.manifest import EXTERNAL_DATA, MODEL
from rnnexport.graph.nodes import constants_to_initializers

__all__ = ["EXTERNAL_TENSOR_BYTES", "external_data_problems", "write_external_model"]

# Tensors smaller than this stay inline in model.onnx: shapes and scalars, not worth an indirection.
EXTERNAL_TENSOR_BYTES = 1024
# The keys of an external-data reference rnnexport writes (and the only ones verify accepts).
_EXTERNAL_KEYS = ("location", "offset", "length")


# -- the model with its weights beside it -----------------------------------------------------------


def write_external_model(model: onnx.ModelProto, folder: Path) -> dict[str, Any]:
    """Write ``model`` as ``model.onnx`` plus every tensor of at least :data:`EXTERNAL_TENSOR_BYTES`
    bytes in one file, ``model.onnx.data``, into ``folder`` (a staging folder: both must be new).

    ``model`` is changed in place: its tensors then refer to the data file instead of holding their
    values, which frees their memory. Returns the manifest's record of the layout (without the
    threshold, which the caller knows). Never serializes the model whole, so past 2 GiB works.

    The export keeps the recurrent weights in ``Constant`` nodes (the recurrent nodes' W, R and B),
    which onnxsim leaves as they are. A large one becomes a graph initializer of the same name
    first: ONNX Runtime reads external data for initializers, and ``verify`` accepts external data
    there alone, so that what it checks is exactly what rnnexport writes.
    """
    constants_to_initializers(model.graph, min_bytes=EXTERNAL_TENSOR_BYTES)
    for name in (MODEL, EXTERNAL_DATA):
        if os.path.lexists(folder / name):  # onnx appends to an existing data file; never let it
            raise FileExistsError(errno.EEXIST, "File exists", str(folder / name))
    onnx.save_model(
        model,
        str(folder / MODEL),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA,
        size_threshold=EXTERNAL_TENSOR_BYTES,
        convert_attribute=False,
    )
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    data = folder / EXTERNAL_DATA
    if data.exists():
        data.chmod(0o644)  # onnx creates it private; it ships like every other file
    return {
        "file": EXTERNAL_DATA,
        "bytes": data.stat().st_size if data.exists() else 0,
        "tensors": len(external),
        "tensor_threshold_bytes": EXTERNAL_TENSOR_BYTES,
    }


def _tensors_of_nodes(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    """Every tensor in the nodes' attributes, their subgraphs' (Loop, If, Scan bodies) included."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [
                *attr.sparse_tensors,
                *([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []),
            ]:
                yield sparse.values
                yield sparse.indices
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                yield from _tensors_of_graph(sub)


def _tensors_of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers (sparse ones too) and node attributes, recursively."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _tensors_of_nodes(graph.node)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _not_followed(tensor: onnx.TensorProto) -> str:
    """Today's refusal of an external reference, in words; the location is judged by its text alone
    (nothing is resolved, so no link on the way is followed and nothing outside is examined)."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
    pure = PurePosixPath(location.replace("\\", "/"))
    outside = pure.is_absolute() or ".." in pure.parts or location.startswith("\\")
    where = "outside the artifact folder" if outside else "a side file"
    return f"tensor '{tensor.name}' points at external data '{location}' ({where}); it was not read"


_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")


def _reference_problem(tensor: onnx.TensorProto, data_size: int) -> str | None:
    """Why ``tensor``'s reference into ``model.onnx.data`` (``data_size`` bytes) is not one rnnexport
    writes, or None: exactly the keys location, offset and length, the location that very file, and
    the region the tensor's dims and type call for, inside the file."""
    keys = [e.key for e in tensor.external_data]
    if sorted(keys) != sorted(_EXTERNAL_KEYS) or tensor.data_location != TensorProto.EXTERNAL:
        odd = sorted(set(keys) - set(_EXTERNAL_KEYS)) or sorted(set(_EXTERNAL_KEYS) - set(keys)) or keys
        return (
            f"tensor '{tensor.name}' refers to external data with the keys {keys} (refused: rnnexport "
            f"writes exactly {list(_EXTERNAL_KEYS)}, each once; {odd} is not that); it was not read"
        )
    entry = {e.key: e.value for e in tensor.external_data}
    if entry["location"] != EXTERNAL_DATA:
        return f"{_not_followed(tensor)}; the only external data an artifact may hold is '{EXTERNAL_DATA}'"
    if not (_DIGITS.fullmatch(entry["offset"]) and _DIGITS.fullmatch(entry["length"])):
        return (
            f"tensor '{tensor.name}' gives the offset {entry['offset']!r} and length {entry['length']!r} "
            f"into '{EXTERNAL_DATA}'; expected whole numbers; it was not read"
        )
    offset, length = int(entry["offset"]), int(entry["length"])
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 0
    dims = list(tensor.dims)
    wanted = math.prod(dims) * itemsize if all(d >= 0 for d in dims) else -1
    if itemsize == 0 or tensor.data_type == TensorProto.STRING or length != wanted:
        return (
            f"tensor '{tensor.name}' (dims {dims}, type {tensor.data_type}) takes {length} bytes of "
            f"'{EXTERNAL_DATA}'; its dims and type call for {wanted}; it was not read"
        )
    if offset + length > data_size:
        return (
            f"tensor '{tensor.name}' refers to bytes {offset}..{offset + length} of '{EXTERNAL_DATA}', "
            f"which holds {data_size} bytes; it was not read"
        )
    held = [f.name for f, _ in tensor.ListFields() if f.name.endswith("_data") and f.name != "external_data"]
    if held:
        return f"tensor '{tensor.name}' refers to external data and also holds values in {held}"
    return None


def external_data_problems(model: onnx.ModelProto, *, data_size: int | None) -> tuple[list[str], int]:
    """Every tensor, anywhere in the model, whose external-data reference is not one rnnexport
    writes, and how many tensors refer to ``model.onnx.data``.

    ``data_size`` is the size of the verified ``model.onnx.data``, or None when the artifact has
    none. Only the main graph's initializers may refer to it (that is where rnnexport puts them);
    any other external reference is refused as it always was, and none is ever followed.
    """
    problems = []
    referring = 0
    for tensor in model.graph.initializer:
        if not _is_external(tensor):
            continue
        problem = _not_followed(tensor) if data_size is None else _reference_problem(tensor, data_size)
        if problem:
            problems.append(problem)
        else:
            referring += 1
    others = itertools.chain(
        (t for sparse in model.graph.sparse_initializer for t in (sparse.values, sparse.indices)),
        _tensors_of_nodes(model.graph.node),
        *(_tensors_of_nodes(f.node) for f in model.functions),
    )
    problems += [_not_followed(tensor) for tensor in others if _is_external(tensor)]
    return problems, referring
