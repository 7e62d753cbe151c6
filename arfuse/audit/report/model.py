"""A `Report` (findings + summary) and its four renderings: text, json, markdown, SARIF 2.1.0.

Paths are shown relative to `root` (the working directory by default) when they are under it,
so golden outputs and baselines do not depend on where the checkout lives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel, sarif_location
from arfuse.audit.report.baseline import fingerprint

FORMATS = ("text", "json", "markdown", "sarif", "github")
#: `--format json` follows this JSON Schema (shipped in the package); "version" is its version
JSON_VERSION = 1
SCHEMA = "findings.schema.json"


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
        if self.errors:
            return 2
        return 1 if self.new else 0

    def codes(self) -> list[tuple[str, int, str]]:
        """(code, line, file name) of every finding: handy in tests."""
        return [(f.code, f.line, os.path.basename(f.path)) for f in self.findings]

    def render(self, fmt: str, root: str | Path | None = None, verbose: bool = False) -> str:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        where = Path(root) if root else Path.cwd()
        if fmt == "text":
            return to_text(self, where, verbose)
        if fmt == "github":
            from arfuse.audit.report.github import to_github

            return to_github(self, where)
        return {"json": to_json, "markdown": to_markdown, "sarif": to_sarif}[fmt](self, where)


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


def _json_finding(f: Finding, root: Path, baselined: bool, suppressed: str | None) -> dict:
    d = f.to_json()
    d["path"] = rel(f.path, root)
    d["frames"] = [{"path": rel(x.path, root), "line": x.line} for x in f.frames]
    d["baselined"] = baselined
    d["suppressed"] = suppressed
    d["fingerprint"] = fingerprint(f, root)
    return d


def to_json(report: Report, root: Path) -> str:
    summary = dict(report.summary)
    if summary.get("dismissed"):
        summary["dismissed"] = [{**d, "path": rel(d["path"], root)} for d in summary["dismissed"]]
    return json.dumps(
        {
            "$schema": f"https://github.com/arfuse/arfuse/blob/main/arfuse/audit/report/{SCHEMA}",
            "version": JSON_VERSION,
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


def to_text(report: Report, root: Path, verbose: bool = False) -> str:
    s = report.summary
    swept = (
        f"swept num_tokens = {', '.join(map(str, s.get('sizes', [])))} ({s.get('calls', 0)} calls, "
        if s.get("calls")
        else f"recorded compiles at num_tokens = {', '.join(map(str, s.get('sizes', [])))} ("
    )
    per_rank = s.get("compiles_by_rank") or {}
    compiles = (
        s.get("compiles", 0)
        if len(set(per_rank.values())) < 2
        else "/".join(str(n) for n in per_rank.values()) + " (ranks " + "/".join(per_rank) + ")"
    )
    lines = [f"arfuse audit: {s.get('target', '?')}"]
    if "sizes" in s:  # a run that stopped before reading a trace has nothing to count
        lines.append(
            f"  {swept}{compiles} compiles, "
            f"{s.get('recompiles', 0)} recompiles, {s.get('seconds', 0)} s, "
            f"backend {s.get('backend', '?')}, ranks audited {s.get('ranks', [0])} "
            f"of world size {s.get('world_size', 1)})"
        )
    if s.get("domain"):
        lo, hi = s["domain"]
        n = s.get("dismissed_guards", 0)
        lines.append(
            f"  token domain num_tokens in [{lo:,}, {hi:,}]: {n} guard(s) on num_tokens "
            f"hold everywhere in it (not findings"
            + ("; --verbose lists them)" if n and not verbose else ")")
        )
        if verbose:
            for d in s.get("dismissed", []):
                lines.append(
                    f"    {rel(d['path'], root)}:{d['line']}: `{d['expr']}` - {d['reason']}"
                )
    fusion = s.get("fusion") or {}
    if fusion.get("graphs"):
        lines.append(
            f"  fusion pass: {fusion['matches']} allreduce chain(s) fused in "
            f"{fusion['graphs']} graph(s)"
        )
        for r in fusion.get("ranges") or []:
            lo, hi = r["range"]
            lines.append(
                f"    num_tokens [{lo}, {hi if hi is not None else 'inf'}]: "
                f"{r['fused']} fused, {r['left_to_inductor']} left to Inductor "
                "(above the fusion threshold)"
            )
    lines.append("")
    by_file: dict[str, list[tuple[int, Finding]]] = {}
    for i, f in enumerate(report.findings):
        by_file.setdefault(rel(f.path, root), []).append((i, f))
    for path in sorted(by_file):
        lines.append(path)
        for i, f in sorted(by_file[path], key=lambda t: (t[1].line, t[1].code)):
            mark = (
                "  (baselined)"
                if i in report.baselined
                else f"  (suppressed: {report.suppressed[i]})"
                if i in report.suppressed
                else ""
            )
            lines.append(f"  {path}:{f.line}: {f.code} [{f.name}] {f.message}{mark}")
            if f.location.code:
                lines.append(f"    {f.line:>5} | {f.location.code}")
            for d in f.details[:6]:
                lines.append(f"          - {d}")
            if len(f.details) > 6:
                lines.append(f"          - ... {len(f.details) - 6} more")
            if f.num_tokens:
                lines.append(f"          seen at num_tokens: {', '.join(map(str, f.num_tokens))}")
            if len(s.get("ranks") or []) > 1 and f.ranks:
                lines.append(f"          on rank(s): {', '.join(map(str, f.ranks))}")
            others = [x for x in f.frames[1:]]
            if others:
                lines.append(
                    "          via: " + ", ".join(f"{rel(x.path, root)}:{x.line}" for x in others)
                )
            if f.fix:
                lines.append(f"          fix: {f.fix}")
        lines.append("")
    for e in report.errors:
        lines.append(f"error: {e}")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"{report.verdict}. `arfuse rules` explains each code.")
    return "\n".join(lines) + "\n"


def to_markdown(report: Report, root: Path) -> str:
    s = report.summary
    icon = "✅" if report.exit_code == 0 else "❌"
    out = [
        f"### {icon} arfuse audit: `{s.get('target', '?')}`",
        "",
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


def to_sarif(report: Report, root: Path) -> str:
    from arfuse.audit.rules import all_rules

    rules = all_rules()
    index = {r.code: i for i, r in enumerate(rules)}
    results = []
    for i, f in enumerate(report.findings):
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
            "ruleIndex": index.get(f.code, 0),
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
        if i in report.baselined:
            result["baselineState"] = "unchanged"
            result["suppressions"] = [{"kind": "external", "justification": "in baseline"}]
        elif i in report.suppressed:
            result["suppressions"] = [{"kind": "inSource", "justification": report.suppressed[i]}]
        results.append(result)
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
