"""The options of a build, as one value: :class:`BuildOptions`.

The command line and the Python API both make one :class:`BuildOptions` and hand it to
:func:`rnnexport.builder.pipeline.build` or :func:`~rnnexport.builder.pipeline.build_model_artifact`,
which check it once (:meth:`BuildOptions.check`) before any work. Adding an option is a field here,
its command-line parameter, and the code that uses it.

Torch-free: the command line imports this module before it knows whether torch is installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rnnexport.errors import UsageError
from rnnexport.limits import DEFAULT_LIMITS, Limits, check_tolerance
from rnnexport.safeio import check_path

if TYPE_CHECKING:
    from rnnexport.builder.export import ExporterOption
    from rnnexport.runtime.compare import Criterion
    from rnnexport.spec import ArchConfig
    from rnnexport.variants import Format, Precision

__all__ = [
    "LONG_SHAPES",
    "SWEEP_BATCHES",
    "SWEEP_SEED",
    "SWEEP_SEQS",
    "SWEEP_SHAPES",
    "TEST_DATA_SHAPES",
    "BuildOptions",
]

# The shape sweep every build verifies, none equal to the trace shape (batch 2, seq 3; see
# rnnexport.builder.export). --verify-seqs replaces SWEEP_SEQS.
SWEEP_BATCHES = (1, 3, 16)
SWEEP_SEQS = (1, 7, 64, 257)
# Long sequences, where float32 error grows the most (batch, seq); also shipped as test data.
LONG_SHAPES = ((3, 1000),)
# Every (batch, seq) a default build verifies, none equal to the trace shape.
SWEEP_SHAPES = tuple((b, s) for b in SWEEP_BATCHES for s in SWEEP_SEQS) + LONG_SHAPES
# Sweep shapes that also ship as test data: seq 1, a short batch, and long sequences.
TEST_DATA_SHAPES = ((1, 1), (3, 7), (3, 257), *LONG_SHAPES)
SWEEP_SEED = 0
# The most sequence lengths --verify-seqs takes: each is run at every sweep batch size.
MAX_VERIFY_SEQS = 16


def _paths(value: str | Path | Sequence[str | Path] | None) -> tuple[Path, ...]:
    """``--inputs`` as given to the API (one path, several, or none) -> a tuple of paths."""
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        return (Path(value),)
    return tuple(Path(p) for p in value)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build is asked to do besides what it builds (see :func:`rnnexport.build`).

    Paths given as strings are made :class:`~pathlib.Path`; nothing else is checked until
    :meth:`check`, which the build calls once, at the point where a bad option is reported.
    """

    out: Path = Path("dist")
    weights: Path | None = None
    # Sizes (an ArchConfig, a mapping or a JSON file) of an architecture; a user model's kwargs.
    config: ArchConfig | Mapping[str, Any] | str | Path | None = None
    device: str = "auto"
    exporter: ExporterOption = "auto"
    opset: int = 17  # rnnexport.builder.export.DEFAULT_OPSET (asserted there by the pipeline)
    atol: float | None = None
    rtol: float | None = None
    tf32: bool = False
    inputs: tuple[Path, ...] = ()
    force: bool = False
    state_dict_key: str | None = None
    strip_prefix: str | None = None
    ignore_unexpected_keys: bool = False
    rule: str = "oracle"
    precisions: str | Sequence[str] | None = None
    formats: str | Sequence[str] | None = None
    streaming: bool = False
    runtimes: str | Sequence[str] | None = None
    limits: Limits = DEFAULT_LIMITS
    # The sequence lengths the shape sweep verifies at (each at every sweep batch size), comma-separated
    # or a list; None is the default sweep. The long case (batch 3, seq 1000) is always verified too.
    verify_seqs: str | Sequence[int] | None = None

    def __post_init__(self) -> None:
        # The API takes str paths too; the fields hold Paths (a frozen dataclass sets them this way).
        object.__setattr__(self, "out", Path(self.out))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        object.__setattr__(self, "inputs", _paths(cast(Any, self.inputs)))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BuildOptions:
        """The options among a command's parameters, taken by name (an Enum gives its value).

        Parameters that are no option (``quiet``, ``arch``, ...) are left out, so the command line
        passes ``locals()`` and lists no option twice.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        chosen = {k: getattr(v, "value", v) for k, v in params.items() if k in names and v is not None}
        return cls(**chosen)

    @cached_property
    def criterion(self) -> Criterion:
        """The verification rule (checked)."""
        from rnnexport.runtime.compare import RULES, Criterion

        if self.rule not in RULES:
            raise UsageError(
                f"Unknown --rule {self.rule!r}: expected oracle (judge against float64 relative to PyTorch "
                "float32's own error, the default) or tolerance (plain atol/rtol against float32)."
            )
        return Criterion(cast(Any, self.rule))

    @cached_property
    def precision_list(self) -> list[Precision]:
        """The precisions to ship, in their canonical order (checked)."""
        from rnnexport.variants import PRECISIONS, parse_choices

        return cast("list[Precision]", parse_choices(self.precisions, PRECISIONS, option="--precision"))

    @cached_property
    def format_list(self) -> list[Format]:
        """The formats to ship, in their canonical order (checked)."""
        from rnnexport.variants import FORMATS, parse_choices

        return cast("list[Format]", parse_choices(self.formats, FORMATS, option="--format"))

    @cached_property
    def runtime_list(self) -> tuple[str, ...]:
        """The runtimes besides ONNX Runtime that check the shipped model (checked)."""
        from rnnexport.deploy.runtimes import other_runtimes

        return other_runtimes(self.runtimes)

    @cached_property
    def seqs(self) -> tuple[int, ...]:
        """``verify_seqs`` as sorted lengths (checked); the default sweep's when not given."""
        if self.verify_seqs is None:
            return SWEEP_SEQS
        items = self.verify_seqs.split(",") if isinstance(self.verify_seqs, str) else list(self.verify_seqs)
        try:
            seqs = [int(str(item).strip()) for item in items]
        except ValueError:
            seqs = []
        limit = self.limits.io_dim
        if not seqs or any(s < 1 or s > limit for s in seqs) or len(set(seqs)) != len(seqs):
            raise UsageError(
                f"--verify-seqs takes distinct sequence lengths, whole numbers from 1 to {limit:,}, "
                f"comma-separated; got {self.verify_seqs!r}. Each is verified at batch sizes "
                f"{', '.join(map(str, SWEEP_BATCHES))} (and batch 3, seq 1000 always), for example "
                f"--verify-seqs {','.join(map(str, SWEEP_SEQS))},16000."
            )
        if len(seqs) > MAX_VERIFY_SEQS:
            raise UsageError(
                f"--verify-seqs gives {len(seqs)} sequence lengths; at most {MAX_VERIFY_SEQS} are verified, "
                f"each at batch sizes {', '.join(map(str, SWEEP_BATCHES))}. Choose the lengths that matter "
                "most: the shortest, the longest your users send, and one or two between."
            )
        return tuple(sorted(seqs))

    @property
    def sweep_shapes(self) -> tuple[tuple[int, int], ...]:
        """Every (batch, seq) the build verifies at, in order (the memory estimate counts them)."""
        return tuple((b, s) for b in SWEEP_BATCHES for s in self.seqs) + LONG_SHAPES

    def check(self) -> None:
        """Refuse, with a one-paragraph message, options that are wrong whatever is built."""
        from rnnexport.builder.export import EXPORTER_OPTIONS

        if self.exporter not in EXPORTER_OPTIONS:
            raise UsageError(
                f"Unknown exporter {self.exporter!r}: expected one of {', '.join(EXPORTER_OPTIONS)} (auto "
                "tries the measured better one first and falls back to the other where it cannot export "
                "the model)."
            )
        if not 7 <= self.opset <= 21:
            raise UsageError(
                f"--opset must be between 7 and 21 (17 is the tested default), got {self.opset}."
            )
        for name, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None:
                check_tolerance(f"--{name}", value)
        for option, path in [("--weights", self.weights), *(("--inputs", p) for p in self.inputs)]:
            if path is not None:
                check_path(path, what=option)
        self._check_variants()
        self.seqs  # noqa: B018 (checks them)
        self._check_weight_options()

    def _check_variants(self) -> None:
        """The rule and the variants; a streaming build ships float32 ONNX only (its variants are not
        verified as streams)."""
        self.criterion  # noqa: B018 (checks it)
        precisions, formats = self.precision_list, self.format_list
        if self.streaming and (precisions != ["fp32"] or formats != ["onnx"]):
            raise UsageError(
                f"--streaming builds ship model.onnx in float32 only; got --precision {','.join(precisions)} "
                f"--format {','.join(formats)}. Their chained state is verified for that file alone. Leave "
                "--precision and --format out with --streaming, or build the variants without --streaming."
            )

    def _check_weight_options(self) -> None:
        """The options that say how to read a checkpoint need one."""
        given = [
            option
            for option, value in (
                ("--state-dict-key", self.state_dict_key is not None),
                ("--strip-prefix", self.strip_prefix is not None),
                ("--ignore-unexpected-keys", self.ignore_unexpected_keys),
            )
            if value
        ]
        if self.weights is None and given:
            one = len(given) == 1
            raise UsageError(
                f"{' and '.join(given)} say{'s' if one else ''} how to read a checkpoint, but no "
                f"--weights was given. Pass --weights FILE, or leave {'it' if one else 'them'} out."
            )
