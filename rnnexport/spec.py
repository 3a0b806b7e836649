"""Declarative descriptions: the sizes of a model, and the I/O contract of an architecture.

Nothing here imports torch, so the artifact-checking path (``rnnexport verify``) can use it on a
machine that only has ONNX Runtime.

Shapes are tuples whose entries are either an ``int`` (a fixed size) or a ``str``. In an
architecture's *template* a string is either a dynamic axis (``"batch"``, ``"seq"``) or the name of
an :class:`ArchConfig` field (``"hidden_size"``), which :meth:`ArchSpec.contract` replaces by its
value. In a resolved :class:`Contract` every remaining string is a dynamic axis, and the exported
ONNX graph must carry it as a named ``dim_param``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rnnexport.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BATCH",
    "DTYPES",
    "LENGTHS",
    "MAX_BRANCHES",
    "MAX_FEATURES",
    "ROLES",
    "SEQ",
    "ArchConfig",
    "ArchSpec",
    "Contract",
    "Dim",
    "StreamingForm",
    "TensorSpec",
]

BATCH = "batch"
SEQ = "seq"
DYNAMIC_AXES = (BATCH, SEQ)

# numpy / ONNX dtype names an I/O contract may use (int32 only for an input with the lengths role).
DTYPES = ("float32", "int64", "int32")

# What an input means to generation and validation, independent of its name. ``lengths``: each row's
# count of valid steps along ``seq`` (1 <= lengths[b] <= seq); other inputs' steps past it are padding.
LENGTHS = "lengths"
ROLES = (LENGTHS,)

# Upper bounds that catch typos (hidden 20000 instead of 200) before they allocate gigabytes.
# A 4096-wide LSTM already holds 134M parameters per branch.
MAX_FEATURES = 4096
MAX_BRANCHES = 16

Dim = int | str


@dataclass(frozen=True)
class ArchConfig:
    """The sizes of a model. Defaults are those of the reference articles.

    Every architecture uses a subset of these fields (see :attr:`ArchSpec.sizes`); the others are
    ignored by it but still validated, so a nonsense value is never silently accepted.
    """

    input_size: int = 10
    hidden_size: int = 20
    output_size: int = 5
    branches: int = 3

    def __post_init__(self) -> None:
        limits = {
            "input_size": MAX_FEATURES,
            "hidden_size": MAX_FEATURES,
            "output_size": MAX_FEATURES,
            "branches": MAX_BRANCHES,
        }
        for name, upper in limits.items():
            value = getattr(self, name)
            # bool is an int subclass; True is not a size.
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
                raise UsageError(
                    f"Invalid model size: {name} must be a whole number from 1 to {upper}, "
                    f"got {value!r}. Pass a value in that range "
                    f"(--{name.replace('_', '-')} on the command line, or the '{name}' key of --config)."
                )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, origin: str = "the configuration") -> ArchConfig:
        """Build a config from a mapping (a parsed ``--config`` file), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"Unknown key(s) {', '.join(map(repr, unknown))} in {origin}: the valid keys are "
                f"{', '.join(sorted(known))}. Remove or rename them."
            )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, int]:
        """The sizes as a plain JSON-ready dict."""
        return dataclasses.asdict(self)

    def subset(self, names: tuple[str, ...]) -> dict[str, int]:
        """Only the sizes an architecture uses (what a manifest records)."""
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of an I/O contract."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    doc: str = ""
    # An input's role (see ROLES), or None for plain data.
    role: str | None = None
    # For integer inputs: generated values lie in [low, high) (for example token ids of an Embedding).
    range: tuple[int, int] | None = None

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbol for every dynamic dimension."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def shape_str(self) -> str:
        """``float32[batch, seq, 10]``."""
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def to_json(self) -> dict[str, Any]:
        """``{name, dtype, shape}`` with symbolic dims as strings (the manifest format), plus ``role``
        and ``range`` where set."""
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.role is not None:
            data["role"] = self.role
        if self.range is not None:
            data["range"] = list(self.range)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        bounds = data.get("range")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data["shape"]),
            role=None if data.get("role") is None else str(data["role"]),
            range=None if bounds is None else (int(bounds[0]), int(bounds[1])),
        )


@dataclass(frozen=True)
class Contract:
    """The resolved I/O contract of one model: concrete sizes, named dynamic axes."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """The ``inputs`` / ``outputs`` sections of a manifest."""
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Contract:
        """Inverse of :meth:`to_json`."""
        return cls(
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        )

    @property
    def input_names(self) -> list[str]:
        """ONNX input names, in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """ONNX output names, in order."""
        return [t.name for t in self.outputs]

    @property
    def lengths_input(self) -> TensorSpec | None:
        """The input with the lengths role, if any."""
        return next((t for t in self.inputs if t.role == LENGTHS), None)


@dataclass(frozen=True)
class StreamingForm:
    """An architecture's own streaming formulation, for state that is not a recurrent layer's.

    ``method`` names a module method that takes the inputs, then ``states`` (in order), and returns
    the outputs, then the updated ``states``; its recurrent layers are carried as for any model.
    ``states`` are templates like the contract's (``name`` is the state's key, so the graph names
    are ``state_in.<name>`` / ``state_out.<name>``); each starts a stream as zeros, which the
    formulation must treat as "nothing seen yet". ``doc`` says what a call returns.
    """

    method: str
    states: tuple[TensorSpec, ...]
    doc: str = ""


@dataclass(frozen=True)
class ArchSpec:
    """Everything rnnexport knows about one registered architecture.

    ``inputs`` and ``outputs`` are templates (see the module docstring). ``build_model`` constructs
    the module; its ``forward`` takes the inputs positionally, in contract order, and returns the
    single output. ``reference`` names the module method that golden data and verification compare
    against: ``forward`` itself, or an independent formulation with the same signature (the
    article's, where ``forward`` is written for export).
    """

    name: str
    summary: str
    source: str
    build_model: Callable[[ArchConfig], torch.nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sizes: tuple[str, ...]
    # Reads the sizes off a state dict's tensor shapes: {"hidden_size": 20, ...}. It reports only
    # what it can read unambiguously and never raises; strict loading catches the rest.
    infer_sizes: Callable[[Mapping[str, tuple[int, ...]]], dict[str, int]]
    atol: float = 1e-5
    rtol: float = 1e-4
    notes: tuple[str, ...] = field(default=())
    reference: str = "forward"
    # How the architecture streams, where its recurrent layers' states do not suffice.
    streaming: StreamingForm | None = None

    def __post_init__(self) -> None:
        # These are programming errors in an architecture module, not user errors.
        config_fields = {f.name for f in dataclasses.fields(ArchConfig)}
        for tensor in self.inputs + self.outputs:
            assert tensor.dtype in DTYPES, f"{self.name}: {tensor.name} has dtype {tensor.dtype}"
            for d in tensor.shape:
                assert isinstance(d, int) or d in DYNAMIC_AXES or d in config_fields, (self.name, d)
        assert set(self.sizes) <= config_fields, self.sizes

    @property
    def default_config(self) -> ArchConfig:
        """The sizes used when none are given (the reference articles' defaults)."""
        return ArchConfig()

    @property
    def default_sizes(self) -> dict[str, int]:
        """The sizes this architecture takes, with their defaults (what ``rnnexport list`` shows)."""
        return self.default_config.subset(self.sizes)

    @property
    def masked(self) -> bool:
        """True when the model takes an input with the lengths role (padded batches)."""
        return any(t.role == LENGTHS for t in self.inputs)

    @property
    def per_step(self) -> bool:
        """True when every output has a sequence axis (one output per input step)."""
        return all(SEQ in t.shape for t in self.outputs)

    def resolve(self, tensor: TensorSpec, config: ArchConfig) -> TensorSpec:
        """A template tensor at concrete sizes (dynamic axes stay symbols)."""
        shape = tuple(
            d if isinstance(d, int) or d in DYNAMIC_AXES else getattr(config, d) for d in tensor.shape
        )
        return dataclasses.replace(tensor, shape=shape)

    def contract(self, config: ArchConfig) -> Contract:
        """The I/O contract for concrete sizes."""
        return Contract(
            tuple(self.resolve(t, config) for t in self.inputs),
            tuple(self.resolve(t, config) for t in self.outputs),
        )
