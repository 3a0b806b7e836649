"""Re-verification of a shipped artifact: :func:`verify_artifact`, its :class:`ArtifactReport`, and
:func:`plan_from_manifest`, the one place the target side builds its verification plan.

Torch-free: it runs on the target machine with only ONNX Runtime, onnx and numpy installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnexport.artifact.manifest import EXTERNAL_DATA, Manifest
from rnnexport.artifact.untrusted import checked_artifact
from rnnexport.feeds import Case, Feeds, axis_ranges
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.runtime import DEVICES, Device, resolve_devices
from rnnexport.runtime.compare import Criterion, ProviderResult
from rnnexport.runtime.openvino import runtime_note, verify_openvino
from rnnexport.runtime.oracle import seq_axes
from rnnexport.runtime.plan import VerificationPlan
from rnnexport.runtime.worker import verify_with_deadline
from rnnexport.streaming import Streaming
from rnnexport.variants.check import VariantResult, verify_shipped_variants

__all__ = ["UNLISTED_SHOWN", "ArtifactReport", "plan_from_manifest", "verify_artifact"]

# How many unlisted files a report names before it says "and K more".
UNLISTED_SHOWN = 20


@dataclass(frozen=True)
class ArtifactReport:
    """The outcome of :func:`verify_artifact`: one result per requested device."""

    directory: Path
    manifest: Manifest
    results: dict[Device, ProviderResult]
    notes: list[str] = field(default_factory=list)
    manifest_sha256: str = ""
    # Every shipped variant other than model.onnx, by file name.
    variants: dict[str, VariantResult] = field(default_factory=dict)
    # The size of model.onnx.data (verified) when the weights are external data; None otherwise.
    external_data_bytes: int | None = None
    # Regular files in the folder that the manifest does not list and nothing loads (.DS_Store): not
    # part of what was verified, so reported, never opened.
    unlisted: list[str] = field(default_factory=list)
    # The test cases and float64 references read (hash-checked) and run: what a deploy target reuses.
    cases: list[Case] = field(default_factory=list)
    float64: dict[str, Feeds] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every requested device verified, for model.onnx and every shipped variant."""
        ran = bool(self.results) and all(r.status == "passed" for r in self.results.values())
        return ran and all(v.passed for v in self.variants.values())

    def to_json(self) -> dict[str, Any]:
        """Machine-readable summary."""
        return {
            "artifact": str(self.directory),
            "arch": self.manifest.arch,
            "passed": self.passed,
            "files": "ok",
            # Capped: a folder may hold thousands of stray files, the report names the first few.
            "unlisted": self.unlisted[:UNLISTED_SHOWN],
            "unlisted_more": max(0, len(self.unlisted) - UNLISTED_SHOWN),
            "manifest_sha256": self.manifest_sha256,
            "notes": self.notes,
            "tolerance": {d: r.tolerance.to_json() for d, r in self.results.items()},
            "providers": {
                r.provider: {
                    **r.to_json(),
                    "axes": axis_ranges(self.manifest.contract, r.to_json()["shapes"]),
                }
                for r in self.results.values()
            },
            "variants": {name: v.to_json() for name, v in self.variants.items()},
            "external_data": None
            if self.external_data_bytes is None
            else {"file": EXTERNAL_DATA, "bytes": self.external_data_bytes},
        }


def plan_from_manifest(
    manifest: Manifest, cases: Sequence[Case], float64: Mapping[str, Feeds]
) -> VerificationPlan:
    """The plan an artifact is verified by on the target: its test data (``cases`` and their
    ``float64`` references, read and hash-checked), judged as the manifest records it was judged.

    The rule and tolerances per device, TF32 and the sequence axes come from the manifest; a
    streaming artifact's chains are replayed, each first call starting from the states' initial
    values (zeros, or the shipped ``initial_state/`` tensors), every later call from what the
    provider returned. The one place the target side builds a plan.
    """
    streaming = (
        None
        if manifest.streaming is None
        else Streaming.from_json(manifest.streaming, lambda condition, what: None)
    )
    return VerificationPlan(
        cases=tuple(cases),
        criterion=Criterion.from_json(manifest.verification.get("rule")),
        tolerances={d: manifest.tolerance(d) for d in DEVICES},
        float64=dict(float64),
        seq_axes=seq_axes(manifest.contract),
        tf32=bool(manifest.verification.get("tf32", False)),
        chains=() if streaming is None else streaming.chains,
        state_pairs={} if streaming is None else streaming.pairs,
    )


def verify_artifact(
    folder: Path | str,
    *,
    device: str = "auto",
    expect_sha256: str | None = None,
    time_limit: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
    runtime: str = "onnxruntime",
) -> ArtifactReport:
    """Re-check a shipped artifact: file hashes, I/O contract, and outputs on the provider that runs.

    Raises :class:`ArtifactError` when the folder itself is wrong (tampered, extra, missing or
    oversized files, links, pipes or devices, external data, a manifest that disagrees with the
    model); returns a report with one :class:`ProviderResult` per device otherwise. The caller
    decides what a non-passing result means. ``expect_sha256`` pins the manifest (and through its
    hashes, every file); ``time_limit`` bounds each provider's run in seconds (default: a base plus
    time in proportion to the model's size, see :class:`~rnnexport.limits.Limits`). ``runtime``
    "openvino" runs the test data on OpenVINO's CPU plugin instead (:mod:`rnnexport.runtime.openvino`).
    """
    openvino = runtime == "openvino"
    run_one: Callable[..., ProviderResult] = verify_openvino if openvino else verify_with_deadline
    with checked_artifact(folder, limits=limits, expect_sha256=expect_sha256) as checked:
        manifest, notes = checked.manifest, checked.notes
        plan = plan_from_manifest(manifest, checked.cases, checked.float64)
        seconds = time_limit if time_limit is not None else limits.run_seconds(checked.model_bytes)
        devices: list[Device] = ["cpu"] if openvino else resolve_devices(device)
        if openvino:
            notes.append(runtime_note())
        results = {d: run_one(checked.source, plan, device=d, seconds=seconds) for d in devices}
        variants = verify_shipped_variants(
            checked.folder,
            manifest.variants,
            checked.contents,
            plan,
            run=functools.partial(run_one, seconds=seconds),
            contract=manifest.contract,
            devices=devices,
        )
        return ArtifactReport(
            checked.folder,
            manifest,
            results,
            notes=notes,
            manifest_sha256=checked.manifest_sha256,
            variants=variants,
            external_data_bytes=checked.data_size,
            unlisted=checked.unlisted,
            cases=checked.cases,
            float64=checked.float64,
        )
