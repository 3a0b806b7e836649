"""The streaming contract: recurrent state as explicit graph inputs and outputs (torch-free).

A streaming artifact (``rnnexport build ... --streaming``) computes one chunk per call. Besides the
model's own inputs and outputs it takes every state tensor as an input ``state_in.<key>`` and
returns the updated state as ``state_out.<key>``, where ``<key>`` is ``<module path>.h`` (or
``.c`` for an LSTM's cell state, or an architecture's own running statistic). A key is made of
letters, digits and underscores between dots, and names starting with ``state_in.`` / ``state_out.``
are refused among a streaming model's own inputs and outputs, so they cannot collide: a build refuses
what the manifest cannot carry (:func:`state_name_problems`) before it exports anything.

Every state tensor is **batch-major** (``[batch, size]``, or ``[batch, layers, size]`` for a
stacked layer), unlike ONNX's recurrent ``[layers, batch, size]``: Triton's sequence batcher (and
most serving code) slices and stacks requests on the first axis of every tensor. A new stream starts
from each state's ``initial`` value: ``"zeros"``, or, for a model with a learned initial state (an
``nn.Parameter`` h0 that it passes as ``hx``), a tensor the artifact ships (:class:`InitialTensor`:
``initial_state/state_in.<key>.pb``, an ONNX ``TensorProto`` of shape ``[1, sizes...]``, hashed,
broadcast over the batch). Feeding a call's ``state_out.*`` into the next call's ``state_in.*``
continues the sequence exactly; ``chunk_axis`` names the axis the chunks are cut along.

The manifest's ``streaming`` section (and the model's ``rnnexport.streaming`` metadata, the same
JSON) records this, plus ``chains``: test-data sets that form consecutive calls of one stream,
which ``rnnexport verify`` replays by feeding each call's state outputs to the next call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import numpy_helper

from rnnexport.spec import BATCH, SEQ, Contract, Dim, TensorSpec
from rnnexport.text import capped

__all__ = [
    "INITIAL_FOLDER",
    "STATE_IN",
    "STATE_OUT",
    "InitialTensor",
    "StateSpec",
    "Streaming",
    "encode_initial",
    "start_states",
    "state_name_problems",
    "streaming_problems",
]

STATE_IN = "state_in."
STATE_OUT = "state_out."
# The folder of an artifact that holds learned initial states, one TensorProto per state input.
INITIAL_FOLDER = "initial_state"
_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# The rule _KEY enforces, for messages.
_KEY_RULE = (
    "a state key is letters, digits and underscores in parts separated by dots, such as 'encoder.rnn.h'"
)
_RESERVED = f"names starting with '{STATE_IN}' or '{STATE_OUT}' are reserved for the carried state"
_SET = re.compile(r"test_data_set_(0|[1-9][0-9]{0,5})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class InitialTensor:
    """A learned initial state the artifact ships: ``file`` (an ONNX ``TensorProto`` named after the
    state input, float32, shape ``[1, sizes...]``) with its sha256; broadcast over the batch."""

    file: str
    sha256: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The state's ``initial`` entry."""
        return {"file": self.file, "sha256": self.sha256, "shape": list(self.shape)}


def initial_file(state_input: str) -> str:
    """The artifact path of ``state_input``'s shipped initial value."""
    return f"{INITIAL_FOLDER}/{state_input}.pb"


def encode_initial(state_input: str, value: np.ndarray) -> tuple[InitialTensor, bytes]:
    """``value`` (``[1, sizes...]``) as the file an artifact ships, and its ``initial`` entry."""
    data = numpy_helper.from_array(
        np.ascontiguousarray(value, np.float32), name=state_input
    ).SerializeToString()
    entry = InitialTensor(initial_file(state_input), hashlib.sha256(data).hexdigest(), tuple(value.shape))
    return entry, data


@dataclass(frozen=True)
class StateSpec:
    """One carried state tensor: ``state_in.<key>`` -> ``state_out.<key>``, and where a stream starts:
    ``"zeros"`` or a shipped :class:`InitialTensor`."""

    key: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    initial: str | InitialTensor = "zeros"

    @property
    def input(self) -> str:
        """The graph input that takes the state."""
        return STATE_IN + self.key

    @property
    def output(self) -> str:
        """The graph output that returns the updated state."""
        return STATE_OUT + self.key

    def to_json(self) -> dict[str, Any]:
        """The manifest entry."""
        return {
            "input": self.input,
            "output": self.output,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "initial": self.initial if isinstance(self.initial, str) else self.initial.to_json(),
        }


@dataclass(frozen=True)
class Streaming:
    """The streaming section: the carried states, the chunk axis, and the chained test-data sets."""

    states: tuple[StateSpec, ...]
    chunk_axis: str = SEQ
    chains: tuple[tuple[str, ...], ...] = ()

    def contract(self, base: Contract) -> Contract:
        """``base`` with one input and one output per state, after the model's own."""
        docs = {
            s.key: "carried state (batch-major); zeros to start a stream"
            if isinstance(s.initial, str)
            else f"carried state (batch-major); {s.initial.file}, repeated over the batch, to start a stream"
            for s in self.states
        }
        inputs = tuple(TensorSpec(s.input, s.dtype, s.shape, docs[s.key]) for s in self.states)
        outputs = tuple(TensorSpec(s.output, s.dtype, s.shape, docs[s.key]) for s in self.states)
        return Contract(base.inputs + inputs, base.outputs + outputs)

    @property
    def shipped(self) -> dict[str, InitialTensor]:
        """State input -> its shipped initial value, for the states that do not start from zeros."""
        return {s.input: s.initial for s in self.states if isinstance(s.initial, InitialTensor)}

    @property
    def pairs(self) -> dict[str, str]:
        """State output name -> the input name it feeds on the next call."""
        return {s.output: s.input for s in self.states}

    def to_json(self, *, chains: bool = True) -> dict[str, Any]:
        """The manifest's ``streaming`` section; without ``chains``, the model's ``rnnexport.streaming``
        metadata (the chains name the artifact's test-data folders, not part of the model)."""
        data: dict[str, Any] = {"states": [s.to_json() for s in self.states], "chunk_axis": self.chunk_axis}
        if chains:
            data["chains"] = [list(c) for c in self.chains]
        return data

    @classmethod
    def from_json(cls, data: Any, need: Callable[[object, str], None]) -> Streaming:
        """Validate and parse a ``streaming`` section; ``need(condition, what)`` reports a problem."""
        need(isinstance(data, dict), "'streaming' must be an object")
        states, chains = data.get("states"), data.get("chains", [])
        need(isinstance(states, list) and states, "'streaming.states' must be a non-empty list")
        need(data.get("chunk_axis") == SEQ, f"'streaming.chunk_axis' must be {SEQ!r}")
        parsed = []
        for s in states:
            need(isinstance(s, dict), "every 'streaming.states' entry must be an object")
            name = s.get("input")
            need(isinstance(name, str) and name.startswith(STATE_IN), f"a state has the input {name!r}")
            key = name[len(STATE_IN) :]
            need(_KEY.fullmatch(key), f"a state has the input {name!r} ({_KEY_RULE})")
            need(s.get("output") == STATE_OUT + key, f"state {name!r} has the output {s.get('output')!r}")
            need(s.get("dtype") == "float32", f"state {name!r} has the dtype {s.get('dtype')!r}")
            shape = s.get("shape")
            need(
                isinstance(shape, list)
                and shape
                and shape[0] == BATCH
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape[1:]),
                f"state {name!r} has the shape {shape!r}; expected ['batch', sizes...]",
            )
            parsed.append(
                StateSpec(key, tuple(shape), initial=_initial_from_json(s.get("initial"), name, shape, need))
            )
        need(len({s.key for s in parsed}) == len(parsed), "'streaming.states' names a state twice")
        need(isinstance(chains, list), "'streaming.chains' must be a list")
        for chain in chains:
            need(
                isinstance(chain, list)
                and len(chain) >= 2
                and all(isinstance(d, str) and _SET.fullmatch(d) for d in chain),
                f"'streaming.chains' holds {chain!r}; expected lists of test_data_set_N names",
            )
        flat = [d for c in chains for d in c]
        need(len(set(flat)) == len(flat), "'streaming.chains' names a test-data set twice")
        return cls(tuple(parsed), SEQ, tuple(tuple(c) for c in chains))


def _initial_from_json(
    data: Any, name: str, shape: list[Any], need: Callable[[object, str], None]
) -> str | InitialTensor:
    """A state's ``initial`` entry: ``"zeros"``, or ``{"file", "sha256", "shape"}`` of a shipped tensor."""
    if data == "zeros":
        return "zeros"
    fix = f"expected 'zeros' or {{'file': '{initial_file(name)}', 'sha256': ..., 'shape': [1, sizes...]}}"
    need(
        isinstance(data, dict) and set(data) == {"file", "sha256", "shape"},
        f"state {name!r} has the initial value {data!r}; {fix}",
    )
    need(data["file"] == initial_file(name), f"state {name!r} has the initial file {data['file']!r}; {fix}")
    need(
        isinstance(data["sha256"], str) and _SHA256.fullmatch(data["sha256"]),
        f"state {name!r} has an initial sha256 that is not 64 hex digits",
    )
    need(
        data["shape"] == [1, *shape[1:]],
        f"state {name!r} has the initial shape {data['shape']!r}; expected {[1, *shape[1:]]}",
    )
    return InitialTensor(data["file"], data["sha256"], tuple(data["shape"]))


def streaming_problems(
    streaming: Streaming,
    contract: Contract,
    test_sets: Sequence[str],
    files: Mapping[str, str] | None = None,
) -> list[str]:
    """Every way the streaming section and the I/O contract (or the test-data sets, or the manifest's
    ``files``: every shipped initial state listed, with the same sha256) disagree."""
    problems = []
    named = {i.file for i in streaming.shipped.values()}
    stray_files = sorted(f for f in files or () if f.startswith(f"{INITIAL_FOLDER}/") and f not in named)
    if stray_files:
        problems.append(f"'files' lists {stray_files}, initial states that no streaming state starts from")
    for initial in streaming.shipped.values():
        if files is not None and initial.file not in files:
            problems.append(f"the initial state '{initial.file}' is not listed in 'files'")
        elif files is not None and files[initial.file] != initial.sha256:
            problems.append(f"'streaming' and 'files' record different sha256 for '{initial.file}'")
    inputs = {t.name: t for t in contract.inputs}
    outputs = {t.name: t for t in contract.outputs}
    for s in streaming.states:
        for name, tensors in ((s.input, inputs), (s.output, outputs)):
            t = tensors.get(name)
            if t is None:
                kind = "input" if tensors is inputs else "output"
                problems.append(f"the streaming state '{name}' is not a graph {kind}")
            elif t.dtype != s.dtype or t.shape != s.shape:
                problems.append(
                    f"the streaming state '{name}' is {s.dtype}{list(s.shape)}, the graph has {t.shape_str()}"
                )
    declared = {s.input for s in streaming.states} | {s.output for s in streaming.states}
    stray = [n for n in [*inputs, *outputs] if n.startswith((STATE_IN, STATE_OUT)) and n not in declared]
    if stray:
        problems.append(
            f"the graph has state tensors [{capped(map(repr, stray), sep=', ')}] that the streaming section "
            f"does not declare ({_RESERVED})"
        )
    missing = sorted({d for c in streaming.chains for d in c} - set(test_sets))
    if missing:
        problems.append(
            f"'streaming.chains' names test-data sets [{capped(map(repr, missing), sep=', ')}] that the "
            "manifest does not list"
        )
    return problems


def state_name_problems(streaming: Streaming, base: Contract) -> list[str]:
    """The names of a streaming model (``base``: its own contract) that a manifest cannot carry.

    The rules are the ones :meth:`Streaming.from_json` and :func:`streaming_problems` apply when
    ``verify`` reads the manifest; a build checks them before exporting, so it never publishes what
    ``verify`` refuses. One line per name, with the rule it breaks.
    """
    problems = [
        f"the state of '{s.key.rsplit('.', 1)[0]}' would be named '{s.input}' ({_KEY_RULE})"
        for s in streaming.states
        if not _KEY.fullmatch(s.key)
    ]
    problems += [
        f"the model's own tensor '{t.name}' ({_RESERVED})"
        for t in (*base.inputs, *base.outputs)
        if t.name.startswith((STATE_IN, STATE_OUT))
    ]
    return problems


def start_states(
    streaming: Streaming, batch: int, shipped: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The state inputs of ``batch`` new streams: zeros, or the shipped initial value (``shipped``:
    state input -> ``[1, sizes...]``) repeated over the batch."""
    start = {}
    for s in streaming.states:
        sizes = [d for d in s.shape[1:] if isinstance(d, int)]
        if isinstance(s.initial, InitialTensor):
            start[s.input] = np.array(np.broadcast_to(shipped[s.input], (batch, *sizes)), np.float32)
        else:
            start[s.input] = np.zeros([batch, *sizes], dtype=np.float32)
    return start


def state_feeds_of(streaming: Streaming, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The next call's state inputs, from one call's outputs."""
    return {s.input: outputs[s.output] for s in streaming.states}
