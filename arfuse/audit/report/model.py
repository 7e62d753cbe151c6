"""A `Report` (findings + summary); each rendering is one module of this package, named as
its format (`text.py`, `json.py`, `markdown.py`, `sarif.py`: SARIF 2.1.0), with
`render(report, root, verbose) -> str`; `github.py`: workflow-command annotations. A new format
is a new module and its name in FORMATS.

Paths are shown relative to `root` (the working directory by default) when they are under it,
so golden outputs and baselines do not depend on where the checkout lives.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding

FORMATS = ("text", "json", "markdown", "sarif", "github")


@dataclass
class Report:
    findings: list[Finding]  # all findings, baselined ones included
    summary: dict[str, Any] = field(default_factory=dict)
    baselined: set[int] = field(default_factory=set)  # indexes of findings in the baseline
    errors: list[str] = field(default_factory=list)  # target errors at some size
    suppressed: dict[int, str] = field(default_factory=dict)  # index -> the inline comment

    @property
    def new(self) -> list[Finding]:
        return [
            f
            for i, f in enumerate(self.findings)
            if i not in self.baselined and i not in self.suppressed
        ]

    @property
    def verdict(self) -> str:
        from arfuse.audit.report.verdict import verdict

        return verdict(self)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 new findings, 2 errors - or nothing found in logs that cannot judge
        num_tokens (never 0 without evidence)."""
        if self.errors:
            return 2
        if self.new:
            return 1
        return 2 if self.summary.get("verdict") == "not_judged" else 0

    def codes(self) -> list[tuple[str, int, str]]:
        """(code, line, file name) of every finding: handy in tests."""
        return [(f.code, f.line, os.path.basename(f.path)) for f in self.findings]

    def render(self, fmt: str, root: str | Path | None = None, verbose: bool = False) -> str:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        module = importlib.import_module(f"arfuse.audit.report.{fmt}")
        return module.render(self, Path(root) if root else Path.cwd(), verbose)


def combine(reports: list[Report]) -> Report:
    """One report of several targets' (`targets = [...]` in [tool.arfuse]): findings and
    errors together, each target's summary under "targets"."""
    if len(reports) == 1:
        return reports[0]
    findings: list[Finding] = []
    out = Report(findings)
    for r in reports:
        offset = len(findings)
        findings += r.findings
        out.baselined |= {offset + i for i in r.baselined}
        out.suppressed.update({offset + i: c for i, c in r.suppressed.items()})
        out.errors += [f"{r.summary.get('target')}: {e}" for e in r.errors]
    domains = {tuple(r.summary.get("domain") or ()) for r in reports}
    out.summary = {
        "target": ", ".join(str(r.summary.get("target")) for r in reports),
        "targets": [r.summary for r in reports],
        "findings": len(findings),
        "new": len(out.new),
        "baselined": len(out.baselined),
        "suppressed": len(out.suppressed),
        "rules": sorted({c for r in reports for c in r.summary.get("rules", [])}),
        "checked_dynamic": all(r.summary.get("checked_dynamic") for r in reports),
        "notes": [n for r in reports for n in r.summary.get("notes", [])],
        **({"domain": list(domains.pop())} if len(domains) == 1 and () not in domains else {}),
    }
    return out
