"""SIGTERM and SIGHUP handled like Ctrl-C: the same cleanup, a message, and a 128+N exit code.

``timeout``, ``docker stop`` and a cancelled CI job send SIGTERM; a closed terminal sends SIGHUP.
Python's default for both is to die on the spot, skipping every ``finally``: staging folders and
created ``--out`` folders stay behind. Inside :func:`signals_as_interrupts` they raise
:class:`Interrupted`, a :class:`KeyboardInterrupt`, so every cleanup path written for Ctrl-C runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = [
    "HANDLED",
    "Interrupted",
    "describe",
    "exit_code",
    "mark_reported",
    "received",
    "reported",
    "signals_as_interrupts",
]

HANDLED = (signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []
_reported: list[bool] = []


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    # Ignore repeats while cleanup runs: a second SIGTERM must not cut the cleanup short.
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_IGN)
    raise Interrupted(signum)


def received() -> int | None:
    """The first handled signal that arrived (SIGINT counts as none), or None."""
    return _received[0] if _received else None


def mark_reported() -> None:
    """Record that the interruption was already reported to the user (one message, not two)."""
    _reported.append(True)


def reported() -> bool:
    """Whether :func:`mark_reported` was called."""
    return bool(_reported)


def exit_code(exc: BaseException | None = None) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    signum = exc.signum if isinstance(exc, Interrupted) else received()
    return 128 + (signum if signum is not None else signal.SIGINT)


def describe(exc: BaseException | None = None) -> str:
    """``SIGTERM`` / ``SIGHUP`` / ``Ctrl-C``, for messages."""
    signum = exc.signum if isinstance(exc, Interrupted) else received()
    return signal.Signals(signum).name if signum is not None else "Ctrl-C"


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted`; the old handlers come back after."""
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for s, handler in previous.items():
        if handler is signal.SIG_DFL:  # a signal the caller ignores (nohup) stays ignored
            signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
