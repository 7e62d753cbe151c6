"""One line of Python source as the audit sees it: where its comment starts, and its code with
comments and whitespace normalised away (what a baseline entry and a SARIF fingerprint hash, so
editing a comment or re-indenting a flagged line does not make its finding new).

    comment_start('x = "#"  # why')  -> 9
    normalise("if n <= 2048:   # arfuse: ignore[ARF102]")  -> "if n<=2048:"
"""

from __future__ import annotations

import re


def comment_start(line: str) -> int:
    """Index of the `#` that starts the line's comment (-1: none); `#` in strings is not one."""
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif line.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif c in "'\"":
            quote = line[i : i + 3] if line[i : i + 3] in ('"""', "'''") else c
            i += len(quote) - 1
        elif c == "#":
            return i
        i += 1
    return -1


_SPACE = re.compile(r"\s+")
_WORD_GAP = re.compile(r"(?<=\w) (?=\w)")


def normalise(line: str) -> str:
    """The code of `line` without its comment; whitespace dropped except one blank between two
    words (`if n` stays `if n`, `n <= 2048` becomes `n<=2048`)."""
    at = comment_start(line)
    code = line if at < 0 else line[:at]
    squeezed = _SPACE.sub(" ", code.strip())
    # blanks between two word characters separate tokens; all others are layout
    kept = _WORD_GAP.sub("\0", squeezed).replace(" ", "")
    return kept.replace("\0", " ")
