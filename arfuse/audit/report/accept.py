"""What a team has accepted, applied to a run's findings, in this order:

1. `per-file-ignores` of `[tool.arfuse]` drop the codes they name in matching files;
2. inline suppressions (`report.suppress`) mark findings at their line as suppressed;
3. the baseline (`report.baseline`) marks the remaining known findings as baselined.

Suppressed and baselined findings stay in the report (json, SARIF) but do not fail the gate.
The accepting itself is checked (rules ARF901/ARF902): a suppression that suppressed nothing
and a baseline entry that matched nothing are findings, so neither can rot.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import Path

from arfuse.audit.findings import Finding, Location
from arfuse.audit.paths import rel
from arfuse.audit.report import baseline as baselines
from arfuse.audit.report import suppress
from arfuse.audit.report.model import Report
from arfuse.audit.rules import Rule, get_rule
from arfuse.audit.rules.hygiene import STALE_BASELINE, UNUSED_SUPPRESSION


def _ignored(f: Finding, per_file: Sequence[tuple[str, tuple[str, ...]]], root: Path) -> bool:
    where = (f.path, rel(f.path, root))
    return any(
        any(fnmatch.fnmatch(p, glob) for p in where) and any(f.code.startswith(c) for c in codes)
        for glob, codes in per_file
    )


def _hygiene(code: str, message: str, location: Location) -> Finding:
    r = get_rule(code)
    return Finding(r.code, r.name, message, location, fix=r.fix)


def _unused(s: suppress.Suppression, codes: frozenset[str]) -> Finding:
    text = suppress.source_line(s.path, s.line).strip()
    what = (
        f"{', '.join(sorted(codes))} reported nothing at this line"
        if codes
        else "no rule reported anything at this line"
    )
    return _hygiene(
        UNUSED_SUPPRESSION,
        f"unused suppression `{s.comment}`: {what}",
        Location(s.path, s.line, code=text),
    )


def accept(
    report: Report,
    rules: Sequence[Rule],
    every_rule: bool,
    *,
    target: str,
    files: Iterable[str],
    baseline: Path | None,
    per_file_ignores: Sequence[tuple[str, tuple[str, ...]]] = (),
    root: Path,
) -> None:
    """Apply per-file ignores, suppressions and the baseline to `report` (in place); add the
    ARF901/ARF902 findings when those rules are among `rules`."""
    selected = {r.code for r in rules}
    ran = {r.code for r in rules if r.scope != "report"}
    findings = [f for f in report.findings if not _ignored(f, per_file_ignores, root)]
    outcome = suppress.apply(findings, files, ran, every_rule)
    suppressed = {id(f): s.comment for f, s in outcome.suppressed}
    extra: list[Finding] = []
    if UNUSED_SUPPRESSION in selected:
        extra += [_unused(s, codes) for s, codes in outcome.unused]
    covered: set[int] = set()
    if baseline is not None:
        entries = baselines.load(baseline)
        open_ = [f for f in findings if id(f) not in suppressed]
        hit, used = baselines.match(open_, entries, root)
        covered = {id(open_[i]) for i in hit}
        # a suppressed finding an entry also accepts keeps that entry from being stale
        used |= baselines.match([f for f in findings if id(f) in suppressed], entries, root)[1]
        if STALE_BASELINE in selected and not report.errors:
            lines = baselines.entry_lines(baseline)
            for j in baselines.stale(entries, used, target, ran, root):
                e = entries[j]
                where = f"{e['path']}:{e['line']}" if e.get("line") else e["path"]
                extra.append(
                    _hygiene(
                        STALE_BASELINE,
                        f"stale baseline entry: no {e['code']} finding at {where} "
                        f"(`{e.get('source') or ''}`) any more",
                        Location(str(baseline), lines[j] if j < len(lines) else 1),
                    )
                )
    report.findings = sorted([*findings, *extra], key=Finding.sort_key)
    report.baselined = {i for i, f in enumerate(report.findings) if id(f) in covered}
    report.suppressed = {
        i: suppressed[id(f)] for i, f in enumerate(report.findings) if id(f) in suppressed
    }
