"""Streaming export: every recurrent module's state as a graph input and a graph output.

For a streaming export (``--streaming``), :func:`streaming_state` adds, with module hooks, an initial
state from a graph input to every recurrent call and sends its final state to a graph output, and
:class:`StreamingModule` is the wrapper that exports as ``(*inputs, *states) -> (*outputs,
*new_states)``; :func:`recurrent_states` lists what it carries (and refuses bidirectional layers).

Hooks, not a second forward: the recurrent layers' ``forward`` stays whatever is in force (eager,
or the export form of :func:`rnnexport.builder.patch.export_patches`), so one mechanism serves the
eager reference and the export. Only public torch API is used here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rnnexport.builder.recurrent import RECURRENT_LAYERS, PaddedBatch, recurrent_base_class
from rnnexport.errors import UsageError

__all__ = ["RecurrentState", "StreamingModule", "recurrent_states", "streaming_state"]


@dataclass(frozen=True)
class RecurrentState:
    """One state tensor of one recurrent module (``h``, or an LSTM's ``c``), as a streaming model carries it.

    ``module`` is the module's path in the model (``lstms.0``); ``rows`` is ``num_layers`` (streaming
    refuses bidirectional layers, see :func:`recurrent_states`), ``size`` the per-row width. The
    tensor is batch-major: ``[batch, size]`` for a single layer, ``[batch, rows, size]`` otherwise.
    """

    module: str
    kind: str  # "h" or "c"
    rows: int
    size: int

    @property
    def key(self) -> str:
        """``<module path>.<kind>``: the part that the input and output names share."""
        return f"{self.module}.{self.kind}"

    @property
    def shape(self) -> tuple[int | str, ...]:
        """Batch-major shape with the symbolic batch axis."""
        return ("batch", self.size) if self.rows == 1 else ("batch", self.rows, self.size)


def recurrent_states(model: nn.Module) -> list[RecurrentState]:
    """Every state tensor a streaming export of ``model`` carries, in module order (h before c).

    Raises :class:`UsageError` for a bidirectional recurrence: its backward direction starts from
    the end of the whole sequence, which a stream never has, so no chunked run can equal it.
    """
    states: list[RecurrentState] = []
    for name, module in model.named_modules():
        if not isinstance(module, RECURRENT_LAYERS):
            continue
        assert isinstance(module, nn.RNNBase)
        path = name or "rnn"
        if module.bidirectional:
            raise UsageError(
                f"--streaming cannot export '{path}' (a bidirectional "
                f"nn.{recurrent_base_class(module).__name__}): "
                "its backward direction reads each sequence from its last step, which a stream has not "
                "received yet, so no chunk-by-chunk run can compute it exactly. Build without "
                "--streaming, or make the recurrence unidirectional."
            )
        h_size = module.proj_size if module.proj_size > 0 else module.hidden_size
        states.append(RecurrentState(path, "h", module.num_layers, h_size))
        if isinstance(module, nn.LSTM):
            states.append(RecurrentState(path, "c", module.num_layers, module.hidden_size))
    return states


def _time_major(state: torch.Tensor, rows: int) -> torch.Tensor:
    """A batch-major state ``[batch, (rows,) size]`` as ONNX/PyTorch want it: ``[rows, batch, size]``."""
    return state.unsqueeze(0) if rows == 1 else state.transpose(0, 1)


def _batch_major(state: torch.Tensor, rows: int) -> torch.Tensor:
    return state.squeeze(0) if rows == 1 else state.transpose(0, 1)


@contextlib.contextmanager
def streaming_state(
    model: nn.Module,
    states: list[RecurrentState],
    initial: dict[str, torch.Tensor],
    *,
    own_initial: frozenset[str] = frozenset(),
) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each recurrent module of ``model`` starts from ``initial[state.key]`` and
    its final state is written to the yielded dict (batch-major, keyed the same way).

    Hooks, not a second forward: the module's ``forward`` stays whatever is in force (eager, or the
    export form of :func:`export_patches`), so one mechanism serves the eager reference and the
    export. A row with no valid step in a packed call (chunk length 0) keeps its state exactly:
    ONNX Runtime's recurrent ops return zeros for a row with ``sequence_lens`` 0, so the new state is
    chosen with a ``Where`` on ``lengths > 0``. A module called twice in one forward is refused
    (one state pair could not describe both calls), as is a model that passes its own ``hx``, except
    to the modules in ``own_initial``: their ``hx`` is the stream's learned start (captured by
    :func:`rnnexport.builder.stateful.capture_initial_states`), which the carried state replaces.
    """
    final: dict[str, torch.Tensor] = {}
    by_module: dict[str, list[RecurrentState]] = {}
    for s in states:
        by_module.setdefault(s.module, []).append(s)
    modules = {name or "rnn": m for name, m in model.named_modules()}
    handles: list[Any] = []

    def pre_hook(path: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            given = args[1] if len(args) > 1 else kwargs.get("hx")
            if given is not None and path not in own_initial:
                raise UsageError(
                    f"--streaming needs to set the initial state of '{path}', but the model passes its own "
                    "(hx) to it. A model that takes its state as inputs already streams as it is: build "
                    "it without --streaming; or leave hx out of that call."
                )
            h0, *c0 = (_time_major(initial[s.key], s.rows) for s in by_module[path])
            hx: Any = (h0, c0[0]) if c0 else h0
            kwargs = {k: v for k, v in kwargs.items() if k != "hx"}
            return (args[0], hx), kwargs

        return hook

    def post_hook(path: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if any(s.key in final for s in by_module[path]):
                raise UsageError(
                    f"--streaming found '{path}' called twice in one forward; its state cannot be carried "
                    "by one input/output pair. Use one module per call, or build without --streaming."
                )
            new = output[1] if isinstance(output[1], tuple) else (output[1],)
            lengths = args[0].lengths if isinstance(args[0], PaddedBatch) else None
            kept = []
            for s, value in zip(by_module[path], new, strict=True):
                if lengths is not None:  # time-major [rows, batch, size]: rows with no step keep theirs
                    moved = (lengths > 0).reshape(1, -1, 1)
                    value = torch.where(moved, value, _time_major(initial[s.key], s.rows))
                kept.append(value)
                final[s.key] = _batch_major(value, s.rows)
            # The model reads the kept state too (a head on h_n, for example), not ORT's zeros.
            return output[0], (tuple(kept) if isinstance(output[1], tuple) else kept[0])

        return hook

    try:
        for path in by_module:
            handles.append(modules[path].register_forward_pre_hook(pre_hook(path), with_kwargs=True))
            handles.append(modules[path].register_forward_hook(post_hook(path), with_kwargs=True))
        yield final
    finally:
        for handle in handles:
            handle.remove()


class StreamingModule(nn.Module):
    """``forward(*inputs, *states, *extra) -> (*outputs, *new_states, *new_extra)`` around ``model``.

    ``states`` are the recurrent states (:func:`recurrent_states`), carried by
    :func:`streaming_state`; ``extra`` counts further states that ``model.<method>`` itself takes
    after its inputs and returns after its outputs (an architecture's streaming formulation, such as
    the running softmax of attention pooling). ``inputs``/``outputs`` are the model's own counts;
    ``own_initial`` the modules whose own ``hx`` the carried state replaces (see :func:`streaming_state`).
    """

    def __init__(
        self,
        model: nn.Module,
        states: list[RecurrentState],
        *,
        inputs: int,
        outputs: int,
        method: str = "forward",
        extra: int = 0,
        own_initial: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.model = model
        self.states = states
        self.counts = (inputs, outputs, extra)
        self.method = method
        self.own_initial = own_initial

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One chunk: the model's outputs, then every updated state, in the order of the inputs."""
        inputs, outputs, extra = self.counts
        carried = dict(
            zip((s.key for s in self.states), args[inputs : inputs + len(self.states)], strict=True)
        )
        rest = args[inputs + len(self.states) :]
        # forward through __call__, so that module hooks run (a user model's output mapping is one).
        call = self.model if self.method == "forward" else getattr(self.model, self.method)
        with streaming_state(self.model, self.states, carried, own_initial=self.own_initial) as final:
            results = call(*args[:inputs], *rest)
        results = results if isinstance(results, tuple) else (results,)
        assert len(results) == outputs + extra, (len(results), outputs, extra)
        return (*results[:outputs], *(final[s.key] for s in self.states), *results[outputs:])
