"""`arfuse audit --format json`: every finding (paths relative to the root) and the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel
from arfuse.audit.report.baseline import fingerprint
from arfuse.audit.report.model import Report

#: the output follows this JSON Schema (shipped next to this module); "version" is its version
VERSION = 1
SCHEMA = "findings.schema.json"


def _json_finding(
    f: Finding, root: Path, baselined: bool, suppressed: str | None
) -> dict[str, Any]:
    d = f.to_json()
    d["path"] = rel(f.path, root)
    d["frames"] = [{"path": rel(x.path, root), "line": x.line} for x in f.frames]
    d["baselined"] = baselined
    d["suppressed"] = suppressed
    d["fingerprint"] = fingerprint(f, root)
    return d


def render(report: Report, root: Path, verbose: bool = False) -> str:
    summary = dict(report.summary)
    if summary.get("dismissed"):
        summary["dismissed"] = [{**d, "path": rel(d["path"], root)} for d in summary["dismissed"]]
    return json.dumps(
        {
            "$schema": f"https://github.com/arfuse/arfuse/blob/main/arfuse/audit/report/{SCHEMA}",
            "version": VERSION,
            "exit_code": report.exit_code,
            "verdict": report.verdict,
            "findings": [
                _json_finding(f, root, i in report.baselined, report.suppressed.get(i))
                for i, f in enumerate(report.findings)
            ],
            "summary": summary,
            "errors": report.errors,
        },
        indent=2,
    )
