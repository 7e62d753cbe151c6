"""ARF2xx: fusion coverage - allreduce + add/RMSNorm chains that stayed unfused.

ARF201 reads the Inductor post-grad graph (after every post-grad pass, ours included), so it
works whether or not `arfuse.AllReduceFusionPass` ran. ARF202/ARF203 read the `arfuse_fusion`
artifact the pass writes for every graph it processes:
`{"matches": int, "specs": [...], "disabled": null | "reason", "skipped": [{"reason", "node"}],
"token_range": null | [lo, hi], "by_range": [{"reason", "node"}], "allreduce_ops": [...],
"norm_ops": [...]}` (the last two: the extra ops the pass's FusionConfig named, which ARF201
then recognises too). Under `arfuse.compile` (compile ranges) a range above the fusion threshold
is left to Inductor on purpose: its chains are listed under `by_range`, and neither ARF201 nor
ARF203 reports them. Nor does ARF201 report the chain in a bare pass's `arfuse_unfused_N`
branch (`arfuse.token_branch`): it runs only above the fusion limit, where the op would not
fuse either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from arfuse import optable
from arfuse.audit.findings import Finding, Location
from arfuse.audit.judge.attribution import is_framework, user_frame
from arfuse.audit.judge.context import AuditContext
from arfuse.audit.rules import finding, rule
from arfuse.audit.trace.graph import Graph, Node, parse_graph
from arfuse.audit.trace.records import (
    FUSION_REPORT,
    Artifact,
    CompileId,
    Frame,
)
from arfuse.audit.trace.slim import GRAPHS

_PASS_THROUGH = {
    "_c10d_functional.wait_tensor",
    "c10d_functional.wait_tensor",
    "aten.view",
    "aten.reshape",
    "aten._unsafe_view",
    "aten.squeeze",
    "aten.unsqueeze",
    "prims.convert_element_type",
    "aten.clone",
    "aten._to_copy",
    "aten.alias",
    "aten.contiguous",
    "aten.expand",
}
_RSQRT = {"aten.rsqrt", "aten.reciprocal"}


def post_grad_graphs(ctx: AuditContext) -> list[tuple[CompileId | None, Graph]]:
    return [(a.compile_id, parse_graph(a.payload or "")) for a in ctx.trace.post_grad_graphs()]


def left_by_range(ctx: AuditContext) -> set[int]:
    """Line numbers of post-grad graphs that `arfuse.compile` left to Inductor on purpose: the
    pass report written just before the graph (same compile) lists chains under `by_range`."""
    reports = sorted(fusion_reports(ctx), key=lambda ap: ap[0].line_no)
    out = set()
    for g in ctx.trace.post_grad_graphs():
        before = [p for a, p in reports if a.line_no < g.line_no and a.compile_id == g.compile_id]
        if before and before[-1].get("by_range") and not before[-1].get("skipped"):
            out.add(g.line_no)
    return out


def _forward(graph: Graph, node: Node) -> list[Node]:
    """`node` and everything it reaches through waits, views and casts."""
    out, todo = [node], [node]
    while todo:
        for u in graph.users(todo.pop().name):
            if u.op in _PASS_THROUGH and u not in out:
                out.append(u)
                todo.append(u)
    return out


def _norm_after(
    graph: Graph, starts: list[Node], norm_ops: Iterable[str] = (), depth: int = 8
) -> list[Node]:
    """The RMSNorm fed by any of `starts`: an rms_norm op, or mean -> ... -> rsqrt."""
    seen: dict[str, int] = {}
    queue = deque((s, 0) for s in starts)
    chain: list[Node] = []
    while queue:
        node, d = queue.popleft()
        if node.name in seen or d > depth:
            continue
        seen[node.name] = d
        if optable.is_norm(node.op, norm_ops):
            return [node]
        if node.op == "aten.mean" or node.op in _RSQRT:
            chain.append(node)
        for u in graph.users(node.name):
            queue.append((u, d + 1))
    ops = {n.op for n in chain}
    return chain if "aten.mean" in ops and ops & _RSQRT else []


def unfused_chains(
    graph: Graph, allreduce_ops: Iterable[str] = (), norm_ops: Iterable[str] = ()
) -> Iterable[tuple[Node, Node | None, list[Node]]]:
    """(all_reduce, residual add or None, norm nodes) for every unfused chain; `allreduce_ops`
    and `norm_ops` are the extra ops a FusionConfig named (qualified names)."""
    allreduce_ops, norm_ops = tuple(allreduce_ops), tuple(norm_ops)
    for node in graph.nodes.values():
        if not optable.is_allreduce(node.target, allreduce_ops):
            continue
        if node.module.startswith(optable.UNFUSED_BRANCH):
            continue  # the pass's own branch above the fusion limit: unfused by design
        reduced = _forward(graph, node)
        adds = [u for n in reduced for u in graph.users(n.name) if u.op == "aten.add"]
        add = adds[0] if adds else None
        norm = _norm_after(graph, _forward(graph, add) if add else reduced, norm_ops)
        if add is not None or norm:
            yield node, add, norm


def _where(nodes: list[Node]) -> tuple[Frame | None, list[Frame]]:
    frames = [n.source for n in nodes if n.source is not None]
    user = [f for f in frames if not is_framework(f.filename)]
    ordered = list(dict.fromkeys(user + frames))
    return (ordered[0] if ordered else None), ordered


@rule(
    "ARF201",
    "allreduce-norm-unfused",
    "an all_reduce followed by a residual add and/or RMSNorm was left unfused",
    """
      ## What it does
      Reads the Inductor post-grad graph of every compiled graph and finds an all_reduce
      (`_c10d_functional.all_reduce` + `wait_tensor`, `arfuse.all_reduce`, or an op named in
      the pass's `FusionConfig(allreduce_ops=...)`, read from its report) whose result
      feeds, through views and casts, a residual add and/or an RMSNorm (an `rms_norm` op, a
      `FusionConfig(norm_ops=...)` op, or the `pow -> mean -> add eps -> rsqrt` chain) - i.e.
      a chain that `torch.ops.arfuse.fused_allreduce_*` would have replaced. Not reported:
      the chain in the bare pass's own `arfuse_unfused_N` branch, which runs only above the
      fusion limit, where the chain is faster unfused.

      ## Why is this bad?
      Unfused, the chain does a full allreduce, writes the sum to memory, and reads it back
      for the add and the norm: on Hopper the fused one-shot kernel is up to several times
      faster for decode-sized batches.

      ## Example
      ```python
      compiled = torch.compile(model)   # no fusion pass: every layer's chain is ARF201
      ```

      ## Fix
      Compile with the pass (`options={"post_grad_custom_post_pass":
      arfuse.AllReduceFusionPass()}` or `arfuse.compile(model)`); if the pass ran, see
      ARF202/ARF203 for why it left this chain alone (dtype, hidden size, a form it does not
      match).
      """,
    fix="compile with arfuse.AllReduceFusionPass(), or see ARF202/ARF203 for why it skipped",
    needs=GRAPHS,
)
def check_unfused(ctx: AuditContext) -> Iterable[Finding]:
    found: dict[tuple[str, int], Finding] = {}
    intended = left_by_range(ctx)
    allreduce_ops, norm_ops = configured_ops(ctx)
    for art in ctx.trace.post_grad_graphs():
        if art.line_no in intended:
            continue  # a compile range above the fusion threshold: unfused by design
        cid, graph = art.compile_id, parse_graph(art.payload or "")
        for ar, add, norm in unfused_chains(graph, allreduce_ops, norm_ops):
            parts = (
                [ar.target.rsplit(".", 1)[0]]
                + (["add"] if add else [])
                + (["RMSNorm"] if norm else [])
            )
            chain = " -> ".join(parts)
            # the model line: the add/norm a user wrote, else the collective's own line
            where, frames = _where(([add] if add else []) + norm + [ar])
            if where is None:
                continue
            _grouped(
                found,
                (where.filename, where.line),
                f"{cid}: {chain} (node {ar.name})",
                finding(
                    message=f"{chain} left unfused in compiled graph {cid}",
                    location=Location.of(where),
                    expr=chain,
                    compile_id=str(cid or ""),
                    frames=[Location.of(f) for f in frames],
                ),
            )
    return found.values()


def _grouped(found: dict, key: tuple, detail: str, first: Finding) -> None:
    """One finding per key (a source line, say; `first` is it if the key is new); every hit
    adds a detail line."""
    found.setdefault(key, first).details.append(detail)


def configured_ops(ctx: AuditContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The extra allreduce and norm ops the pass's FusionConfig named, from its reports."""
    allreduce: dict[str, None] = {}
    norm: dict[str, None] = {}
    for _, p in fusion_reports(ctx):
        allreduce.update(dict.fromkeys(map(str, p.get("allreduce_ops") or ())))
        norm.update(dict.fromkeys(map(str, p.get("norm_ops") or ())))
    return tuple(allreduce), tuple(norm)


def fusion_reports(ctx: AuditContext) -> list[tuple[Artifact, dict]]:
    out = []
    for a in ctx.trace.artifacts(FUSION_REPORT):
        p = a.payload_json()
        if isinstance(p, dict):
            out.append((a, p))
    return out


@rule(
    "ARF202",
    "fusion-pass-disabled",
    "the fusion pass ran but disabled itself (the reason is in the finding)",
    """
      ## What it does
      Reports every compiled graph for which `arfuse.AllReduceFusionPass` logged that it was
      disabled, with the reason it gave (no process group, a group it cannot use, world size 1).

      ## Why is this bad?
      The model compiles and runs, just without fusion: the regression is silent.

      ## Example
      ```python
      dist.init_process_group("gloo", rank=0, world_size=1, ...)
      torch.compile(tp_model, options={"post_grad_custom_post_pass": arfuse.AllReduceFusionPass()})
      # ARF202: world size 1 of group '0': nothing to fuse
      ```

      ## Fix
      Act on the reason in the message (initialize the process group before compiling, pass
      the tensor-parallel group, compile at the real world size).
      """,
    fix="act on the reason in the message",
    needs=GRAPHS,
)
def check_disabled(ctx: AuditContext) -> Iterable[Finding]:
    found: dict[str, Finding] = {}
    for art, p in fusion_reports(ctx):
        reason = p.get("disabled")
        if not reason:
            continue
        if reason in found:
            found[reason].details.append(f"graph {art.compile_id}")
            continue
        frame = user_frame(ctx.trace, art.compile_id)
        found[reason] = finding(
            message=f"fusion pass disabled: {reason}",
            location=Location.of(frame),
            expr=str(reason),
            compile_id=str(art.compile_id or ""),
            frames=[Location.of(frame)],
            details=[f"graph {art.compile_id}"],
        )
    return found.values()


@rule(
    "ARF203",
    "fusion-candidate-skipped",
    "the fusion pass saw an allreduce chain and skipped it (the reason is in the finding)",
    """
      ## What it does
      Reports every candidate chain the fusion pass logged under `skipped`, with its reason
      (dtype, hidden size, a norm form or residual layout it does not fuse).

      ## Why is this bad?
      The chain stays unfused (ARF201 usually fires at the same line) and the reason is only
      visible in the trace.

      ## Example
      ```python
      config = arfuse.FusionConfig(norm=frozenset({"hf"}))   # model uses F.rms_norm
      # ARF203: pattern ... is disabled in FusionConfig
      # also: hidden size not a multiple of 8, dtypes that differ, a broadcasting residual
      ```

      ## Fix
      Act on the reason in the message: enable the form in `FusionConfig`, or change the
      model (dtype, hidden size, contiguous residual).
      """,
    fix="act on the reason in the message",
    needs=GRAPHS,
)
def check_skipped(ctx: AuditContext) -> Iterable[Finding]:
    graphs = dict(post_grad_graphs(ctx))
    found: dict[tuple[str, int, str], Finding] = {}
    for art, p in fusion_reports(ctx):
        for item in p.get("skipped") or []:
            if not isinstance(item, dict):
                continue
            reason, node = str(item.get("reason", "")), str(item.get("node", ""))
            if reason == p.get("disabled"):
                continue  # reported once by ARF202
            g = graphs.get(art.compile_id)
            src = g.nodes[node].source if g and node in g.nodes else None
            frame = src or user_frame(ctx.trace, art.compile_id)
            _grouped(
                found,
                (frame.filename, frame.line, reason),
                f"graph {art.compile_id}: node {node}",
                finding(
                    message=f"fusion pass skipped node {node}: {reason}",
                    location=Location.of(frame),
                    expr=reason,
                    compile_id=str(art.compile_id or ""),
                    frames=[Location.of(frame)],
                ),
            )
    return found.values()
