"""The measuring child's job: the checked artifact's bytes and the options, with the time bounds."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnexport.artifact import EXTERNAL_DATA, MODEL, CheckedArtifact, Manifest
from rnnexport.bench.timing import SETTLE_SECONDS
from rnnexport.feeds import Case, Feeds
from rnnexport.limits import Limits
from rnnexport.runtime import Device
from rnnexport.variants import shipped_variants


@dataclass(frozen=True)
class _Job:
    """What the measuring child process gets: the checked artifact's bytes, never its folder, and the
    options. ``folder`` names the artifact in messages and the report; nothing is read from it."""

    folder: Path
    manifest: Manifest
    model: bytes  # model.onnx, as hashed
    source: bytes | Path  # what ONNX Runtime loads: those bytes, or their private copy's path
    private: Path | None  # the private folder holding the checked model.onnx.data, if any
    variants: dict[str, bytes]
    cases: list[Case]
    initial: Feeds
    shapes: list[tuple[int, int]]
    device: Device
    weights: Path | None
    user_model: str | None
    runtimes: tuple[str, ...]
    variant_runtimes: bool
    settings: bool
    ragged: bool
    rounds: int
    repeats: int
    burst_seconds: float
    torch_threads: int | None
    torch_here: bool
    limits: Limits
    time_limit: float | None

    def setup_seconds(self) -> tuple[float, str]:
        """The bound of a step that loads or rebuilds the model (verify's for running its test data),
        and how it was chosen."""
        if self.time_limit is not None:
            return self.time_limit, "--time-limit"
        size = len(self.model) + self.external_bytes()
        return self.limits.run_seconds(size), f"the bound 'rnnexport verify' gives a {size:,}-byte model"

    def loadable(self) -> bytes | str:
        """What ONNX Runtime loads the artifact's model from: its checked bytes, or the private copy's
        path when external data lies beside it (a path, so that ONNX Runtime finds the data)."""
        return str(self.source) if isinstance(self.source, Path) else self.source

    def external_bytes(self) -> int:
        return 0 if self.private is None else (self.private / EXTERNAL_DATA).stat().st_size

    def burst_seconds_bound(self, batch: int, seq: int) -> tuple[float, str]:
        """The bound of one burst at ``batch`` x ``seq``, and how it was derived: the burst's own time
        plus 4 calls (2 untimed warm-up calls, one started just before the burst's time ends, and the
        2nd timed call of a slow shape), each within :meth:`Limits.bench_call_seconds`."""
        if self.time_limit is not None:
            return self.time_limit, "--time-limit"
        size = len(self.model) + self.external_bytes()
        call = self.limits.bench_call_seconds(size, batch, seq)
        why = (
            f"derived from the grid: a {self.burst_seconds:g} s burst of up to {self.repeats} timed calls "
            f"plus 4 calls of at most {call:.3g} s at batch {batch}, seq {seq} "
            f"({self.limits.bench_call_seconds_base:g} s + {self.limits.bench_call_seconds_per_byte_step:g} "
            f"s per byte of the {size:,}-byte model per row and step)"
        )
        return self.burst_seconds + SETTLE_SECONDS + 4 * call, why


def _job(checked: CheckedArtifact, **options: Any) -> _Job:
    """The child's job: the checked bytes (``model.onnx`` from the private copy when it has external
    data beside it) and the options; whether torch is importable is decided here, in the caller."""
    try:
        torch_here = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a module entry without a spec: not importable
        torch_here = False
    variants = {
        v.file: checked.contents[v.file]
        for v in shipped_variants(checked.folder, checked.manifest.variants, checked.manifest.files)
    }
    return _Job(
        folder=checked.folder,
        manifest=checked.manifest,
        model=checked.contents[MODEL],
        source=checked.source,
        private=checked.source.parent if isinstance(checked.source, Path) else None,
        variants=variants,
        cases=checked.cases,
        initial=checked.initial,
        torch_here=torch_here,
        **options,
    )
