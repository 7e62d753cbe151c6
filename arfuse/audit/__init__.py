"""The specialization auditor: proves a compiled model stays dynamic in num_tokens.

    from arfuse.audit import AuditTarget, audit
    report = audit("path/to/model.py:build", sizes=[16, 2047, 2048, 2049])
    report = audit("model.py:build", options=AuditOptions(select=("ARF1",), max_tokens=65536))
    print(report.render("text")); report.exit_code   # 0 clean, 1 new findings, 2 target error

CLI: `arfuse audit` / `arfuse rules` (arfuse/audit/cli.py); pytest: `arfuse.testing.assert_dynamic`.
"""

from arfuse.audit.api import analyze, analyze_trace, audit, audit_logs
from arfuse.audit.findings import Finding, Location
from arfuse.audit.live.target import AuditTarget
from arfuse.audit.options import AuditOptions
from arfuse.audit.report.model import Report
from arfuse.audit.rules import Rule, all_rules

__all__ = [
    "AuditOptions",
    "AuditTarget",
    "Finding",
    "Location",
    "Report",
    "Rule",
    "all_rules",
    "analyze",
    "analyze_trace",
    "audit",
    "audit_logs",
]
