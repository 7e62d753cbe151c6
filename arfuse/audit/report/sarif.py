"""`arfuse audit --format sarif`: SARIF 2.1.0 for code scanning (relative URIs, fingerprints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import sarif_location
from arfuse.audit.report.baseline import fingerprint
from arfuse.audit.report.model import Report


def render(report: Report, root: Path, verbose: bool = False) -> str:
    from arfuse.audit.rules import all_rules

    rules = all_rules()
    index = {r.code: i for i, r in enumerate(rules)}
    results = [
        _result(f, index.get(f.code, 0), root, i in report.baselined, report.suppressed.get(i))
        for i, f in enumerate(report.findings)
    ]
    invocation = {
        "executionSuccessful": not report.errors,
        "exitCode": report.exit_code,
        "toolExecutionNotifications": [
            {"level": "error", "message": {"text": e}} for e in report.errors
        ],
    }
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "arfuse-audit",
                        "informationUri": "https://github.com/arfuse/arfuse",
                        "version": _version(),
                        "rules": [
                            {
                                "id": r.code,
                                "name": r.name,
                                "shortDescription": {"text": r.summary},
                                "fullDescription": {"text": r.summary},
                                "help": {"text": r.docs, "markdown": r.docs},
                                "defaultConfiguration": {"level": "error"},
                            }
                            for r in rules
                        ],
                    }
                },
                "invocations": [invocation],
                "results": results,
                "properties": {"summary": report.summary, "verdict": report.verdict},
            }
        ],
    }
    return json.dumps(sarif, indent=2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arfuse")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


def _result(
    f: Finding, rule_index: int, root: Path, baselined: bool, suppressed: str | None
) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": max(f.line, 1)}
    if f.location.code:
        region["snippet"] = {"text": f.location.code}
    loc = {
        "physicalLocation": {
            "artifactLocation": sarif_location(f.path, root),
            "region": region,
        }
    }
    result = {
        "ruleId": f.code,
        "ruleIndex": rule_index,
        "level": "error",
        "message": {"text": f.message},
        "locations": [loc],
        "relatedLocations": [
            {
                "id": k,
                "physicalLocation": {
                    "artifactLocation": sarif_location(x.path, root),
                    "region": {"startLine": max(x.line, 1)},
                },
            }
            for k, x in enumerate(f.frames[1:], start=1)
        ],
        "partialFingerprints": {"arfuse/v1": fingerprint(f, root)},
    }
    if baselined:
        result["baselineState"] = "unchanged"
        result["suppressions"] = [{"kind": "external", "justification": "in baseline"}]
    elif suppressed is not None:
        result["suppressions"] = [{"kind": "inSource", "justification": suppressed}]
    return result
