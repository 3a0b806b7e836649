"""Every bound rnnexport enforces, in one place, so ``build`` and ``verify`` apply the same ones.

Torch-free. The numbers are defaults; functions that enforce them take a :class:`Limits` so tests
(and careful callers) can pass smaller ones instead of producing gigabytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rnnexport.errors import RnnExportError, UsageError

__all__ = [
    "DEFAULT_LIMITS",
    "INT64_RANGE",
    "PROTOBUF_LIMIT",
    "TOLERANCE_RANGE",
    "Limits",
    "available_memory",
    "check_tolerance",
    "format_bytes",
]

# A serialized protobuf message (a single-file .onnx) cannot reach 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1
# An integer input's "range" in io.json: generated as int64.
INT64_RANGE = (-(2**63), 2**63 - 1)
# build accepts --atol/--rtol in [0, 1); verify accepts exactly the same range from a manifest.
TOLERANCE_RANGE = (0.0, 1.0)

_MiB = 1 << 20
_GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Size and time bounds on what rnnexport reads and runs."""

    config_bytes: int = 64 * 1024  # --config: a handful of sizes
    manifest_bytes: int = 16 * _MiB
    model_bytes: int = PROTOBUF_LIMIT
    # Above this many bytes of weights, build writes them to ONNX external data (model.onnx.data)
    # instead of into model.onnx. 128 MiB under protobuf's limit: the graph, tensor names, metadata
    # (the contract, the config) and each tensor's protobuf framing must fit beside the weights, and
    # the exporter may keep a few small constants the parameter count does not see.
    inline_model_bytes: int = PROTOBUF_LIMIT - 128 * _MiB
    # model.onnx.data on the target: verify streams it (hashing and copying, never whole in memory).
    external_data_bytes: int = 64 * _GiB
    test_data_bytes: int = 256 * _MiB  # one .pb file (the largest legitimate one is ~13 MB)
    artifact_bytes: int = PROTOBUF_LIMIT + 65 * _GiB  # the whole folder: model, its data, test data
    artifact_entries: int = 10_000  # files and folders in an artifact
    inputs_file_bytes: int = 1024 * _MiB  # --inputs on disk
    inputs_bytes: int = 64 * _MiB  # --inputs decompressed: every array, summed
    golden_bytes: int = 64 * _MiB  # one golden file
    # An I/O description (io.json): elements per batch row and time step, summed over the inputs
    # (the default sweep generates up to 16 x 257 such positions, so at most 1 GiB of float32 inputs;
    # a build checks the memory its --verify-seqs ask for before it starts), the
    # rank of one tensor, and any fixed size (an ONNX dim, and no tensor of more fits in memory).
    io_step_elements: int = 1 << 16
    io_rank: int = 16
    io_dim: int = 2**31 - 1
    # Seconds one provider may take to load and run an artifact's test data: a base, plus time in
    # proportion to the model's size (a 2 GB model needs minutes on one CPU core, a 1 kB one none).
    run_seconds_base: float = 30.0
    run_seconds_per_mb: float = 0.25

    # rnnexport bench: one timed call at batch B and sequence length S may take the base plus 1 ns
    # per byte of model per row and step (far above what a real recurrent model costs: each step
    # reads each weight about once), and one call's inputs and outputs may hold this many bytes.
    bench_call_seconds_base: float = 5.0
    bench_call_seconds_per_byte_step: float = 1e-9
    bench_tensor_bytes: int = 4 * _GiB

    def run_seconds(self, model_bytes: int) -> float:
        """The time bound for running a model of ``model_bytes`` bytes on one provider."""
        return self.run_seconds_base + self.run_seconds_per_mb * model_bytes / 1e6

    def bench_call_seconds(self, model_bytes: int, batch: int, seq: int) -> float:
        """The time bound for one call of a model of ``model_bytes`` bytes at ``batch`` x ``seq``."""
        return (
            self.bench_call_seconds_base + self.bench_call_seconds_per_byte_step * model_bytes * batch * seq
        )


DEFAULT_LIMITS = Limits()


def format_bytes(count: float) -> str:
    """``1.5 GiB``, ``340 MiB``, ``12 KiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size  # 1000-1023 of a unit: whole numbers, not 1.02e+03
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(count)} bytes"


def check_tolerance(
    name: str, value: object, *, origin: str = "", error: type[RnnExportError] = UsageError
) -> float:
    """``value`` as a tolerance, or ``error``: a real number in [0, 1) (NaN, inf and bools refused).

    ``build`` checks ``--atol``/``--rtol`` with it and ``verify`` the manifest's tolerances, so an
    artifact can never claim a tolerance its build would have refused.
    """
    low, high = TOLERANCE_RANGE
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not low <= number < high:  # NaN fails both comparisons
        where = f" ({origin})" if origin else ""
        raise error(
            f"{name} must be a number in [0, 1), got {value!r}{where}. The defaults are atol 1e-5, rtol 1e-4."
        )
    return float(number)


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as the system says; None when unknown.

    The smallest of: the kernel's ``MemAvailable``, the cgroup's limit minus its usage (containers),
    and ``RLIMIT_AS`` / ``RLIMIT_DATA`` minus what is mapped now.
    """
    candidates: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text(encoding="ascii").strip()
            usage = Path(usage_file).read_text(encoding="ascii").strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                candidates.append(max(0, int(limit) - int(usage)))
            break
        except (OSError, ValueError):
            continue
    try:
        import resource

        mapped = 0
        try:
            statm = Path("/proc/self/statm").read_text(encoding="ascii")
            mapped = int(statm.split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            soft, _ = resource.getrlimit(which)
            if soft != resource.RLIM_INFINITY:
                candidates.append(max(0, soft - mapped))
    except ImportError:  # pragma: no cover - not POSIX
        pass
    return min(candidates) if candidates else None
