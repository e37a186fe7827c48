"""Small text helpers shared by option parsers (listener strings, plugin arguments)."""

from __future__ import annotations


def split_colons(text: str, keep_escapes: bool) -> list[str]:
    """Split on ':' not escaped by a backslash, as Twisted's endpoint strings do.

    ``keep_escapes`` leaves ``\\:`` in the parts (for text Twisted parses again);
    otherwise the escaping backslash is dropped.
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2] if keep_escapes else text[i + 1])
            i += 2
            continue
        if ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts
