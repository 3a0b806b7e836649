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

__all__ = ["first_line", "visible"]

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
