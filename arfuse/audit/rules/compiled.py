"""ARF107-108: did the model compile at all, and as one graph? A verdict about guards means
nothing for code that runs eagerly.

Evidence: `dynamo_graph_break_reason` artifacts (the break's line and Dynamo's reason) and
`compilation_metrics` whose `fail_type` says Dynamo gave up on a frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from arfuse.audit.findings import Finding, Location
from arfuse.audit.judge.attribution import user_frame
from arfuse.audit.judge.context import AuditContext
from arfuse.audit.paths import package_path
from arfuse.audit.rules import finding, rule
from arfuse.audit.trace import facts
from arfuse.audit.trace.records import BREAK_REASON, CompilationMetrics, Frame
from arfuse.audit.trace.slim import GUARDS

_BREAK_AT = re.compile(r"Graph break in user code at (.+?):(\d+)\s*$", re.M)
_REASON = re.compile(r"Graph Break Reason:\s*(.*)$", re.M)
_EXPLANATION = re.compile(r"^\s*Explanation:\s*(.*)$", re.M)


def _first_line(text: str) -> str:
    return next((x.strip() for x in text.strip().splitlines() if x.strip()), "")


@rule(
    "ARF107",
    "graph-break",
    "Dynamo breaks the graph: the code around the break runs eagerly and the rest compiles "
    "as separate frames",
    """
      ## What it does
      Reports every graph break Dynamo logged while compiling the audited model, at the line
      of the break, with Dynamo's reason (`print`, `.item()`, `.tolist()`, numpy on a tensor,
      an unsupported builtin, `torch._dynamo.graph_break()`).

      ## Why is this bad?
      A graph break on the token path splits the model into several compiled frames with
      eager Python between them: fusion cannot cross the break, each resumed frame guards
      its own inputs, and a guard found in a later frame is only a symptom - the break is the
      line to fix. Under `fullgraph=True` the same code fails to compile.

      ## Example
      ```python
      def forward(self, x):
          n = x.shape[0]
          print(n)                 # ARF107: graph break (builtin print)
          return self.mlp(x)
      ```

      ## Fix
      Remove the break (no host syncs, prints or numpy on the token path), or move it out of
      the compiled region; `torch.compile(..., fullgraph=True)` turns any break into an error.
      """,
    fix="remove the host-side call at this line, or keep it outside the compiled region",
    needs=GUARDS,
)
def check_graph_break(ctx: AuditContext) -> Iterable[Finding]:
    seen: dict[tuple[str, int], Finding] = {}
    for art in ctx.trace.artifacts(BREAK_REASON):
        text = art.payload or ""
        m = _BREAK_AT.search(text)
        if not m or "falling back to eager" in text:
            continue  # the whole frame was skipped: ARF108 reports it
        path, line = ctx.resolve_path(m.group(1).strip()), int(m.group(2))
        reason = _REASON.search(text)
        explanation = _EXPLANATION.search(text)
        why = " - ".join(
            x
            for x in (
                reason.group(1).strip().rstrip(":") if reason else "",
                explanation.group(1).strip() if explanation else "",
            )
            if x
        )
        key = (path, line)
        if key in seen:
            if art.compile_id is not None and str(art.compile_id) not in seen[key].details[-1]:
                seen[key].details.append(f"also in compile {art.compile_id}")
            continue
        size = ctx.compile_sizes.get(art.compile_id) if art.compile_id else None
        frame = Frame(path, line)
        seen[key] = finding(
            message=f"graph break: {why or 'Dynamo stopped the graph here'}; the model runs "
            f"eagerly around this line and compiles the rest as separate frames",
            location=Location.of(frame),
            compile_id=str(art.compile_id or ""),
            frames=[Location.of(frame)],
            details=[f"in compile {art.compile_id}"],
            num_tokens=[size] if size is not None else [],
        )
    yield from seen.values()
    yield from _breaks_without_reason(ctx, seen)


def _breaks_without_reason(
    ctx: AuditContext, seen: dict[tuple[str, int], Finding]
) -> Iterable[Finding]:
    """Graph breaks some torch versions record only as a resumed frame
    (`torch_dynamo_resume_in_forward_at_114`: the break was at line 114 of that file) or as the
    `restart_reasons` of the compile Dynamo restarted, with no break-reason artifact."""
    lines = {line for _, line in seen}
    restarts: list[tuple[CompilationMetrics, str]] = []
    for m in ctx.trace.of(CompilationMetrics):
        d = m.metrics
        at = facts.resumed_at(str(d.get("co_name") or ""))
        path = str(d.get("co_filename") or "")
        if at is not None and path and at[1] not in lines and package_path(path) is None:
            lines.add(at[1])
            frame = Frame(path, at[1], at[0])
            yield finding(
                message=f"graph break in {at[0]}: Dynamo resumed a new frame after this line "
                f"({d.get('co_name')}); the model runs eagerly around it and compiles the "
                f"rest as separate frames",
                location=Location.of(frame),
                compile_id=str(facts.compile_id(m) or ""),
                frames=[Location.of(frame)],
                details=[f"resumed frame {d.get('co_name')} compiled as {facts.compile_id(m)}"],
            )
        reasons = d.get("restart_reasons")
        if isinstance(reasons, list) and reasons and not seen:
            restarts.append((m, "; ".join(map(str, reasons))))
    if restarts and not lines:  # no line known at all: the restarted compile's frame
        m, why = restarts[0]
        frame = user_frame(ctx.trace, facts.compile_id(m))
        if package_path(frame.filename) is not None:
            return  # a restart inside a library: no line of the user's to point at
        yield finding(
            message=f"Dynamo restarted this compile after a graph break ({why}); the model "
            f"runs eagerly around the break and compiles the rest as separate frames",
            location=Location.of(frame),
            compile_id=str(facts.compile_id(m) or ""),
            frames=[Location.of(frame)],
            details=[f"restart of {facts.compile_id(m)}: {why}"],
        )


@rule(
    "ARF108",
    "frame-not-compiled",
    "Dynamo could not compile a frame (or nothing at all): it runs eagerly at every num_tokens",
    """
      ## What it does
      Reports frames whose compile failed (`compilation_metrics.fail_type`, other than the
      `ConstraintViolationError` of ARF105), at the line Dynamo blamed, with its reason; and
      a run in which no frame compiled successfully at all. A run where nothing compiled can
      never pass the audit: there is no compiled graph whose dynamism could be proven.

      ## Why is this bad?
      The frame silently runs in eager mode for every token count: no fusion, no compiled
      kernels, and no guard to audit - so "no findings" would be a lie.

      ## Example
      ```python
      @torch.compiler.disable          # or an unsupported construct inside forward
      def forward(self, x): ...
      ```

      ## Fix
      Fix the construct Dynamo names in the reason (see the log), or compile a smaller region
      that Dynamo supports.
      """,
    fix="fix the construct Dynamo names in the reason, or compile a region it supports",
    needs=GUARDS,
)
def check_not_compiled(ctx: AuditContext) -> Iterable[Finding]:
    metrics = list(ctx.trace.of(CompilationMetrics))
    found: list[Finding] = []
    ok = 0
    for m in metrics:
        fail = m.fail_type or ""
        if not fail:
            ok += 1
            continue
        if "ConstraintViolation" in fail:
            continue
        d = m.metrics
        frame = m.failed_frame
        cid = m.of_compile
        if package_path(frame.filename) is not None:  # a library's function compiled directly
            frame = user_frame(ctx.trace, cid)
        size = ctx.compile_sizes.get(cid) if cid else None
        found.append(
            finding(
                message=f"Dynamo could not compile {d.get('co_name') or 'this frame'} "
                f"({fail}: {_first_line(m.fail_reason or '')}); it runs eagerly",
                location=Location.of(frame),
                compile_id=str(cid or ""),
                frames=[Location.of(frame)],
                details=[x for x in (m.fail_reason or "").strip().splitlines()[:6] if x.strip()],
                num_tokens=[size] if size is not None else [],
            )
        )
    if not metrics and ctx.run.calls:
        yield finding(
            message=f"nothing compiled: {len(ctx.run.calls)} call(s) ran and none compiled a "
            f"graph (a torch.compiler.disable, or a model that is not the compiled "
            f"one); no verdict on num_tokens is possible",
            location=Location.of(Frame("<target>", 0)),
        )
    if found and not ok:
        found[0].message += (
            f"; nothing compiled: all {len(metrics)} compile(s) failed, so "
            f"every call ran eagerly and no verdict on num_tokens is possible"
        )
    yield from found


@rule(
    "ARF109",
    "num-tokens-static",
    "the token dim you named stayed a constant in every compile: each graph holds for one size",
    """
      ## What it does
      When num_tokens is named (`--token-source`, or the dims a live audit marks dynamic) but
      no compile made it a symbol, reports the compiled frame with the sizes each compile was
      specialised to.

      ## Why is this bad?
      A graph compiled for num_tokens=16 holds for 16 only: every other count recompiles
      (until the recompile limit, then runs eagerly). torch.compile's default `dynamic=None`
      does this with the first size it sees; `dynamic=False` with every size.

      ## Example
      ```python
      compiled = torch.compile(model, dynamic=False)
      compiled(torch.randn(16, h)); compiled(torch.randn(32, h))   # ARF109: two static graphs
      ```

      ## Fix
      Mark the token dim dynamic before the first call
      (`torch._dynamo.maybe_mark_dynamic(x, 0)`) or compile with `dynamic=True`.
      """,
    fix="mark the token dim dynamic before the first call (torch._dynamo.maybe_mark_dynamic)",
    needs=GUARDS,
)
def check_static_token_dim(ctx: AuditContext) -> Iterable[Finding]:
    named, compiles = ctx.run.token_sources, facts.compiles(ctx.trace)
    if not named or not compiles or ctx.token_symbols:
        return
    sizes = sorted({n for c in compiles if (n := ctx.compile_sizes.get(c)) is not None})
    frame = user_frame(ctx.trace, compiles[0])
    seen = f" (num_tokens={', '.join(map(str, sizes))})" if sizes else ""
    yield finding(
        message=f"{', '.join(named)} stayed a constant in all {len(compiles)} compile(s){seen}: "
        f"each graph holds for its one size and every other num_tokens recompiles",
        location=Location.of(frame),
        compile_id=str(compiles[0]),
        frames=[Location.of(frame)],
        details=[f"compile {c}: static" for c in compiles[:6]],
        num_tokens=sizes,
    )
