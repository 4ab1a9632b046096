"""Text taken from inputs, made safe to show on a terminal or in a page.

A leaf, a bundle or a log's reply can hold characters that a terminal or a browser acts
on rather than shows: C0 controls (a newline forges a line of output, ESC starts a
terminal escape sequence), DEL and C1 controls (0x9B is CSI on many terminals), format
characters (a bidi override shows "0001" as "1000") and the Unicode line and paragraph
separators. :func:`visible` writes each of them as a JSON-style escape (``\\u001b``), so
what is shown is what the input says, character for character.
"""

from __future__ import annotations

import unicodedata

__all__ = ["visible"]

_ACTED_ON = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def visible(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control, format or separator character escaped (newlines
    kept when ``newlines`` is true)."""
    if text.isprintable():  # the usual case: nothing to escape
        return text
    category = unicodedata.category
    return "".join(
        c if (c == "\n" and newlines) or c == " " or category(c) not in _ACTED_ON else _escape(c)
        for c in text
    )
