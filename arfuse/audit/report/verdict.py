"""The verdict: the text report's last line, and what every other format says it concluded.

It cannot be empty: a PASS says what it rests on. "num_tokens stays dynamic" only when the rules
that judge guards on num_tokens ran and nothing was found; a run whose findings were all
baselined or suppressed says they remain; a run in which no rule judged num_tokens says so; logs
in which no compile made the token dim symbolic are NOT JUDGED (judge/evidence.py says why).
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _new_counts(report: Any) -> str:
    by = Counter(f.code for f in report.new)
    return ", ".join(f"{c} x{n}" for c, n in sorted(by.items()))


def verdict(report: Any) -> str:
    s = report.summary
    accepted = f"{len(report.baselined)} baselined, {len(report.suppressed)} suppressed"
    domain = (
        f" over num_tokens in [{s['domain'][0]:,}, {s['domain'][1]:,}]" if s.get("domain") else ""
    )
    if report.errors:
        return (
            f"ERROR: the audit did not complete ({len(report.errors)} error(s) above); "
            f"{len(report.findings)} finding(s) so far, {len(report.new)} new"
        )
    if report.new:
        return f"FAIL: {len(report.new)} new finding(s) ({_new_counts(report)}), {accepted}"
    if s.get("verdict") == "not_judged":  # the reason is the line above the verdict
        return f"NOT JUDGED: nothing in these logs proves num_tokens stays dynamic ({accepted})"
    if report.baselined or report.suppressed:
        return (
            f"PASS: no new findings ({accepted}) - accepted findings remain, so num_tokens "
            f"is not proven dynamic{domain}"
        )
    if not s.get("checked_dynamic"):
        ran = ", ".join(s.get("rules") or []) or "none"
        return (
            f"PASS: no findings from the rules that ran ({ran}) - num_tokens was not checked "
            f"(no rule that judges guards on num_tokens ran)"
        )
    return f"PASS: num_tokens stays dynamic{domain}: no findings"
