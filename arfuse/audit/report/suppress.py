"""Inline suppressions at the flagged line, ruff's `# noqa` idea:

    if n <= 2048:  # arfuse: ignore[ARF102]          one code
    if n <= 2048:  # arfuse: ignore[ARF101, ARF102]  several
    if n <= 2048:  # arfuse: ignore                  every finding at this line
    if n <= 2048:  # noqa: ARF102, E501              ruff's form (codes other than ARF* are ruff's)

A finding is suppressed when its line carries a suppression naming its code (or the bare form).
A suppression that suppressed nothing is itself reported (ARF901, like ruff's RUF100), so they
cannot rot - but only for codes whose rule ran: `--select ARF2` does not call an ARF102
suppression (or a bare one) unused. A bare `# noqa` (no codes) is ruff's, not arfuse's.

The line is read from the file when it exists here (the code under review), else from the
source line the trace recorded (an offline audit of another machine's log).
"""

from __future__ import annotations

import linecache
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from arfuse.audit.findings import Finding
from arfuse.audit.report.source_line import comment_start

_ARFUSE = re.compile(r"#\s*arfuse:\s*ignore\b(?:\[(?P<codes>[^\]]*)\])?", re.I)
_NOQA = re.compile(r"#\s*noqa:\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*)", re.I)
_CODE = re.compile(r"ARF[0-9]+$")


@dataclass(frozen=True)
class Suppression:
    path: str
    line: int
    codes: frozenset[str]  # empty: the bare form, every code
    comment: str  # as written, for messages ("# arfuse: ignore[ARF102]")

    def covers(self, code: str) -> bool:
        return not self.codes or code in self.codes


def parse(path: str, line: int, text: str) -> Suppression | None:
    """The suppression in source line `text` (None: it has none)."""
    at = comment_start(text)
    if at < 0:
        return None
    comment = text[at:]
    m = _ARFUSE.search(comment)
    if m:
        raw = m.group("codes")
        codes = frozenset(c.strip().upper() for c in (raw or "").split(",") if c.strip())
        bad = sorted(c for c in codes if not _CODE.match(c))
        if bad or (raw is not None and not codes):
            raise ValueError(
                f"{path}:{line}: `{m.group(0)}` is not a suppression arfuse reads: write "
                f"`# arfuse: ignore[ARF102]` (codes separated by commas) or `# arfuse: ignore`"
            )
        return Suppression(path, line, codes, m.group(0))
    m = _NOQA.search(comment)
    if m:
        codes = frozenset(
            c.upper() for c in re.split(r"[\s,]+", m.group("codes")) if _CODE.match(c.upper())
        )
        if codes:  # with no ARF code among them the comment is only ruff's
            return Suppression(path, line, codes, m.group(0))
    return None


def source_line(path: str, line: int, recorded: str = "") -> str:
    """Line `line` of `path` as it is now, else the line the trace recorded."""
    if line > 0 and os.path.isfile(path):
        return linecache.getline(path, line)
    return recorded


def _real(path: str) -> str:
    """One name per file (the trace's absolute path, the target's relative one)."""
    return os.path.realpath(path) if os.path.exists(path) else path


def scan(path: str) -> list[Suppression]:
    """Every suppression in file `path` (none when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    found = (parse(path, i, text) for i, text in enumerate(lines, start=1) if "#" in text)
    return [s for s in found if s is not None]


@dataclass
class Outcome:
    kept: list[Finding]
    suppressed: list[tuple[Finding, Suppression]]
    unused: list[tuple[Suppression, frozenset[str]]]  # the suppression and its unused codes


def apply(
    findings: Iterable[Finding], files: Iterable[str], ran: Iterable[str], every_rule: bool
) -> Outcome:
    """Split `findings` into kept and suppressed; list the suppressions in `files` (and at the
    findings' lines) that suppressed nothing a rule in `ran` (codes) could have reported. A bare
    suppression is unused only when `every_rule` ran (any rule might have reported there)."""
    findings = list(findings)
    ran = set(ran)
    at: dict[tuple[str, int], Suppression] = {}
    for path in dict.fromkeys(_real(p) for p in [*files, *(f.path for f in findings)]):
        for s in scan(path):
            at[(s.path, s.line)] = s
    for f in findings:  # a file not here: the recorded source line
        if (_real(f.path), f.line) not in at and not os.path.isfile(f.path):
            recorded = parse(f.path, f.line, f.location.code)
            if recorded is not None:
                at[(_real(f.path), f.line)] = recorded
    out = Outcome([], [], [])
    used: dict[tuple[str, int], set[str]] = {}
    for f in findings:
        hit = at.get((_real(f.path), f.line))
        if hit is not None and hit.covers(f.code):
            out.suppressed.append((f, hit))
            used.setdefault((hit.path, hit.line), set()).add(f.code)
        else:
            out.kept.append(f)
    for key, s in sorted(at.items()):
        reported = used.get(key, set())
        if not s.codes:
            if not reported and every_rule:
                out.unused.append((s, frozenset()))
            continue
        idle = frozenset(c for c in s.codes if c not in reported and c in ran)
        if idle:
            out.unused.append((s, idle))
    return out
