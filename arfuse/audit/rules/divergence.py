"""ARF305-308: the divergences tlparse's multi-rank page shows (`--all-ranks-html`), as findings
with the graph, the ranks, what differs and a line to look at.

tlparse 0.4.3 compares, per rank: the set of compile ids (ARF301 here), the sequence of cache
hits and misses, the collective schedule Inductor logged (ARF304), each graph's tensor
metadata, the order graphs ran in, and, per graph, collectives in the output code without a
wait. It draws them on a page; these rules name the cause and fail the audit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from arfuse.audit.findings import Finding
from arfuse.audit.judge.attribution import user_frame
from arfuse.audit.judge.context import AuditContext
from arfuse.audit.rules import rule
from arfuse.audit.rules.ranks import (
    RanksContext,
    at_position,
    first_difference,
    rank_finding,
    ranks_text,
)
from arfuse.audit.trace import facts
from arfuse.audit.trace.records import CompileId
from arfuse.audit.trace.slim import DIVERGENCE


@rule(
    "ARF305",
    "rank-cache-mismatch",
    "ranks found different graphs in their compile caches (some compiled, some loaded)",
    """
      ## What it does
      Compares the sequence of Inductor / AOTAutograd cache hits, misses and bypasses each rank
      logged (the `*_cache_hit` / `*_cache_miss` / `*_cache_bypass` artifacts, as tlparse's
      "cache hit/miss pattern"), and reports the first compile where the ranks differ.

      ## Why is this bad?
      A rank that misses compiles for seconds to minutes while the ranks that hit wait at the
      next collective: a stall at best, a collective timeout at worst. It also means the ranks
      do not share a cache (a per-node cache dir, a cache key that includes a rank-local value)
      or do not run the same code.

      ## Example
      ```
      TORCHINDUCTOR_CACHE_DIR=/local/$RANK/cache torchrun ...   # rank 0's cache is warm
      ```

      ## Fix
      Give every rank the same cache (a shared cache dir or a remote cache), or warm it for every
      rank; make sure no rank-local value enters the compiled graph.
      """,
    fix="share one compile cache between the ranks (or warm it on every rank)",
    scope="ranks",
    needs=DIVERGENCE,
)
def check_cache(rc: RanksContext) -> Iterable[Finding]:
    seqs = {
        r: [(str(cid), status) for cid, status, _ in facts.cache_statuses(ctx.trace)]
        for r, ctx in rc.contexts.items()
    }
    pos = first_difference({r: [s for _, s in seq] for r, seq in seqs.items()})
    if pos is None:
        return
    at = at_position(seqs, pos, ("-", "nothing"))
    cid = next((CompileId.parse(c) for c, _ in at.values() if c != "-"), None)
    where = rc.frame(cid)
    text = ranks_text(at, lambda cs: f"{cs[1]} ({cs[0]})")
    yield rank_finding(
        f"ranks found different graphs in their compile caches: cache lookup #{pos + 1} is {text}",
        where,
        rc.ranks,
        [str(cid)] if cid else [],
        [
            f"rank {r}: " + (" ".join(f"{s}({c})" for c, s in seq) or "no cache lookup logged")
            for r, seq in seqs.items()
        ],
        expr=f"cache lookup #{pos + 1}",
    )


def _meta_key(op: dict[str, Any]) -> tuple[str, str]:
    outs = [
        f"{o.get('dtype')}{list(o.get('shape') or [])} stride {list(o.get('stride') or [])}"
        for o in op.get("outputs") or []
        if isinstance(o, dict) and o.get("dtype") is not None
    ]
    return str(op.get("name")), "; ".join(outs)


@rule(
    "ARF306",
    "rank-tensor-meta-mismatch",
    "the same compiled graph has different tensor shapes, strides or dtypes on different ranks",
    """
      ## What it does
      Compares, for every compiled graph that several ranks compiled, the ops Inductor
      scheduled and the shape, stride and dtype of each op's outputs (the
      `inductor_runtime_and_tensor_meta` artifact, logged when
      `torch._inductor.config.log_tlparse` is on), and reports the first op where ranks differ.

      ## Why is this bad?
      Ranks that run one graph on different dtypes or layouts compute different things, and a
      collective on buffers of different sizes or dtypes hangs or corrupts data. Usually an
      input prepared differently on one rank (a dtype, a transpose, a rank-local batch).

      ## Example
      ```python
      y = torch.randn(8, h, dtype=torch.float64 if rank == 1 else torch.float32)
      compiled(x, y)          # ARF306: rank 1's graph works on float64
      ```

      ## Fix
      Feed every rank inputs of the same dtype, layout and shape (except the num_tokens the
      graph is dynamic in).
      """,
    fix="give every rank inputs of the same dtype, layout and shape",
    scope="ranks",
    needs=DIVERGENCE,
)
def check_tensor_meta(rc: RanksContext) -> Iterable[Finding]:
    metas = {r: facts.tensor_meta(ctx.trace) for r, ctx in rc.contexts.items()}
    common = set.intersection(*[set(m) for m in metas.values()])
    for cid in sorted(c for c in common if c is not None):
        ops = {r: [_meta_key(op) for op in m[cid]] for r, m in metas.items()}
        pos = first_difference(ops)
        if pos is None:
            continue
        at = at_position(ops, pos, ("nothing", ""))
        yield rank_finding(
            f"compiled graph {cid} works on different tensors per rank: op #{pos + 1} is "
            + ranks_text(at, lambda o: f"{o[0]} -> {o[1] or 'no output'}"),
            rc.frame(cid),
            rc.ranks,
            [str(cid)],
            [f"graph {cid} rank {r}: {len(o)} op(s)" for r, o in ops.items()],
            expr=f"graph {cid} op #{pos + 1}",
        )


@rule(
    "ARF307",
    "rank-execution-order-mismatch",
    "ranks ran their compiled graphs in a different order",
    """
      ## What it does
      Compares the order in which each rank ran its compiled graphs (the `graph_execution`
      artifact that `torch._inductor.debug.record_and_log_graph_execution_order()` logs) and
      reports the first call where ranks ran different graphs.

      ## Why is this bad?
      Collectives pair up by order: when rank 0 runs graph A and rank 1 runs graph B, their
      collectives meet the wrong partners - a hang, or silently mixed data when the buffers
      happen to match.

      ## Example
      ```python
      for fn in (f, g) if rank == 0 else (g, f):   # ARF307
          fn(x)
      ```

      ## Fix
      Make every rank call the compiled functions in the same order.
      """,
    fix="make every rank run its compiled graphs in the same order",
    scope="ranks",
    needs=DIVERGENCE,
)
def check_execution_order(rc: RanksContext) -> Iterable[Finding]:
    orders = {r: facts.execution_order(ctx.trace) for r, ctx in rc.contexts.items()}
    known = {r: o for r, o in orders.items() if o}
    if len(known) < 2:
        return
    pos = first_difference(known)
    if pos is None:
        return
    at = at_position(known, pos, "nothing")
    cid = next((CompileId.parse(c) for c in at.values() if CompileId.parse(c)), None)
    yield rank_finding(
        f"ranks ran their compiled graphs in a different order: call #{pos + 1} runs "
        + ranks_text(at, lambda c: f"graph {c}"),
        rc.frame(cid),
        sorted(known),
        [str(c) for c in at.values() if c != "nothing"],
        [f"rank {r}: {' '.join(o)}" for r, o in known.items()],
        expr=f"call #{pos + 1}",
    )


@rule(
    "ARF308",
    "collective-without-wait",
    "compiled code starts a collective it never waits for",
    """
      ## What it does
      Counts, in every graph's Inductor output code, the functional collectives it starts
      (`torch.ops._c10d_functional.all_reduce_.default(...)`, ...) and the `wait_tensor`
      calls, and reports graphs that start more than they wait for (tlparse's "missing wait"
      collectives parity).

      ## Why is this bad?
      The result leaves the graph before the collective finished: whoever reads it must wait,
      and code that does not reads a buffer still being reduced. Different ranks that differ
      here also issue their collectives at different points.

      ## Example
      ```python
      @torch.compile
      def f(x):
          return torch.ops._c10d_functional.all_reduce(x, "sum", group_name)  # no wait_tensor
      ```

      ## Fix
      Use `torch.distributed._functional_collectives` (it waits) or call
      `torch.ops._c10d_functional.wait_tensor` on the result inside the compiled region.
      """,
    fix="wait for the collective inside the compiled region (wait_tensor / funcol)",
    needs=DIVERGENCE,
)
def check_unwaited(ctx: AuditContext) -> Iterable[Finding]:
    for cid, code in facts.output_code_collectives(ctx.trace).items():
        if not code.unwaited:
            continue
        started = ", ".join(f"{op} x{n}" for op, n in sorted(code.started.items()))
        yield rank_finding(
            f"compiled graph {cid} starts {sum(code.started.values())} collective(s) and waits "
            f"for {code.waits}: {code.unwaited} result(s) leave the graph unfinished",
            user_frame(ctx.trace, cid),
            [ctx.rank],
            [str(cid)],
            [f"graph {cid}: {started}; wait_tensor x{code.waits}"],
            expr=f"graph {cid}",
        )
