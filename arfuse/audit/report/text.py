"""`arfuse audit` (the default format): a header, findings grouped by file, notes, the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.paths import rel
from arfuse.audit.report.model import Report


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def render(report: Report, root: Path, verbose: bool = False) -> str:
    s = report.summary
    lines = _header(s, root, verbose)
    lines.append("")
    lines += _findings(report, root)
    for e in report.errors:
        lines.append(f"error: {e}")
    for note in s.get("notes", []):
        lines.append(f"note: {note}")
    if s.get("not_judged"):
        lines.append(f"NOT JUDGED: num_tokens - {s['not_judged']}")
    lines.append(f"{report.verdict}. `arfuse rules` explains each code.")
    return "\n".join(lines) + "\n"


def _header(s: dict[str, Any], root: Path, verbose: bool) -> list[str]:
    sizes = ", ".join(map(str, s.get("sizes") or [])) or "unknown (no input sizes recorded)"
    swept = (
        f"swept num_tokens = {sizes} ({_n(s.get('calls', 0), 'call')}, {s.get('seconds', 0)} s"
        if s.get("calls")
        else f"recorded compiles at num_tokens = {sizes} (read in {s.get('seconds', 0)} s"
    )
    per_rank = s.get("compiles_by_rank") or {}
    recompiles = s.get("recompiles_by_rank") or {}
    if len(per_rank) > 1:
        counts = "; ".join(
            f"rank {r}: {_n(n, 'compile')}, {_n(recompiles.get(r, 0), 'recompile')}"
            for r, n in per_rank.items()
        )
    else:
        counts = f"{_n(s.get('compiles', 0), 'compile')}, {_n(s.get('recompiles', 0), 'recompile')}"
    world = s.get("world_size") or "unknown (offline: no run.json)"
    lines = [
        f"arfuse audit: {s.get('target') or 'unknown target'}",
        f"  {swept}; {counts})",
        f"  backend {s.get('backend') or 'unknown (no compiled graph recorded)'}; num_tokens is "
        f"{', '.join(s.get('token_sources') or []) or 'unknown (no size became symbolic)'}; "
        f"ranks read {s.get('ranks', [0])} of world size {world}",
    ][: 3 if "sizes" in s else 1]  # a run that stopped before any trace has nothing to count
    lines += [f"  {check}" for check in s.get("checks") or []]
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
            + (f" over {len(s['ranks'])} ranks" if len(s.get("ranks") or []) > 1 else "")
        )
        for r in fusion.get("ranges") or []:
            lo, hi = r["range"]
            lines.append(
                f"    num_tokens [{lo}, {hi if hi is not None else 'inf'}]: "
                f"{r['fused']} fused, {r['left_to_inductor']} left to Inductor "
                "(above the fusion threshold)"
            )
    return lines


def _findings(report: Report, root: Path) -> list[str]:
    s, lines = report.summary, []
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
    return lines
