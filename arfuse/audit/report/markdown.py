"""`arfuse audit --format markdown`: a summary for a PR comment or a CI job summary."""

from __future__ import annotations

from pathlib import Path

from arfuse.audit.paths import rel
from arfuse.audit.report.model import Report


def render(report: Report, root: Path, verbose: bool = False) -> str:
    s = report.summary
    judged = not s.get("not_judged")
    icon = "✅" if report.exit_code == 0 else ("❌" if judged else "⚠️")
    out = [
        f"### {icon} arfuse audit: `{s.get('target', '?')}`",
        "",
        *([] if judged else [f"**NOT JUDGED**: num_tokens - {s['not_judged']}", ""]),
        f"Swept num_tokens = {', '.join(map(str, s.get('sizes', [])))}: "
        f"{s.get('compiles', 0)} compiles, {s.get('recompiles', 0)} recompiles; "
        f"{len(report.findings)} finding(s), {len(report.new)} new."
        + (
            f" Fusion pass: {s['fusion']['matches']} chain(s) fused in "
            f"{s['fusion']['graphs']} graph(s)."
            if (s.get("fusion") or {}).get("graphs")
            else ""
        ),
        "",
    ]
    if report.findings:
        out += ["| | code | rule | where | finding |", "|---|---|---|---|---|"]
        for i, f in enumerate(report.findings):
            state = (
                "baselined"
                if i in report.baselined
                else "suppressed"
                if i in report.suppressed
                else "**new**"
            )
            msg = f.message
            src = f" <br>`{f.location.code}`" if f.location.code else ""
            cell = (msg + src).replace("|", "\\|")
            out.append(
                f"| {state} | `{f.code}` | {f.name} | `{rel(f.path, root)}:{f.line}` | {cell} |"
            )
        out.append("")
        fixes = {f.code: f.fix for f in report.findings if f.fix}
        if fixes:
            out += ["<details><summary>How to fix</summary>", ""]
            out += [f"- `{c}`: {fx}" for c, fx in sorted(fixes.items())]
            out += ["", "</details>", ""]
    if report.errors:
        out += ["## Errors", "", "The audit did not complete:", ""]
        out += [f"- {e}" for e in report.errors] + [""]
    for n in s.get("notes", []):
        out.append(f"> note: {n}")
    out += ["", f"**{report.verdict}**"]
    return "\n".join(out).rstrip() + "\n"
