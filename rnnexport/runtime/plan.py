"""What a verification runs and how it decides, as one value: the :class:`VerificationPlan`.

A build and ``rnnexport verify`` both ask the same question of a model on a provider: do these cases
give these outputs, under this rule, within these tolerances? The plan holds every part of that
question. It is built in exactly one place per side (from the build's cases and references on the
torch side, from ``manifest.json`` and the shipped test data on the target) and handed whole to
:func:`rnnexport.runtime.compare.verify_on_device`, the bounded worker, the variant checks and the
other runtimes' checks, so that the two sides cannot assemble it differently.

Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rnnexport.feeds import Case, Feeds
from rnnexport.runtime import Device
from rnnexport.runtime.compare import Criterion, Tolerance

__all__ = ["VerificationPlan"]


@dataclass(frozen=True)
class VerificationPlan:
    """The cases to run, the references they are judged against, and the rule that judges.

    ``cases`` carry their inputs and PyTorch float32 outputs; ``float64`` maps a case's name to its
    float64 reference outputs (the oracle rule's reference; empty under the tolerance rule).
    ``tolerances`` holds one :class:`Tolerance` per device that may run. ``tf32`` is the build's
    choice to let CUDA use TF32 matrix maths (at a looser CUDA tolerance); :meth:`tf32_for` says
    where it applies. ``seq_axes`` names each output's time axis, for the per-bucket error report.
    ``chains`` lists streaming cases that are consecutive calls of one stream, and ``state_pairs``
    maps each state output to the state input it feeds (both empty for a stateless model).
    """

    cases: tuple[Case, ...]
    criterion: Criterion
    tolerances: Mapping[Device, Tolerance]
    float64: Mapping[str, Feeds] = field(default_factory=dict)
    seq_axes: Mapping[str, int] = field(default_factory=dict)
    tf32: bool = False
    chains: tuple[tuple[str, ...], ...] = ()
    state_pairs: Mapping[str, str] = field(default_factory=dict)

    def tolerance(self, device: Device) -> Tolerance:
        """The tolerance that applies on ``device``."""
        return self.tolerances[device]

    def tf32_for(self, device: Device) -> bool:
        """Whether the provider for ``device`` may use TF32: only CUDA has it, and only when asked."""
        return self.tf32 and device == "cuda"

    def with_tolerances(self, tolerances: Mapping[Device, Tolerance]) -> VerificationPlan:
        """The same plan judged at other tolerances (a variant's precision has its own)."""
        return dataclasses.replace(self, tolerances=dict(tolerances))

    def with_cases(self, cases: Sequence[Case]) -> VerificationPlan:
        """The same plan over other cases (float64 references are looked up by case name)."""
        return dataclasses.replace(self, cases=tuple(cases))
