"""Making untrusted text safe to show on a terminal.

Checkpoint keys, manifest entries, file names and paths come from files rnnexport did not write. A
string such as ``"\\x1b[2J\\x1b[H\\x1b[32mALL CHECKS PASSED"`` would clear the screen and draw a fake
verdict; OSC 52 sequences can write the clipboard; bidirectional overrides can reorder what is read.
:func:`visible` turns every such character into a printable escape, so what reaches the terminal is
exactly what is in the file, made visible.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["PROBLEMS_SHOWN", "capped", "first_line", "first_of", "visible"]

# A message lists at most this many problems (then "and K more"), each cut to ITEM_CHARS: a manifest
# naming 100,000 missing files is one short paragraph, in the console and in --json alike.
PROBLEMS_SHOWN = 10
ITEM_CHARS = 1000

# C0 controls (tab and newline included: one message is one paragraph), DEL, C1 controls, and the
# Unicode format characters that reorder or hide text (bidi embeddings, overrides and isolates).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


# Colour and cursor sequences that libraries put in their own exception messages (torch.export does).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(exc: BaseException, *, default: str = "") -> str:
    """The first non-empty line of an exception's message, without terminal colour codes.

    For quoting a third-party library's error inside one of rnnexport's one-paragraph messages.
    """
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else (default or type(exc).__name__)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """``str(text)`` with every control or invisible formatting character replaced by its escape."""
    # NFC first, so a character cannot hide as a base plus a combining mark that renders as a control.
    return _UNSAFE.sub(_escape, unicodedata.normalize("NFC", str(text)))


def first_of(items: Iterable[str], limit: int = PROBLEMS_SHOWN) -> list[str]:
    """The first ``limit`` items, each cut to :data:`ITEM_CHARS`, then ``"and K more"`` if any were left out.

    Every list of problems a message shows goes through this (or :func:`capped`): what a file lists is
    unbounded, what a message shows is not.
    """
    shown: list[str] = []
    rest = 0
    for item in items:
        if len(shown) < limit:
            shown.append(item if len(item) <= ITEM_CHARS else item[:ITEM_CHARS].rstrip() + " [...]")
        else:
            rest += 1
    return shown + ([f"and {rest:,} more"] if rest else [])


def capped(items: Iterable[str], *, sep: str = "; ", limit: int = PROBLEMS_SHOWN) -> str:
    """``sep.join(first_of(items, limit))``: a list of problems for a message, bounded."""
    return sep.join(first_of(items, limit))
