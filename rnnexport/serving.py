"""Serving many streams on one session: each call runs every stream that has something new.

A streaming artifact (``--streaming``) takes its recurrent state as batch-major inputs and returns it
as outputs, so N independent streams can share one session: their chunks are stacked on the batch
axis, their states too, one call runs them all, and each stream gets its own rows back. On a small
model one call costs about as much at batch 64 as at batch 1 (fixed costs dominate), so this is
where the throughput of a server comes from; ``scripts/bench_many_streams.py`` measures it.

- **Masked models** (an input with the ``lengths`` role): chunks of different lengths are padded to
  the longest and each row gets its own length; a stream whose chunk is empty gets length 0 and
  keeps its state exactly (the artifact's contract).
- **Unmasked models**: streams are grouped by chunk length, one call per group; an empty chunk
  runs nothing and returns empty outputs.

Chunks and outputs are per stream, without the batch axis (``x``: ``[steps, input]``). Only the
streams named in a call run; the others keep their state untouched. Torch-free; any runtime whose
run takes and returns dicts of arrays will do (``run(feeds) -> outputs``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from rnnexport.errors import UsageError
from rnnexport.spec import BATCH, SEQ, Contract
from rnnexport.streaming import Streaming, start_states

__all__ = ["StreamPool"]

Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class StreamPool:
    """Independent streams of one streaming model, batched into one call per step."""

    def __init__(
        self,
        run: Run,
        contract: Contract,
        streaming: Streaming,
        initial: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``run(feeds) -> outputs`` runs the model; ``initial``: the shipped ``[1, sizes...]`` initial
        states (state input -> array), for the states that do not start from zeros."""
        self._run = run
        self.streaming = streaming
        states = {s.input for s in streaming.states} | {s.output for s in streaming.states}
        self.inputs = [t for t in contract.inputs if t.name not in states]
        self.outputs = [t for t in contract.outputs if t.name not in states]
        wrong = [t.name for t in (*self.inputs, *self.outputs) if not t.shape or t.shape[0] != BATCH]
        if wrong:
            raise UsageError(f"StreamPool batches on the first axis, which {wrong} do not have as '{BATCH}'.")
        self.lengths = contract.lengths_input
        self.data = [t for t in self.inputs if t is not self.lengths]
        self._start = start_states(streaming, 1, initial or {})
        self._states: dict[int, dict[str, np.ndarray]] = {}
        self._ids = itertools.count()

    @classmethod
    def from_artifact(cls, folder: Path | str, *, threads: int = 0) -> StreamPool:
        """A pool on ONNX Runtime's CPU provider for a streaming artifact folder.

        The folder is read as ``rnnexport verify`` reads it (:func:`~rnnexport.artifact.checked_artifact`:
        every file bounded and hashed, the contract and stream starts checked): the session runs the
        bytes that were checked, never a file swapped in afterwards.
        """
        from rnnexport.artifact.untrusted import checked_artifact
        from rnnexport.runtime import onnxruntime_module

        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        with checked_artifact(folder, prefix="rnnexport-serving-") as checked:
            manifest = checked.manifest
            if manifest.streaming is None:
                raise UsageError(f"{folder} is not a streaming artifact: build it with --streaming.")
            # With external data the source is the private copy's path; ONNX Runtime reads the data
            # file while the session is made, inside this block.
            model = checked.source if isinstance(checked.source, bytes) else str(checked.source)
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            initial = dict(checked.initial)
        names = [o.name for o in session.get_outputs()]

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(names, dict(feeds)), strict=True))

        streaming = Streaming.from_json(manifest.streaming, lambda condition, what: None)
        return cls(run, manifest.contract, streaming, initial)

    def open(self) -> int:
        """A new stream, at the states' initial values; returns its id."""
        sid = next(self._ids)
        self._states[sid] = {k: v.copy() for k, v in self._start.items()}
        return sid

    def close(self, sid: int) -> None:
        """Forget a stream."""
        self._states.pop(sid, None)

    def state(self, sid: int) -> dict[str, np.ndarray]:
        """A stream's current state (state input -> ``[1, sizes...]``)."""
        return self._states[sid]

    def _steps(self, chunk: Mapping[str, np.ndarray]) -> int:
        spec = self.data[0]
        return int(chunk[spec.name].shape[spec.shape.index(SEQ) - 1]) if SEQ in spec.shape else 1

    def step(self, chunks: Mapping[int, Mapping[str, np.ndarray]]) -> dict[int, dict[str, np.ndarray]]:
        """Run one chunk for each named stream; return each stream's outputs (no batch axis).

        Masked models: one call, rows padded to the longest chunk. Unmasked: one call per length.
        """
        unknown = [sid for sid in chunks if sid not in self._states]
        if unknown:
            raise UsageError(f"Streams {unknown} are not open (or were closed): open() them first.")
        steps = {sid: self._steps(chunk) for sid, chunk in chunks.items()}
        if self.lengths is not None:
            groups = [list(chunks)] if chunks else []
        else:
            by_length: dict[int, list[int]] = {}
            for sid, n in steps.items():
                by_length.setdefault(n, []).append(sid)
            groups = [ids for n, ids in by_length.items() if n > 0]
        results: dict[int, dict[str, np.ndarray]] = {}
        for ids in groups:
            results.update(self._call(ids, chunks, steps))
        return {sid: results[sid] if sid in results else self._empty(steps[sid]) for sid in chunks}

    def _empty(self, steps: int) -> dict[str, np.ndarray]:
        return {
            t.name: np.zeros(
                [steps if d == SEQ else 0 if isinstance(d, str) else d for d in t.shape[1:]], t.dtype
            )
            for t in self.outputs
        }

    def _call(
        self, ids: list[int], chunks: Mapping[int, Mapping[str, np.ndarray]], steps: Mapping[int, int]
    ) -> dict[int, dict[str, np.ndarray]]:
        longest = max(steps[sid] for sid in ids)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.data:
            rows = []
            for sid in ids:
                row = np.asarray(chunks[sid][spec.name], dtype=spec.dtype)
                if SEQ in spec.shape and row.shape[spec.shape.index(SEQ) - 1] < longest:
                    axis = spec.shape.index(SEQ) - 1
                    pad = [(0, 0)] * row.ndim
                    pad[axis] = (0, longest - row.shape[axis])
                    row = np.pad(row, pad)
                rows.append(row)
            feeds[spec.name] = np.stack(rows)
        if self.lengths is not None:
            feeds[self.lengths.name] = np.array([steps[sid] for sid in ids], self.lengths.dtype)
        for s in self.streaming.states:
            feeds[s.input] = np.concatenate([self._states[sid][s.input] for sid in ids])
        outputs = self._run(feeds)
        results = {}
        for i, sid in enumerate(ids):
            self._states[sid] = {
                s.input: np.array(outputs[s.output][i : i + 1]) for s in self.streaming.states
            }
            mine = {}
            for t in self.outputs:
                value = np.asarray(outputs[t.name])[i]
                if SEQ in t.shape and steps[sid] < longest:  # per-step output: this stream's steps
                    value = np.take(value, range(steps[sid]), axis=t.shape.index(SEQ) - 1)
                mine[t.name] = value
            results[sid] = mine
        return results
