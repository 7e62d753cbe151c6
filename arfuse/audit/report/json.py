"""`arfuse audit --format json`: every finding (paths relative to the root) and the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel
from arfuse.audit.report.model import Report


def _json_finding(f: Finding, root: Path, baselined: bool) -> dict[str, Any]:
    d = f.to_json()
    d["path"] = rel(f.path, root)
    d["frames"] = [{"path": rel(x.path, root), "line": x.line} for x in f.frames]
    d["baselined"] = baselined
    return d


def render(report: Report, root: Path, verbose: bool = False) -> str:
    return json.dumps(
        {
            "findings": [
                _json_finding(f, root, i in report.baselined) for i, f in enumerate(report.findings)
            ],
            "summary": report.summary,
            "errors": report.errors,
        },
        indent=2,
    )
