"""A build stage as the progress display sees it: timed, with details and a verdict."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rnnexport.progress import Progress

__all__ = ["StageReport", "timed_stage"]


class StageReport:
    """What a running stage reports: details to show, more for a verbose display, and whether it
    succeeded."""

    def __init__(self) -> None:
        self.details: list[str] = []
        self.more: list[str] = []
        self.ok = True


@contextmanager
def timed_stage(progress: Progress, name: str, total: int | None = None) -> Iterator[StageReport]:
    """Time a stage and report its start and (when it did not raise) its end to ``progress``."""
    start = time.perf_counter()
    report = StageReport()
    progress.stage_started(name, total)
    yield report
    elapsed = time.perf_counter() - start
    progress.stage_finished(name, report.ok, "; ".join(report.details), elapsed, more=report.more)
