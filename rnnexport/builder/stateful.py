"""Building a streaming model: the wrapper, its contract, and its verification cases (needs torch).

:func:`make_streaming` wraps any module so that every recurrent state (found by
:func:`rnnexport.builder.patch_streaming.recurrent_states`, carried by
:func:`rnnexport.builder.patch_streaming.streaming_state`) and
any state of an architecture's own streaming formulation (:class:`~rnnexport.spec.StreamingForm`)
become inputs and outputs; :mod:`rnnexport.streaming` describes the contract that results.

A model that passes its own ``hx`` to a recurrent layer (a learned ``h0``, an ``nn.Parameter``
expanded over the batch) streams from that value: :func:`capture_initial_states` records what the
model passes on probe calls, checks that it depends neither on the inputs nor on the batch, and
the artifact ships it as the state's initial value (see :class:`~rnnexport.streaming.InitialTensor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rnnexport.builder.eager import ModuleRunner
from rnnexport.builder.patch_streaming import RecurrentState, StreamingModule, recurrent_states
from rnnexport.errors import UsageError
from rnnexport.feeds import Case, Feeds, make_feeds
from rnnexport.spec import BATCH, SEQ, Contract, TensorSpec
from rnnexport.streaming import StateSpec, Streaming, encode_initial, start_states, state_name_problems
from rnnexport.text import capped

__all__ = [
    "CHAINS",
    "StreamingModel",
    "batch_size",
    "capture_initial_states",
    "chain_cases",
    "check_streamable",
    "make_streaming",
    "require_streamable",
    "single_call_cases",
]

# The chained test cases every streaming build verifies and ships: (batch, chunk lengths), uneven.
CHAINS = ((1, (1, 1, 3)), (3, (2, 5, 1, 4)))
# Probe calls that capture the hx a model passes itself: (batch, seq, seed). Two batch-1 calls on
# different inputs and lengths, and a batch of 3: an initial state must be the same in all.
_PROBES = ((1, 3, 101), (1, 5, 102), (3, 4, 103))
# A learned initial state computed the same way at another batch size may differ in the last bits
# (another matrix kernel); an input-dependent one differs by far more.
_SAME_ATOL, _SAME_RTOL = 1e-6, 1e-5


@dataclass(frozen=True)
class StreamingModel:
    """A streaming wrapper, the contract it exports with, and the manifest's streaming section.

    ``initial`` holds the learned initial states (state input -> ``[1, sizes...]``) and ``files``
    the artifact files that ship them (path -> bytes); both empty when every state starts at zeros.
    """

    module: StreamingModule
    contract: Contract
    streaming: Streaming
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def start(self, batch: int) -> Feeds:
        """The state inputs of ``batch`` new streams."""
        return start_states(self.streaming, batch, self.initial)


def _given_hx(
    model: torch.nn.Module, contract: Contract, states: list[RecurrentState]
) -> list[dict[str, Any]]:
    """Per probe call: module path -> the ``hx`` the model passed it (None when it passed none)."""
    modules = {name or "rnn": m for name, m in model.named_modules()}
    runner = ModuleRunner(contract, model)
    found: list[dict[str, Any]] = []
    for batch, seq, seed in _PROBES:
        given: dict[str, Any] = {}

        def hook(path: str, given: dict[str, Any] = given) -> Callable[..., None]:
            def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                hx = args[1] if len(args) > 1 else kwargs.get("hx")
                given.setdefault(path, hx)

            return record

        handles = [
            modules[path].register_forward_pre_hook(hook(path), with_kwargs=True)
            for path in dict.fromkeys(s.module for s in states)
        ]
        try:
            runner.run(make_feeds(contract, batch=batch, seq=seq, rng=np.random.default_rng(seed)))
        finally:
            for handle in handles:
                handle.remove()
        found.append(given)
    return found


def _batch_major(hx: Any, parts: list[RecurrentState], batch: int) -> list[np.ndarray] | None:
    """``hx`` (``h0`` or ``(h0, c0)``, each ``[rows, batch, size]``) as ``[batch, rows, size]`` arrays,
    one per state of ``parts``; None when it is missing or not shaped as the module's states."""
    tensors = list(hx) if isinstance(hx, tuple) else [hx]
    if hx is None or len(tensors) != len(parts):
        return None
    arrays = []
    for s, t in zip(parts, tensors, strict=True):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (s.rows, batch, s.size):
            return None
        arrays.append(t.detach().cpu().float().numpy().transpose(1, 0, 2))
    return arrays


def capture_initial_states(
    model: torch.nn.Module, contract: Contract, states: list[RecurrentState]
) -> dict[str, np.ndarray]:
    """The initial state each recurrent module of ``model`` starts from, where the model passes one.

    Returns state key -> ``[1, sizes...]`` (batch-major) for every module that is given ``hx``; the
    rest start from zeros. Raises :class:`~rnnexport.errors.UsageError` when what the model passes
    depends on its inputs (an encoder-computed ``h0``, or states taken as inputs) or differs between
    the rows of a batch: a stream could not start from one shipped value.
    """
    calls = _given_hx(model, contract, states)
    captured: dict[str, np.ndarray] = {}
    for path in dict.fromkeys(s.module for s in states):
        given = [call.get(path) for call in calls]
        if all(g is None for g in given):
            continue
        parts = [s for s in states if s.module == path]
        values = [_batch_major(hx, parts, batch) for (batch, _, _), hx in zip(_PROBES, given, strict=True)]
        first = values[0]
        same = first is not None and all(
            v is not None
            and all(
                np.allclose(a, b[:1], atol=_SAME_ATOL, rtol=_SAME_RTOL) for a, b in zip(v, first, strict=True)
            )
            for v in values
        )
        if not same or first is None:
            raise UsageError(
                f"--streaming needs the value '{path}' starts from in a new stream, but the model passes "
                "its own (hx) to it, and that hx depends on the inputs (it differs between calls on "
                "different inputs, or between the rows of a batch): a stream could not start from one "
                "value. A model that takes its state as inputs already streams as it is: build it without "
                "--streaming. A learned initial state (an nn.Parameter or buffer expanded over the batch) "
                "streams."
            )
        for s, value in zip(parts, first, strict=True):
            captured[s.key] = value[:1, 0] if s.rows == 1 else value[:1]
    return captured


def make_streaming(
    model: torch.nn.Module,
    contract: Contract,
    *,
    method: str = "forward",
    extra: Sequence[TensorSpec] = (),
) -> StreamingModel:
    """Wrap ``model`` (taking ``contract``'s inputs) as a streaming module.

    ``method`` and ``extra`` (resolved templates: name = state key) come from the architecture's
    :class:`~rnnexport.spec.StreamingForm`, if any. A recurrent layer to which the model passes a
    learned initial state starts from it (:func:`capture_initial_states`); the wrapper replaces that
    ``hx`` by the carried state. Raises :class:`~rnnexport.errors.UsageError` for a bidirectional
    recurrence, which cannot stream, for an ``hx`` that depends on the inputs, and for names the
    manifest cannot carry (:func:`~rnnexport.streaming.state_name_problems`).
    """
    states = recurrent_states(model)
    learned = capture_initial_states(model, contract, states)
    initial: dict[str, np.ndarray] = {}
    files: dict[str, bytes] = {}
    specs = []
    for s in states:
        if s.key in learned and np.any(learned[s.key]):  # a model passing zeros starts from "zeros"
            spec = StateSpec(s.key, s.shape)
            entry, data = encode_initial(spec.input, learned[s.key])
            specs.append(StateSpec(s.key, s.shape, initial=entry))
            initial[spec.input], files[entry.file] = learned[s.key], data
        else:
            specs.append(StateSpec(s.key, s.shape))
    streaming = Streaming((*specs, *(StateSpec(t.name, t.shape) for t in extra)))
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
        own_initial=frozenset(s.module for s in states if s.key in learned),
    ).eval()
    return StreamingModel(module, streaming.contract(contract), streaming, initial, files)


def batch_size(contract: Contract, feeds: Feeds) -> int:
    """The batch size of ``feeds``: the ``batch`` axis of the first input that has one."""
    spec = next(t for t in contract.inputs if BATCH in t.shape)
    return int(feeds[spec.name].shape[spec.shape.index(BATCH)])


def chain_cases(
    stream: StreamingModel,
    base: Contract,
    *,
    seed: int = 0,
    chains: Sequence[tuple[int, tuple[int, ...]]] = CHAINS,
) -> tuple[list[Case], list[list[str]]]:
    """Chained cases: consecutive calls of one stream, each starting from the state the previous
    call returned in eager PyTorch (the first from the states' initial values). Returns the cases
    and, per chain, their names.

    With a lengths input, each row gets its own chunk lengths (the first row full, the last 1 where
    the batch has several rows), so rows end at different steps.
    """
    runner = ModuleRunner(stream.contract, stream.module)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    names: list[list[str]] = []
    for c, (batch, chunks) in enumerate(chains):
        state = stream.start(batch)
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
    """Each non-streaming case as one call of a new stream (initial state), references from the wrapper."""
    runner = ModuleRunner(stream.contract, stream.module)
    result = []
    for case in cases:
        batch = batch_size(stream.contract, case.inputs)
        feeds = {**case.inputs, **stream.start(batch)}
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
