"""Simplifying an exported graph with onnxsim, without ever trusting a failed simplification."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import onnx
import onnxsim

from rnnexport.errors import SimplifyError
from rnnexport.feeds import Feeds

__all__ = ["SimplifyStats", "simplify_onnx"]


@dataclass(frozen=True)
class SimplifyStats:
    """Node counts before and after simplification (recorded in the manifest)."""

    nodes_before: int
    nodes_after: int

    def to_json(self) -> dict[str, int]:
        """The manifest's ``simplification`` section."""
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after}


def simplify_onnx(model: onnx.ModelProto, *, check_feeds: Feeds) -> tuple[onnx.ModelProto, SimplifyStats]:
    """Run onnxsim on ``model``, letting it compare original and simplified graphs on ``check_feeds``.

    onnxsim reports its own comparison as a second return value instead of raising; a ``False``
    there, or any exception inside onnxsim, becomes :class:`SimplifyError`. The caller re-checks the
    I/O contract afterwards, since constant folding is where a traced length gets baked into a
    ``Reshape``.
    """
    log = io.StringIO()
    try:
        # onnxsim prints progress and may warn; neither belongs on the user's terminal.
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            simplified, check_ok = onnxsim.simplify(model, check_n=1, input_data=dict(check_feeds))
    except Exception as exc:  # onnxsim raises many unrelated types; all mean "could not simplify"
        raise SimplifyError(
            f"onnxsim failed to simplify the exported graph: {type(exc).__name__}: {exc}. "
            "The unsimplified export is not shipped either; report the model and the versions of "
            "onnx and onnxsim, or try another --opset."
        ) from exc
    if not check_ok:
        raise SimplifyError(
            "onnxsim simplified the graph, but its own check found that the simplified graph computes "
            "different outputs from the original. Nothing was shipped; try another --opset, or report "
            "the model with the versions of onnx and onnxsim."
        )
    return simplified, SimplifyStats(len(model.graph.node), len(simplified.graph.node))
