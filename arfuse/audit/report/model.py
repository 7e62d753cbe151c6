"""A `Report` (findings + summary); each rendering is one module of this package, named as
its format (`text.py`, `json.py`, `markdown.py`, `sarif.py`: SARIF 2.1.0), with
`render(report, root, verbose) -> str`. A new format is a new module and its name in FORMATS.

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

FORMATS = ("text", "json", "markdown", "sarif")


@dataclass
class Report:
    findings: list[Finding]  # all findings, baselined ones included
    summary: dict[str, Any] = field(default_factory=dict)
    baselined: set[int] = field(default_factory=set)  # indexes of findings in the baseline
    errors: list[str] = field(default_factory=list)  # target errors at some size

    @property
    def new(self) -> list[Finding]:
        return [f for i, f in enumerate(self.findings) if i not in self.baselined]

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
