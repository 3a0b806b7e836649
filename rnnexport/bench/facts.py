"""Graph facts for the report: the recurrent nodes and their recurrence matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnexport.artifact import EXTERNAL_DATA
from rnnexport.graph.nodes import constant_tensors
from rnnexport.graph.onnx_slots import RECURRENT_OPS, R


def _readable(tensor: onnx.TensorProto, base: Path | None) -> bool:
    """Whether ``tensor``'s values can be read: inline, or external in ``base``'s model.onnx.data
    (the one file an artifact may hold them in, its private copy, at a region checked to lie inside
    it; any other reference is left unread)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL and not len(tensor.external_data):
        return True
    location = next((e.value for e in tensor.external_data if e.key == "location"), None)
    return base is not None and location == EXTERNAL_DATA


def _graph_facts(graph: onnx.GraphProto, base: Path | None = None) -> dict[str, Any]:
    """Recurrent nodes and their recurrence matrices: bytes and the fraction of exact zeros.

    ``base``: the private folder holding the checked copy of a model's model.onnx.data.
    """
    from onnx import numpy_helper

    # Weights are initializers, or Constant nodes where the exporter handed them over as such.
    tensors = constant_tensors(graph)
    nodes = []
    for node in graph.node:
        recurrence = (
            tensors.get(node.input[R]) if node.op_type in RECURRENT_OPS and len(node.input) > R else None
        )
        if recurrence is not None and _readable(recurrence, base):
            r = numpy_helper.to_array(recurrence, base_dir=str(base or ""))
            nodes.append(
                {
                    "op": node.op_type,
                    "recurrence_shape": list(r.shape),
                    "recurrence_bytes": int(r.nbytes),
                    "recurrence_zero_fraction": float(np.mean(r == 0)),
                }
            )
    return {"recurrent_nodes": nodes}
