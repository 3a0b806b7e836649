"""Simplifying an exported graph with onnxsim, without ever trusting a failed simplification."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxsim

from rnnexport.errors import SimplifyError
from rnnexport.feeds import Feeds
from rnnexport.graph.tidy import TidyReport, tidy
from rnnexport.text import first_line

__all__ = ["BATCHED_GEMM_PASS", "SimplifyStats", "native_stderr_discarded", "simplify_onnx"]

# onnxsim's rewrite of a MatMul + Add on [batch, seq, hidden] into Reshape -> Gemm -> Reshape, plus a
# Shape/Slice/Concat to rebuild the output shape: six nodes for two. See ``streaming`` below.
BATCHED_GEMM_PASS = "fuse_matmul_add_bias_into_gemm_batched"


@dataclass(frozen=True)
class SimplifyStats:
    """What simplification did: node counts before and after, and the change per operator type.

    The node count alone misleads: the exporter stores weights as ``Constant`` nodes that onnxsim
    turns into initializers (fewer nodes), while onnxsim's shape inference may split one fused node
    into several simpler ones (more nodes). The per-operator change says which happened.
    """

    nodes_before: int
    nodes_after: int
    removed: dict[str, int]
    added: dict[str, int]
    #: What rnnexport's own rewrites did, rule by rule (not in the manifest, nor in :meth:`describe`).
    tidy: TidyReport | None = field(default=None, compare=False)

    @classmethod
    def between(
        cls, before: onnx.ModelProto, after: onnx.ModelProto, *, tidy: TidyReport | None = None
    ) -> SimplifyStats:
        """Compare two graphs' nodes by operator type (``tidy``: kept as it is)."""
        a = Counter(n.op_type for n in before.graph.node)
        b = Counter(n.op_type for n in after.graph.node)
        return cls(
            sum(a.values()),
            sum(b.values()),
            dict(sorted((a - b).items())),
            dict(sorted((b - a).items())),
            tidy,
        )

    def describe(self) -> str:
        """``35 -> 27 nodes (removed 6 Constant, 2 Unsqueeze; added 1 Reshape)``."""

        def listing(counts: dict[str, int]) -> str:
            return ", ".join(f"{n} {op}" for op, n in counts.items())

        changes = [
            f"{verb} {listing(c)}" for verb, c in (("removed", self.removed), ("added", self.added)) if c
        ]
        return f"{self.nodes_before} -> {self.nodes_after} nodes" + (
            f" ({'; '.join(changes)})" if changes else ""
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``simplification`` section."""
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "removed_by_op": self.removed,
            "added_by_op": self.added,
        }


@contextlib.contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """Send whatever native code writes to file descriptor 2 during the block to a discarded file.

    For native libraries that log straight to the terminal (ONNX Runtime's and torch's C++ loggers),
    where the failure, if any, is raised to us and reported properly.

    onnxsim checks the simplified graph in ONNX Runtime with sessions whose log level it sets itself
    (errors), so a graph that fails there (a frozen ``Reshape``) is logged by ORT's C++ logger straight
    to the terminal before the failure is raised to us. The raised error is what gets reported.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing can leak to it
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def simplify_onnx(
    model: onnx.ModelProto,
    *,
    check_feeds: Feeds,
    path: Path | None = None,
    streaming: bool = False,
) -> tuple[onnx.ModelProto, SimplifyStats]:
    """Run onnxsim on ``model``, letting it compare original and simplified graphs on ``check_feeds``.

    onnxsim reports its own comparison as a second return value instead of raising; a ``False``
    there, or any exception inside onnxsim, becomes :class:`SimplifyError`. The caller re-checks the
    I/O contract afterwards, since constant folding is where a traced length gets baked into a
    ``Reshape``.

    ``path``: where ``model`` was saved (its weights possibly in external data beside it; ``model``
    may then be its structure only). onnxsim reads the file itself. Given a path, onnxsim 0.8 loads
    the model as its own, and when the result does not fit one protobuf message (2 GiB) it saves
    it with external data in a temporary folder, simplifies and checks it there file to file, and
    returns it loaded with its weights; given a ``ModelProto`` of that size it would first copy it
    whole. The result holds its weights in memory either way (a model past 2 GiB can be held, only
    not serialized).

    ``streaming=True`` shapes the graph for calls of one step, where ONNX Runtime's per-node
    overhead (1-2 us a node on one CPU core) is most of the time:

    - onnxsim's :data:`BATCHED_GEMM_PASS` is skipped. ONNX Runtime's MatMul already runs the same
      GEMM kernel on a 3-D input, so the rewrite's extra nodes are pure per-call overhead. Stateless
      builds keep it because ONNX Runtime 1.32's CPU provider crashes (a segmentation fault in its
      ``NchwcTransformer``) creating a session for the float16 conversion of the unfused graph.
    - parallel recurrences merge into one node (:func:`~rnnexport.graph.tidy.tidy`). Stateless
      builds keep them apart: over a long sequence the merged node's block-diagonal recurrent
      product costs more than the per-node overhead it saves, and ONNX Runtime's int8 quantizer
      only quantizes a recurrence whose weights are initializers, not built by the graph.

    After onnxsim, :func:`~rnnexport.graph.tidy.tidy` applies rnnexport's rewrites (the same values,
    fewer nodes per call); the pipeline's verification then runs on the graph that ships.
    """
    log = io.StringIO()
    try:
        # onnxsim prints progress and may warn, and its check runs ONNX Runtime, whose C++ logger
        # writes straight to the terminal; none of it belongs on the user's terminal.
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), native_stderr_discarded():
            warnings.simplefilter("ignore")
            simplified, check_ok = onnxsim.simplify(
                model if path is None else str(path),
                check_n=1,
                input_data=dict(check_feeds),
                skipped_optimizers=[BATCHED_GEMM_PASS] if streaming else [],
            )
    except Exception as exc:  # onnxsim raises many unrelated types; all mean "could not simplify"
        summary = first_line(exc, default="no message")
        raise SimplifyError(
            f"onnxsim failed to simplify the exported graph: {type(exc).__name__}: {summary}. "
            "The unsimplified export is not shipped either; report the model and the versions of "
            "onnx and onnxsim."
        ) from exc
    if not check_ok:
        raise SimplifyError(
            "onnxsim simplified the graph, but its own check found that the simplified graph computes "
            "different outputs from the original. Nothing was shipped; report the model with the "
            "versions of onnx and onnxsim."
        )
    report = tidy(simplified, merge_recurrences=streaming)
    return simplified, SimplifyStats.between(model, simplified, tidy=report)
