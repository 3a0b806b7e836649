"""The build's :class:`~rnnexport.runtime.plan.VerificationPlan`, made in exactly one place.

Every check of the build (each provider, the other runtimes, each variant) runs this one plan, so
they cannot disagree on the cases, the references, the rule or the tolerances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rnnexport.feeds import Case, Feeds
from rnnexport.runtime import Device
from rnnexport.runtime.compare import Criterion, Tolerance
from rnnexport.runtime.oracle import seq_axes
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.spec import Contract

__all__ = ["TF32_TOLERANCE", "plan_for_build"]

# TF32 keeps 10 mantissa bits: about 1e-3 relative error per product, which recurrences compound.
TF32_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2)


def plan_for_build(
    cases: Sequence[Case],
    contract: Contract,
    *,
    criterion: Criterion,
    tolerances: Mapping[Device, Tolerance],
    float64: Mapping[str, Feeds],
    tf32: bool,
    chains: Sequence[Sequence[str]] = (),
    state_pairs: Mapping[str, str] | None = None,
) -> VerificationPlan:
    """The plan the build verifies with: its cases and float64 references under ``criterion``, at
    ``tolerances``; a streaming model's ``chains`` of case names and the state each output feeds."""
    return VerificationPlan(
        cases=tuple(cases),
        criterion=criterion,
        tolerances=dict(tolerances),
        float64=dict(float64),
        seq_axes=seq_axes(contract),
        tf32=tf32,
        chains=tuple(tuple(chain) for chain in chains),
        state_pairs=dict(state_pairs or {}),
    )
