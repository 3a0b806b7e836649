"""Recording (``bench.json`` into the artifact, listed in its manifest) and plotting a report."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from rnnexport.artifact import BENCH_FILE, MANIFEST, check_files, sha256_file
from rnnexport.artifact.untrusted import read_manifest
from rnnexport.bench.report import BenchReport
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.safeio import describe_os_error
from rnnexport.text import capped


def check_recordable(folder: Path | str) -> None:
    """Refuse, before anything is measured, to ``--record`` into a folder that cannot take the result.

    ``bench.json`` and the manifest are replaced through temporary files beside them: one is created
    and removed here, as the recording will, so a read-only artifact is refused up front.
    """
    folder = Path(folder)
    present = folder / BENCH_FILE
    if (os.path.lexists(present) and not present.is_file()) or present.is_symlink():
        raise UsageError(
            f"--record writes {present}, which is not a plain file. Remove it, or drop --record."
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{BENCH_FILE}.", dir=folder)
        os.close(handle)
        Path(temporary).unlink()
    except OSError as exc:
        raise UsageError(
            f"--record writes {BENCH_FILE} into {folder} and lists it in the manifest, but the folder "
            f"cannot be written ({describe_os_error(exc)}). Make it writable, or drop --record "
            "(--json prints every figure)."
        ) from None


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it and a rename: readers see old or new, never half."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise UsageError(
            f"Cannot write {path} ({describe_os_error(exc)}). Make the folder writable, or drop --record."
        ) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def record_bench(folder: Path | str, report: BenchReport) -> Path:
    """Write ``bench.json`` into the artifact and list its sha256 in the manifest; return its path.

    Only ``bench.json``'s entry in the manifest changes: every other file must still match the
    manifest first (re-hashing a tampered artifact would hide the tampering), so this refuses an
    artifact that ``rnnexport verify`` would refuse. Afterwards verify passes and catches any later
    change to ``bench.json``.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise UsageError(f"{folder} is not a folder. Pass the artifact folder that 'rnnexport build' wrote.")
    manifest, _ = read_manifest(folder)
    others = {k: v for k, v in manifest.files.items() if k != BENCH_FILE}
    present = folder / BENCH_FILE
    if present.is_symlink():
        raise ArtifactError(f"{present} is a symbolic link; refusing to write through it.")
    problems = [p for p in check_files(folder, others) if f"'{BENCH_FILE}'" not in p]
    if problems:
        raise ArtifactError(
            f"Not recording into {folder}: it does not match its manifest ({capped(problems)}), and "
            "re-hashing would hide that. Rebuild the artifact or copy it again, then record."
        )
    text = json.dumps(report.to_json(), indent=2) + "\n"
    _replace_atomically(present, text)
    files = dict(sorted({**others, BENCH_FILE: sha256_file(present)}.items()))
    _replace_atomically(
        folder / MANIFEST, json.dumps(dataclasses.replace(manifest, files=files).to_json(), indent=2) + "\n"
    )
    return present


def require_matplotlib() -> None:
    """Raise :class:`UsageError` naming the package when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed here: pip install matplotlib (or "
            "pip install 'rnnexport[bench]'). The benchmark itself runs without it; drop --plot."
        ) from None


def plot_latency(report: BenchReport, path: Path) -> Path:
    """A PNG of latency (best-round median) against sequence length: one panel per batch, one line
    per runtime. The best round is the figure speedups use, and the one load disturbs least."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = report.rows()
    batches = sorted({r["batch"] for r in rows})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches, strict=True):
        for runtime in dict.fromkeys(r["runtime"] for r in rows):
            points = sorted(
                (r["seq"], r["best_round_p50_ms"])
                for r in rows
                if r["runtime"] == runtime and r["batch"] == batch
            )
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=runtime)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel("latency, best-round median (ms)")
        axis.set_title(f"{report.data['arch']}, batch {batch}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        raise UsageError(
            f"Cannot write the plot to {path}: {exc.strerror or exc}. Choose another path."
        ) from None
    finally:
        plt.close(figure)
    return path
