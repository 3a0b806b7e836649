"""What a long-running operation tells whoever watches it. Torch-free; the CLI implements it.

The library never prints: :func:`rnnexport.builder.pipeline.build` reports each stage's start, its progress
(verification cases done out of the total) and its end to an object with these three methods, and
the command line turns them into a live display or plain lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Progress", "SilentProgress"]


class Progress(Protocol):
    """Receives stage events, in order: started, any number of advanced, finished."""

    def stage_started(self, stage: str, total: int | None = None) -> None:
        """``stage`` began; ``total`` is its count of work items when it has one."""

    def advanced(self, done: int) -> None:
        """``done`` items of the current stage are finished."""

    def stage_finished(
        self, stage: str, ok: bool, detail: str, seconds: float, more: Sequence[str] = ()
    ) -> None:
        """``stage`` ended (``ok`` False when it failed its check); ``detail`` says what it did in a
        line, ``more`` in lines worth showing only to whoever asked for every detail."""


class SilentProgress:
    """A :class:`Progress` that ignores everything (the default of the Python API)."""

    def stage_started(self, stage: str, total: int | None = None) -> None:
        """Ignored."""

    def advanced(self, done: int) -> None:
        """Ignored."""

    def stage_finished(
        self, stage: str, ok: bool, detail: str, seconds: float, more: Sequence[str] = ()
    ) -> None:
        """Ignored."""
