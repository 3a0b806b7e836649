"""Building a streaming model: the wrapper, its contract, and its verification cases (needs torch).

:func:`make_streaming` wraps any module so that every recurrent state (found by
:func:`rnnexport.patch.recurrent_states`, carried by :func:`rnnexport.patch.streaming_state`) and
any state of an architecture's own streaming formulation (:class:`~rnnexport.spec.StreamingForm`)
become inputs and outputs; :mod:`rnnexport.streaming` describes the contract that results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rnnexport.feeds import Case, Feeds, make_feeds
from rnnexport.patch import StreamingModule, recurrent_states
from rnnexport.reference import ModuleRunner
from rnnexport.spec import Contract, TensorSpec
from rnnexport.streaming import StateSpec, Streaming

__all__ = ["CHAINS", "StreamingModel", "chain_cases", "make_streaming", "single_call_cases", "zero_states"]

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
    for a bidirectional recurrence, which cannot stream.
    """
    states = recurrent_states(model)
    specs = tuple(StateSpec(s.key, s.shape) for s in states) + tuple(
        StateSpec(t.name, t.shape) for t in extra
    )
    streaming = Streaming(specs)
    module = StreamingModule(
        model,
        states,
        inputs=len(contract.inputs),
        outputs=len(contract.outputs),
        method=method,
        extra=len(extra),
    ).eval()
    return StreamingModel(module, streaming.contract(contract), streaming)


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
        batch = int(next(iter(case.inputs.values())).shape[0])
        feeds = {**case.inputs, **zero_states(stream.streaming, batch)}
        result.append(Case(case.name, feeds, runner.infer(feeds)))
    return result
