"""Whether a set of logs can say anything about num_tokens: a verdict only on evidence.

A log in which no compile made the token dim symbolic proves nothing: every size was a
constant of its graph (torch.compile's default `dynamic=None` compiles the first size it sees
as one), so "num_tokens stays dynamic" would be a guess. Nor does a log in which nothing
compiled. Such a run is NOT JUDGED: the report says why and how to record a judgeable log.
"""

from __future__ import annotations

from collections.abc import Mapping

from arfuse.audit.judge.context import AuditContext
from arfuse.audit.trace import facts
from arfuse.audit.trace.records import CompilationMetrics, CreateSymbol, DynamoStart

HOW = (
    "to record a judgeable log, mark the token dim dynamic before the first call "
    "(torch._dynamo.maybe_mark_dynamic(x, 0), or torch.compile(dynamic=True)), serve two or "
    "more sizes, or name the token dim with --token-source"
)


def why_not_judged(contexts: Mapping[int, AuditContext]) -> str | None:
    """None when some compile on some rank made a token dim symbolic; otherwise the reason the
    logs cannot judge num_tokens (one sentence, without the how-to)."""
    ctxs = list(contexts.values())
    for rank, c in contexts.items():
        cut = _incomplete(c)
        if cut:
            return f"rank {rank}'s log {cut}: what it shows was audited, but a PASS needs it whole"
    if any(c.token_symbols for c in ctxs):
        return None
    ok = failed = 0
    for c in ctxs:
        for m in c.trace.of(CompilationMetrics):
            if m.fail_type:
                failed += 1
            else:
                ok += 1
    if not ok and not any(True for c in ctxs for _ in c.trace.of(CreateSymbol)):
        if failed:
            return f"every compile failed ({failed} of {failed}): nothing compiled"
        return (
            "no frame was compiled in these logs (no compilation_metrics record: a non-strict "
            "torch.export, or a job that never called its compiled model)"
        )
    named = sorted({s for c in ctxs for s in c.run.token_sources})
    if named:
        return f"{', '.join(named)} never became a symbol: every compile kept it static"
    return (
        f"no compile made a tensor size symbolic ({ok} compile(s), every size a constant of "
        f"its graph)"
    )


def _incomplete(ctx: AuditContext) -> str | None:
    """How a log ends before its last compile did: a last record cut short, or a compile that
    started (dynamo_start) and never finished (no compilation_metrics)."""
    if ctx.trace.truncated_line is not None:
        return f"ends in a record cut short (line {ctx.trace.truncated_line})"
    finished = set(facts.compiles(ctx.trace)) | {
        facts.compile_id(m) for m in ctx.trace.of(CompilationMetrics)
    }
    open_ = [e.compile_id for e in ctx.trace.of(DynamoStart) if e.compile_id not in finished]
    if open_:
        return f"ends while compile {open_[-1]} was running (it never finished)"
    return None
