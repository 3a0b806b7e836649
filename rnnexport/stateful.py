"""Building a streaming model: the wrapper, its contract, and its verification cases (needs torch).

:func:`make_streaming` wraps any module so that every recurrent state (found by
:func:`rnnexport.patch.recurrent_states`, carried by :func:`rnnexport.patch.streaming_state`) and
any state of an architecture's own streaming formulation (:class:`~rnnexport.spec.StreamingForm`)
become inputs and outputs; :mod:`rnnexport.streaming` describes the contract that results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rnnexport.errors import UsageError
from rnnexport.feeds import Case, Feeds, make_feeds
from rnnexport.patch import StreamingModule, recurrent_states
from rnnexport.reference import ModuleRunner
from rnnexport.spec import BATCH, SEQ, Contract, TensorSpec
from rnnexport.streaming import StateSpec, Streaming, state_name_problems
from rnnexport.text import capped

__all__ = [
    "CHAINS",
    "StreamingModel",
    "batch_size",
    "chain_cases",
    "check_streamable",
    "make_streaming",
    "require_streamable",
    "single_call_cases",
    "zero_states",
]

# The chained test cases every streaming build verifies and ships: (batch, chunk lengths), uneven.
CHAINS = ((1, (1, 1, 3)), (3, (2, 5, 1, 4)))


@dataclass(frozen=True)
class StreamingModel:
    """A streaming wrapper, the contract it exports with, and the manifest's streaming section."""

    module: StreamingModule
    contract: Contract
    streaming: Streaming


def make_streaming(
    model: torch.nn.Module,
    contract: Contract,
    *,
    method: str = "forward",
    extra: Sequence[TensorSpec] = (),
) -> StreamingModel:
    """Wrap ``model`` (taking ``contract``'s inputs) as a streaming module.

    ``method`` and ``extra`` (resolved templates: name = state key) come from the architecture's
    :class:`~rnnexport.spec.StreamingForm`, if any. Raises :class:`~rnnexport.errors.UsageError`
    for a bidirectional recurrence, which cannot stream, and for names the manifest cannot carry
    (:func:`~rnnexport.streaming.state_name_problems`).
    """
    states = recurrent_states(model)
    specs = tuple(StateSpec(s.key, s.shape) for s in states) + tuple(
        StateSpec(t.name, t.shape) for t in extra
    )
    streaming = Streaming(specs)
    unnamed = state_name_problems(streaming, contract)
    if unnamed:
        raise UsageError(
            "This model cannot stream under names an artifact's manifest can carry: "
            f"{capped(unnamed)}. Rename those modules (an nn.ModuleDict key such as 'my-rnn' becomes "
            "'my_rnn') or those inputs and outputs, or build without --streaming."
        )
    module = StreamingModule(
        model,
        states,
        inputs=len(contract.inputs),
        outputs=len(contract.outputs),
        method=method,
        extra=len(extra),
    ).eval()
    return StreamingModel(module, streaming.contract(contract), streaming)


def batch_size(contract: Contract, feeds: Feeds) -> int:
    """The batch size of ``feeds``: the ``batch`` axis of the first input that has one."""
    spec = next(t for t in contract.inputs if BATCH in t.shape)
    return int(feeds[spec.name].shape[spec.shape.index(BATCH)])


def zero_states(streaming: Streaming, batch: int) -> Feeds:
    """The initial state of ``batch`` new streams: zeros."""
    return {
        s.input: np.zeros([batch, *(d for d in s.shape[1:] if isinstance(d, int))], dtype=np.float32)
        for s in streaming.states
    }


def chain_cases(
    stream: StreamingModel,
    base: Contract,
    *,
    seed: int = 0,
    chains: Sequence[tuple[int, tuple[int, ...]]] = CHAINS,
) -> tuple[list[Case], list[list[str]]]:
    """Chained cases: consecutive calls of one stream, each starting from the state the previous
    call returned in eager PyTorch (the first from zeros). Returns the cases and, per chain, their names.

    With a lengths input, each row gets its own chunk lengths (the first row full, the last 1 where
    the batch has several rows), so rows end at different steps.
    """
    runner = ModuleRunner(stream.contract, stream.module)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    names: list[list[str]] = []
    for c, (batch, chunks) in enumerate(chains):
        state = zero_states(stream.streaming, batch)
        chain = []
        for j, k in enumerate(chunks):
            feeds = {**make_feeds(base, batch=batch, seq=k, rng=rng), **state}
            outputs = runner.infer(feeds)
            name = f"chain:{c}/call:{j}/b{batch}s{k}"
            cases.append(Case(name, feeds, outputs))
            chain.append(name)
            state = {s.input: outputs[s.output] for s in stream.streaming.states}
        names.append(chain)
    return cases, names


def single_call_cases(stream: StreamingModel, cases: Sequence[Case]) -> list[Case]:
    """Each non-streaming case as one call of a new stream (zero state), references from the wrapper."""
    runner = ModuleRunner(stream.contract, stream.module)
    result = []
    for case in cases:
        batch = batch_size(stream.contract, case.inputs)
        feeds = {**case.inputs, **zero_states(stream.streaming, batch)}
        result.append(Case(case.name, feeds, runner.infer(feeds)))
    return result


def _step_axis(spec: TensorSpec) -> int | None:
    """The axis of ``spec`` that runs along time: ``seq``, or any other dynamic axis but ``batch``
    (``max(lengths)`` steps, for example)."""
    return next((i for i, d in enumerate(spec.shape) if isinstance(d, str) and d != BATCH), None)


def _to_rows(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``array`` with its batch axis first and its step axis (if any) second."""
    batch, step = spec.shape.index(BATCH), _step_axis(spec)
    if step is None:
        return np.moveaxis(array, batch, 0)
    return np.moveaxis(array, (batch, step), (0, 1))


def _from_rows(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    batch, step = spec.shape.index(BATCH), _step_axis(spec)
    if step is None:
        return np.moveaxis(array, 0, batch)
    return np.moveaxis(array, (0, 1), (batch, step))


def check_streamable(
    base: Contract,
    call: Callable[..., Any],
    cases: Sequence[Case],
    chains: Sequence[Sequence[str]],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> list[str]:
    """Chunk consistency in eager PyTorch: every chained call equals the whole sequence so far.

    For call ``j`` of a chain, ``call`` (the plain, non-streaming model) runs on the concatenation
    of every chunk up to ``j`` (each row's valid steps only, where a lengths input says how many);
    per-step outputs of call ``j`` must equal that run's steps of chunk ``j``, other outputs that
    run's outputs. A model that looks across chunk boundaries other than through its recurrent
    state (a convolution or normalisation over time, attention over the whole sequence) fails
    here. Returns one line per mismatch (empty when it streams).
    """
    by_name = {c.name: c for c in cases}
    runner = ModuleRunner(base, call)
    lengths_spec = base.lengths_input
    stepped = [t for t in base.inputs if SEQ in t.shape]
    problems: list[str] = []
    for chain in chains:
        # Per stepped input and row: the valid steps received so far.
        seen: dict[str, list[list[np.ndarray]]] = {}
        offsets: np.ndarray | None = None
        for name in chain:
            case = by_name[name]
            batch = batch_size(base, case.inputs)
            first = _to_rows(case.inputs[stepped[0].name], stepped[0])
            counts = (
                case.inputs[lengths_spec.name].astype(np.int64)
                if lengths_spec is not None
                else np.full(batch, first.shape[1], np.int64)
            )
            start = np.zeros(batch, np.int64) if offsets is None else offsets
            total = start + counts
            feeds: Feeds = dict(case.inputs)
            for t in stepped:
                rows = _to_rows(case.inputs[t.name], t)
                parts = seen.setdefault(t.name, [[] for _ in range(batch)])
                whole = np.zeros((batch, int(total.max()), *rows.shape[2:]), rows.dtype)
                for b in range(batch):
                    parts[b].append(rows[b, : counts[b]])
                    whole[b, : total[b]] = np.concatenate(parts[b])
                feeds[t.name] = _from_rows(whole, t)
            if lengths_spec is not None:
                feeds[lengths_spec.name] = total.astype(lengths_spec.dtype)
            reference = runner.infer({k: feeds[k] for k in base.input_names})
            for t in base.outputs:
                got, want = case.outputs[t.name], reference[t.name]
                if _step_axis(t) is not None:
                    got_rows, want_rows = _to_rows(got, t), _to_rows(want, t)
                    pairs = [
                        (got_rows[b, : counts[b]], want_rows[b, start[b] : total[b]]) for b in range(batch)
                    ]
                else:
                    pairs = [(got, want)]
                for g, w in pairs:
                    if g.shape != w.shape or not np.allclose(g, w, atol=atol, rtol=rtol):
                        error = float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
                        problems.append(
                            f"'{t.name}' of {name} differs from the whole sequence by {error:.2e}"
                        )
                        break
            offsets = total
    return problems


def require_streamable(problems: Sequence[str], what: str) -> None:
    """Refuse a model whose chained calls do not equal the whole sequence (see :func:`check_streamable`)."""
    if problems:
        raise UsageError(
            f"{what} does not stream: fed chunk by chunk with its recurrent state carried, it computes "
            f"something else than on the whole sequence ({'; '.join(problems[:3])}). Something in it "
            "looks across chunk boundaries other than through a recurrent layer's state (a convolution, "
            "normalisation or attention over time, for example). Build it without --streaming."
        )
