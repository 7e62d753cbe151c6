"""`arfuse audit --html DIR`: tlparse's HTML report of each audited rank's trace, and
DIR/findings.html linking every finding to its compiled graph's page.

    render(logs={0: "trace.log"}, html=Path("out"), report=report, warn=print)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arfuse.audit.paths import rel


def _tlparse(log: Path, out_dir: Path) -> str | None:
    """Render tlparse's HTML report; returns a warning on failure (the audit still counts)."""
    exe = shutil.which("tlparse") or str(Path(sys.executable).with_name("tlparse"))
    if not Path(exe).exists() and not shutil.which(exe):
        return "tlparse not found; `pip install tlparse` for --html"
    # tlparse 0.4.x needs the .log file itself (a directory or --latest fails)
    proc = subprocess.run(
        [exe, str(log), "-o", str(out_dir), "--overwrite", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        return f"tlparse failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
    return None


def _compile_dir(cid: str) -> str:
    """tlparse's directory of one compile id: `0/1` -> `-_0_1_0`, `!2/0/1_1` -> `2_0_1_1`."""
    from arfuse.audit.trace.records import CompileId

    c = CompileId.parse(cid)
    if c is None:
        return ""
    ca = "-" if c.compiled_autograd_id is None else str(c.compiled_autograd_id)
    return f"{ca}_{c.frame_id}_{c.frame_compile_id}_{c.attempt}"


_RANK_ROW = re.compile(r"^(?:graph (?P<graph>\S+) )?rank (?P<rank>\d+): (?P<text>.*)$")


def _graph_links(f: Any, html: Path, rank_dirs: dict[int, str]) -> list[dict[str, str]]:
    """Relative links to the tlparse page of each compile id the finding names, per rank."""
    links = []
    for r in f.ranks or sorted(rank_dirs):
        if r not in rank_dirs:
            continue
        cids = [f.compile_id] + [
            d.split(":")[0].removeprefix("graph ").split(" rank ")[0].strip()
            for d in f.details
            if d.startswith("graph ")
        ]
        for cid in dict.fromkeys(c for c in cids if c):
            d = _compile_dir(cid)
            where = html / rank_dirs[r] / d
            if d and where.is_dir():
                pages = sorted(where.glob("compilation_metrics*.html"))
                href = f"{rank_dirs[r]}/{d}/" + (pages[0].name if pages else "")
                links.append({"href": href.removeprefix("./"), "label": f"rank {r} graph {cid}"})
    return links


def _findings_page(report: Any, html: Path, rank_dirs: dict[int, str]) -> Path:
    """findings.html: one self-contained page (inline CSS, relative links) with each finding's
    source line, fix, per-rank table (the ARF3xx details "graph G rank R: ...") and links to
    its compile ids' tlparse pages."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    root = Path.cwd()
    items = []
    for i, f in enumerate(report.findings):
        rows = [m.groupdict() for m in map(_RANK_ROW.match, f.details) if m]
        items.append(
            {
                "code": f.code,
                "name": f.name,
                "state": "baselined"
                if i in report.baselined
                else "suppressed"
                if i in report.suppressed
                else "new",
                "where": f"{rel(f.path, root)}:{f.line}",
                "line": f.line,
                "message": f.message,
                "source": f.location.code,
                "rank_rows": rows,
                "details": [d for d in f.details if not _RANK_ROW.match(d)],
                "via": [f"{rel(x.path, root)}:{x.line}" for x in f.frames[1:]],
                "fix": f.fix,
                "links": _graph_links(f, html, rank_dirs),
            }
        )
    s = report.summary
    env = Environment(
        loader=PackageLoader("arfuse.audit.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    verdict = report.verdict
    page = html / "findings.html"
    page.write_text(
        env.get_template("findings.html.j2").render(
            target=s.get("target", "?"),
            summary_line=f"num_tokens {', '.join(map(str, s.get('sizes', [])))}: "
            f"{s.get('compiles', 0)} compiles, {s.get('recompiles', 0)} recompiles",
            tlparse="index.html" if (html / "index.html").is_file() else "",
            verdict=verdict,
            verdict_class="fail"
            if report.exit_code
            else "pass"
            if "stays dynamic" in verdict
            else "empty",
            errors=report.errors,
            findings=items,
        )
    )
    return page


def _link_from_tlparse(index: Path, to: str) -> None:
    """Put a link to findings.html at the top of a tlparse index.html (once)."""
    if not index.is_file():
        return
    text = index.read_text(errors="replace")
    link = f'<p><a href="{to}">arfuse audit findings</a></p>'
    if link in text:
        return
    at = text.find("<body")
    at = text.find(">", at) + 1 if at >= 0 else 0
    index.write_text(text[:at] + link + text[at:])


def _all_ranks(plain: dict[int, Path], html: Path, tmp: Path) -> bool:
    """tlparse's unified multi-rank report (`--all-ranks-html`: html/index.html, html/rank_N/,
    collective schedules); False when this tlparse cannot."""
    exe = shutil.which("tlparse") or str(Path(sys.executable).with_name("tlparse"))
    if not Path(exe).exists() and not shutil.which(exe):
        return False
    ranks_dir = tmp / "all_ranks"
    ranks_dir.mkdir()
    for rank, log in plain.items():  # tlparse reads the rank from torch's file name
        (ranks_dir / f"dedicated_log_torch_trace_rank_{rank}_arfuse.log").symlink_to(log.resolve())
    proc = subprocess.run(
        [exe, str(ranks_dir), "--all-ranks-html", "-o", str(html), "--overwrite", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode == 0 and all(
        (html / f"rank_{r}" / "index.html").is_file() for r in plain
    )


def render(
    logs: dict[int, str], html: Path, report: Any, warn: Callable[[str], None] = print
) -> None:
    """tlparse: DIR/ for one rank; for several, tlparse's multi-rank report (DIR/index.html,
    DIR/rank_N/), or one tlparse run per rank when this tlparse has no --all-ranks-html. Then
    DIR/findings.html links every finding to its compile id's page on each of its ranks."""
    from arfuse.audit.trace.sources import plain_log

    html.mkdir(parents=True, exist_ok=True)
    rank_dirs: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="arfuse-html-") as tmp:
        plain: dict[int, Path] = {}
        for rank, source in sorted(logs.items()):
            try:
                plain[rank] = plain_log(source, Path(tmp))  # ValueError: not a log
            except OSError as exc:
                warn(f"warning: rank {rank}: cannot read {source} for tlparse: {exc}")
        unified = len(plain) > 1 and _all_ranks(plain, html, Path(tmp))
        if unified:
            rank_dirs = {r: f"rank_{r}" for r in plain}
        for rank, log in [] if unified else plain.items():
            sub = "." if len(logs) == 1 else f"rank_{rank}"
            try:
                warning = _tlparse(log, html / sub)
            except (OSError, subprocess.SubprocessError) as exc:
                warning = f"tlparse on {log} failed: {exc}"
            if warning:
                warn(f"warning: rank {rank}: {warning}")
            else:
                rank_dirs[rank] = sub
    if not rank_dirs:
        return
    page = _findings_page(report, html, rank_dirs)
    for d in {".", *rank_dirs.values()}:
        _link_from_tlparse(
            html / d / "index.html", "findings.html" if d == "." else "../findings.html"
        )
    if len(logs) > 1 and not unified:
        items = "".join(
            f'<li><a href="{d}/index.html">rank {r}</a></li>' for r, d in rank_dirs.items()
        )
        (html / "index.html").write_text(
            f"<html><body><h1>arfuse audit: tlparse per rank</h1><ul>{items}</ul>"
            f'<p><a href="findings.html">findings, linked to their compiled graphs</a></p>'
            f"</body></html>\n"
        )
    warn(f"tlparse report: {html}/index.html; findings: {page}")
