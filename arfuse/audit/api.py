"""`audit()`: drive a target, parse its trace, run the rules, return a `Report`.

report = arfuse.audit.audit("model.py:build", sizes=[16, 2048, 2049])
report = arfuse.audit.audit(AuditTarget(model, make_inputs))   # in this process
report = arfuse.audit.analyze_trace("trace.log")                # a trace you already have
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.judge.context import AuditContext
from arfuse.audit.judge.domain import TokenDomain
from arfuse.audit.judge.evidence import HOW, why_not_judged
from arfuse.audit.options import AuditOptions
from arfuse.audit.report.accept import accept
from arfuse.audit.report.model import Report
from arfuse.audit.rules import Rule, all_rules, select_rules
from arfuse.audit.trace import facts
from arfuse.audit.trace.reader import parse_file
from arfuse.audit.trace.records import FUSION_REPORT, RECOMPILE_REASONS, Trace
from arfuse.audit.trace.run_info import RunInfo
from arfuse.audit.trace.slim import GUARDS


def run_rules(ctx: AuditContext, rules: Sequence[Rule]) -> list[Finding]:
    out: list[Finding] = []
    for r in rules:
        for f in r.run(ctx):
            if ctx.rank not in f.ranks:
                f.ranks.append(ctx.rank)
            out.append(f)
    return out


def _merge_ranks(findings: list[Finding]) -> list[Finding]:
    merged: dict[tuple[str, str, int], Finding] = {}
    for f in findings:
        key = (f.code, f.path, f.line)
        if key in merged:  # another rank, or another compiler guard shown at the same frame
            m = merged[key]
            m.ranks = sorted(set(m.ranks) | set(f.ranks))
            m.details += [d for d in f.details if d not in m.details]
            m.frames += [x for x in f.frames if x not in m.frames]
        else:
            merged[key] = f
    return sorted(merged.values(), key=Finding.sort_key)


_REF = re.compile(r"\s*\((?:see )?[^()]*\bARF\d{3}\b[^()]*\)|,? or see ARF[^,;]*")
_CODES = re.compile(r"ARF(\d{3})(?:-ARF(\d{3}))?")


def _drop_unreported_refs(findings: list[Finding]) -> None:
    """A fix line never sends the reader to a code that was not reported: a reference such as
    "(see ARF302/ARF304 for the line)" keeps only the codes this audit reported, or goes."""
    reported = {f.code for f in findings}

    def only_reported(m: re.Match[str]) -> str:
        named = []
        for lo, hi in _CODES.findall(m.group(0)):
            named += [f"ARF{n}" for n in range(int(lo), int(hi or lo) + 1)]
        kept = [c for c in dict.fromkeys(named) if c in reported]
        if not kept:
            return ""
        if m.group(0).lstrip(", ").startswith("or"):
            return f", or see {'/'.join(kept)}"
        return f" (see {'/'.join(kept)})"

    for f in findings:
        if f.fix and "ARF" in f.fix:
            f.fix = _REF.sub(only_reported, f.fix)


def _checks(traces: dict[int, Trace], rules: Sequence[Rule]) -> tuple[list[str], list[str]]:
    """Which checks ran and which could not, in words for the header, and notes."""
    lines, notes = [], []
    no_graph = [r for r, t in sorted(traces.items()) if not facts.post_grad_graphs(t)]
    if no_graph and any(r.code == "ARF201" for r in rules):
        which = "every rank" if len(no_graph) == len(traces) else f"rank(s) {no_graph}"
        notes.append(
            f"fusion coverage (ARF201) not checked on {which}: no Inductor post-grad graph "
            f"recorded (another backend, or graphs served from a compile cache)"
        )
    cross = [r.code for r in rules if r.scope == "ranks"]
    if len(traces) > 1:
        lines.append(f"cross-rank checks ran over {len(traces)} ranks: {', '.join(cross)}")
    elif cross:
        lines.append(
            f"cross-rank checks did not run: one rank's log was read ({', '.join(cross)} "
            f"need the logs of two or more ranks)"
        )
    return lines, notes


def _summary(
    traces: dict[int, Trace], run: RunInfo, findings: list[Finding], rules: Sequence[Rule]
) -> dict[str, Any]:
    compiles = {r: facts.compiles(t) for r, t in sorted(traces.items())}
    recompiles = {
        r: sum(1 for _ in t.artifacts(RECOMPILE_REASONS)) for r, t in sorted(traces.items())
    }
    first = min(traces) if traces else 0
    fusion = [a.payload_json() for t in traces.values() for a in t.artifacts(FUSION_REPORT)]
    fusion = [p for p in fusion if isinstance(p, dict)]
    post_grad = sum(len(facts.post_grad_graphs(t)) for t in traces.values())
    checks, notes = _checks(traces, rules)
    notes = list(run.notes) + notes
    if any(c.num_tokens < 2 for c in run.calls):
        notes.append(
            "num_tokens=1 compiles its own graph (torch's 0/1 specialization); not a "
            "finding - use torch._dynamo.mark_unbacked to avoid it"
        )
    failed = [c for c in run.calls if not c.ok]
    # under arfuse.compile: what each num_tokens range fused and left to Inductor
    ranges = [
        {
            "range": p["token_range"],
            "fused": int(p.get("matches") or 0),
            "left_to_inductor": len(p.get("by_range") or []),
        }
        for p in fusion
        if p.get("token_range")
    ]
    malformed = sum(t.malformed_count for t in traces.values())
    if malformed:
        notes.append(f"{malformed} trace line(s) were not events (truncated or garbage); skipped")
    return {
        "target": run.target,
        "sizes": run.sizes,
        "calls": len(run.calls),
        "failed_calls": len(failed),
        "compiles": len(compiles.get(first, [])),
        "recompiles": recompiles.get(first, 0),
        "token_sources": run.token_sources,
        "backend": run.backend,
        "strict": run.strict,
        "world_size": run.world_size,
        "ranks": sorted(traces) or run.ranks,
        "seconds": run.seconds,
        "fusion": {
            "graphs": len(fusion),
            "matches": sum(int(p.get("matches") or 0) for p in fusion),
            "post_grad_graphs": post_grad,
            **({"ranges": ranges} if ranges else {}),
        },
        "compiles_by_rank": {str(r): len(c) for r, c in compiles.items()},
        "recompiles_by_rank": {str(r): n for r, n in recompiles.items()},
        "checks": checks,
        "findings": len(findings),
        "by_code": dict(
            sorted({f.code: sum(1 for g in findings if g.code == f.code) for f in findings}.items())
        ),
        "notes": notes,
    }


def _guard_summary(contexts: dict[int, AuditContext], run: RunInfo, judged: bool) -> dict[str, Any]:
    """The token domain, and the guards judged harmless over it (each with the reason)."""
    dismissed: dict[tuple[str, str, int], dict[str, Any]] = {}
    for rank, ctx in contexts.items():
        for d in ctx.judgement.dismissed if judged else []:
            entry = dismissed.setdefault((d["expr"], d["path"], d["line"]), {**d, "ranks": []})
            entry["ranks"].append(rank)
    return {
        "domain": [run.min_tokens, run.max_tokens],
        "dismissed_guards": len(dismissed),
        "dismissed": sorted(dismissed.values(), key=lambda d: (d["path"], d["line"])),
    }


def analyze(
    traces: dict[int, Trace],
    run: RunInfo | None = None,
    options: AuditOptions | None = None,
    *,
    root: str | Path | None = None,
    **fields: Any,
) -> Report:
    """Run the selected rules over each rank's trace and build the report. `options` (or its
    fields as keywords: `select=["ARF1"]`, `max_tokens=65536`) says which rules, the baseline,
    and the token domain, which overrides the run's; guards are judged over it."""
    opts = AuditOptions.of(options, **fields)
    run = run or RunInfo()
    domain = TokenDomain(
        run.min_tokens if opts.min_tokens is None else opts.min_tokens,
        run.max_tokens if opts.max_tokens is None else opts.max_tokens,
    )
    run.min_tokens, run.max_tokens = domain.lo, domain.hi
    select, ignore, baseline = opts.select, opts.ignore, opts.baseline
    rules = select_rules(select, ignore)
    per_rank = [r for r in rules if r.scope == "rank"]
    contexts = {rank: AuditContext(t, run, rank) for rank, t in sorted(traces.items())}
    found = [f for ctx in contexts.values() for f in run_rules(ctx, per_rank)]
    judged = any(r.needs >= GUARDS for r in per_rank)  # else no guard was judged at all
    if len(contexts) > 1:
        from arfuse.audit.rules.ranks import RanksContext

        ranks_ctx = RanksContext(contexts)
        for r in rules:
            if r.scope == "ranks":
                found.extend(r.run(ranks_ctx))
    findings = _merge_ranks(found)
    _drop_unreported_refs(findings)
    errors = [
        f"num_tokens={c.num_tokens} (rank {c.rank}): {c.error_type}: "
        f"{c.error.splitlines()[0] if c.error else ''}"
        for c in run.calls
        if not c.ok and "ConstraintViolation" not in c.error_type
    ]
    if not rules:
        errors.append(
            f"no rule ran: --select {' '.join(select) or '(all)'} --ignore {' '.join(ignore)} "
            "leaves none; `arfuse rules` lists the codes"
        )
    report = Report(findings, _summary(traces, run, findings, rules), errors=errors)
    report.summary.update(_guard_summary(contexts, run, judged))
    where = Path(root) if root else Path.cwd()
    accept(
        report,
        rules,
        every_rule=len(rules) == len(all_rules()),
        target=run.target,
        files=_source_files(report, run),
        baseline=baseline,
        per_file_ignores=opts.per_file_ignores,
        root=where,
    )
    _conclude(report, rules, contexts)
    return report


def _conclude(report: Report, rules: Sequence[Rule], contexts: dict[int, AuditContext]) -> None:
    """The counts after suppressions and the baseline, what the verdict rests on (which rules
    ran) and the verdict itself: NOT JUDGED when no compile made the token dim symbolic."""
    report.summary["findings"] = len(report.findings)
    report.summary["by_code"] = dict(sorted(Counter(f.code for f in report.findings).items()))
    report.summary["new"] = len(report.new)
    report.summary["baselined"] = len(report.baselined)
    report.summary["suppressed"] = len(report.suppressed)
    report.summary["rules"] = [r.code for r in rules]
    # "stays dynamic" rests on the rules that judge guards on num_tokens
    report.summary["checked_dynamic"] = any(
        r.check.__module__.endswith(".specialization") for r in rules
    )
    why = why_not_judged(contexts)
    if why:  # said even beside findings: those do not prove num_tokens stays dynamic either
        report.summary["not_judged"] = f"{why}; {HOW}"
    if report.new or report.errors:
        report.summary["verdict"] = "fail"
    else:
        report.summary["verdict"] = "not_judged" if why else "pass"


def _source_files(report: Report, run: RunInfo) -> list[str]:
    """The files whose inline suppressions are checked: those of the findings and of the
    guards judged harmless, and the target's own file."""
    files = [f.path for f in report.findings]
    files += [d["path"] for d in report.summary.get("dismissed", [])]
    spec_file = run.target.rpartition(":")[0]
    if spec_file.endswith(".py"):
        files.append(spec_file)
    return list(dict.fromkeys(files))


def analyze_trace(path: str | Path, run: RunInfo | None = None, **fields: Any) -> Report:
    """Audit one trace file you already have (every `.size()[0]` is a token dim unless
    `run.token_sources` says otherwise)."""
    return analyze({0: parse_file(path)}, run, **fields)


def audit_logs(path: str | Path, options: AuditOptions | None = None, **fields: Any) -> Report:
    """Audit recorded logs without running anything (`arfuse audit --trace PATH`): a TORCH_TRACE
    directory (one log per rank), one `.log[.gz]`, a tarball of them, or a `--keep` directory.
    num_tokens is read from the recorded create_symbol sources unless `token_sources` names it
    (`["L['input_ids'].size()[0]"]`); raises `ValueError` listing the candidates when that is
    ambiguous. Several ranks: findings carry their ranks, and the ARF3xx rules compare them."""
    from arfuse.audit.offline import load_traces

    opts = AuditOptions.of(options, **fields)
    traces, run = load_traces(path, opts)
    return analyze(traces, run, opts)


def audit(
    target: Any,
    sizes: Sequence[int] | None = None,
    *,
    options: AuditOptions | None = None,
    **fields: Any,
) -> Report:
    """Audit a target. A `"FILE.py:NAME"` / `"pkg.module:NAME"` string runs in a fresh process;
    an `AuditTarget` or `(model, make_inputs[, kwargs])` tuple runs in this process. `options`
    (or its fields as keywords: `strict=True`, `select=["ARF1"]`, `timeout=300`) configure it."""
    if sizes is not None:
        fields["sizes"] = sizes
    opts = AuditOptions.of(options, **fields)
    if isinstance(target, str):
        from arfuse.audit.live.run import run_target

        result = run_target(target, opts)
        try:
            return analyze(result.traces, result.run, opts)
        finally:
            result.close()
    return _audit_in_process(target, opts)


def _audit_in_process(obj: Any, opts: AuditOptions) -> Report:
    import time

    import torch

    from arfuse.audit.live import sizes as sweeps
    from arfuse.audit.live.capture import capture_trace
    from arfuse.audit.live.target import coerce
    from arfuse.audit.live.worker import sweep_target
    from arfuse.audit.trace.run_info import CallResult

    target = coerce(obj, "audit(target)")
    if target.world_size is not None:
        raise ValueError(
            "a multi-rank AuditTarget (world_size set) must be audited in a fresh "
            "process: pass its spec string, audit('file.py:NAME')"
        )
    plan = sweeps.sweep(target, opts.sizes)
    with contextlib.ExitStack() as stack:
        if opts.keep:
            out = opts.keep
            out.mkdir(parents=True, exist_ok=True)
        else:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arfuse-audit-")))
        torch._dynamo.reset()  # a cached compile of the same code would log no guards
        t0 = time.perf_counter()
        with capture_trace(out / "trace.log") as log:
            result = sweep_target(
                target, {"sizes": plan, "strict": opts.strict, "backend": opts.backend}
            )
        torch._dynamo.reset()
        trace = parse_file(log)
    run = RunInfo(
        target=target.name or type(target.model).__name__,
        sizes=plan,
        token_sources=result["token_sources"],
        token_dims=result["token_dims"],
        calls=[CallResult.from_json(c) for c in result["calls"]],
        backend=result["backend"],
        strict=result["strict"],
        seconds=round(time.perf_counter() - t0, 2),
        min_tokens=target.min_tokens,
        max_tokens=target.max_tokens,
    )
    return analyze({0: trace}, run, opts)
