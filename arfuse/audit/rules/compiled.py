"""ARF107-108: did the model compile at all, and as one graph? A verdict about guards means
nothing for code that runs eagerly.

Evidence: `dynamo_graph_break_reason` artifacts (the break's line and Dynamo's reason) and
`compilation_metrics` whose `fail_type` says Dynamo gave up on a frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from arfuse.audit.findings import Finding, Location
from arfuse.audit.judge.context import AuditContext
from arfuse.audit.rules import finding, rule
from arfuse.audit.trace.records import CompilationMetrics, Frame
from arfuse.audit.trace.slim import GUARDS

BREAK_ARTIFACT = "dynamo_graph_break_reason"
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
    for art in ctx.trace.artifacts(BREAK_ARTIFACT):
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
