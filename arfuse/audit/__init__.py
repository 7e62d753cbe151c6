"""The specialization auditor: proves a compiled model stays dynamic in num_tokens.

    from arfuse.audit import AuditTarget, audit
    report = audit("path/to/model.py:build", sizes=[16, 2047, 2048, 2049])
    print(report.render("text")); report.exit_code   # 0 clean, 1 new findings, 2 target error

CLI: `arfuse audit` / `arfuse rules` (arfuse/audit/cli.py); pytest: `arfuse.testing.assert_dynamic`.
"""

from arfuse.audit.api import analyze, analyze_trace, audit, audit_logs
from arfuse.audit.findings import Finding, Location
from arfuse.audit.report import Report
from arfuse.audit.rules import Rule, all_rules
from arfuse.audit.target import AuditTarget

__all__ = [
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
