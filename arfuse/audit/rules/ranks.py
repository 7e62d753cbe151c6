"""ARF3xx: cross-rank consistency - ranks of one job that compiled different things.

Tensor-parallel ranks must run the same collectives in the same order; a rank-dependent branch
(on `dist.get_rank()`, a rank-local config, a size only one rank sees) makes them compile
different graphs, and the first collective that does not match hangs the job. These rules
compare the ranks' traces of one run (`arfuse audit --trace DIR` with one log per rank, or a
live audit with `audit_ranks="all"`), graph by graph: the compile id `[frame/compile]` names the
same compiled graph on every rank when the ranks run the same code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from arfuse import optable
from arfuse.audit.findings import Finding, Location
from arfuse.audit.judge.attribution import is_framework, user_frame
from arfuse.audit.judge.context import AuditContext, pretty_source
from arfuse.audit.judge.verdicts import decisions
from arfuse.audit.rules import finding, rule
from arfuse.audit.rules.fusion import configured_ops, fusion_reports, post_grad_graphs
from arfuse.audit.trace import facts
from arfuse.audit.trace.graph import Graph, Node, parse_graph
from arfuse.audit.trace.records import (
    AOT_GRAPHS,
    RECOMPILE_REASONS,
    CompileId,
    Frame,
    GraphDump,
)
from arfuse.audit.trace.slim import RANKS


class RanksContext:
    """Every audited rank's `AuditContext`, with the per-graph facts the ARF3xx rules compare."""

    def __init__(self, contexts: dict[int, AuditContext]) -> None:
        self.contexts = dict(sorted(contexts.items()))
        self._graphs: dict[int, dict[CompileId | None, Graph]] = {}

    @property
    def ranks(self) -> list[int]:
        return list(self.contexts)

    def compiles(self, rank: int) -> list[CompileId]:
        """Compile ids that finished (a compilation_metrics event), in log order."""
        return facts.compiles(self.contexts[rank].trace)

    def graphs(self, rank: int) -> dict[CompileId | None, Graph]:
        """compile id -> Inductor's post-grad graph; AOTAutograd's graph under backends that
        log no post-grad graph (aot_eager): same collectives, no fusion."""
        if rank not in self._graphs:
            ctx = self.contexts[rank]
            graphs = dict(post_grad_graphs(ctx))
            if not graphs:
                graphs = {
                    e.compile_id: parse_graph(e.payload or "")
                    for e in ctx.trace.of(GraphDump)
                    if e.graph_kind in AOT_GRAPHS
                }
            self._graphs[rank] = graphs
        return self._graphs[rank]

    def frame(self, cid: CompileId | None) -> Frame:
        """The user's line for a compiled graph (from whichever rank recorded it)."""
        for ctx in self.contexts.values():
            f = user_frame(ctx.trace, cid)
            if f.filename != "<compiled graph>":
                return f
        return Frame("<compiled graph>", 0)


_V = TypeVar("_V")


def ranks_text(by_rank: Mapping[int, _V], fmt: Callable[[_V], str]) -> str:
    """'rank 0: X; rank 1: Y', ranks with the same value grouped ('ranks 0, 2: X')."""
    groups: dict[str, list[int]] = defaultdict(list)
    for r, v in by_rank.items():
        groups[fmt(v)].append(r)
    parts = []
    for text, rs in sorted(groups.items(), key=lambda kv: kv[1]):
        who = f"rank {rs[0]}" if len(rs) == 1 else f"ranks {', '.join(map(str, rs))}"
        parts.append(f"{who}: {text}")
    return "; ".join(parts)


def first_difference(seqs: Mapping[int, Sequence[Any]]) -> int | None:
    """The first position where the ranks' sequences differ (a sequence that has ended differs
    from one that has not), or None where they are all the same."""
    longest = max((len(s) for s in seqs.values()), default=0)
    for i in range(longest):
        if len({repr(s[i]) if i < len(s) else None for s in seqs.values()}) > 1:
            return i
    return None


def at_position(seqs: Mapping[int, Sequence[_V]], pos: int, missing: _V) -> dict[int, _V]:
    """Each rank's item at `pos`; `missing` where its sequence ended before it."""
    return {r: (s[pos] if pos < len(s) else missing) for r, s in seqs.items()}


def _user_frame(nodes: Iterable[Node]) -> Frame | None:
    frames = [n.source for n in nodes if n is not None and n.source is not None]
    user = [f for f in frames if not is_framework(f.filename)]
    return user[0] if user else None  # torch's own frames: the caller decides (rc.frame)


def rank_finding(
    message: str,
    where: Frame,
    ranks: list[int],
    compile_ids: list[str],
    details: list[str],
    expr: str = "",
) -> Finding:
    return finding(
        message=message,
        location=Location.of(where),
        expr=expr,
        compile_id=compile_ids[0] if compile_ids else "",
        frames=[Location.of(where)],
        details=details,
        ranks=sorted(ranks),
    )


@rule(
    "ARF301",
    "rank-compile-count-mismatch",
    "ranks compiled a frame a different number of times",
    """
      ## What it does
      Counts the compiles of every compiled frame on every rank of one run (from each rank's
      `compilation_metrics`) and reports frames whose count differs between ranks, naming the
      ranks and their compile ids (`[frame/compile]`).

      ## Why is this bad?
      Ranks of a tensor-parallel job must run the same graph: when one rank recompiles and
      another does not, they run different code from then on - often different collectives
      (ARF304), which hangs the job. A recompile on one rank only also stalls every other
      rank at the next collective for the whole compile time.

      ## Example
      ```python
      def forward(self, x):
          if dist.get_rank() == 1 and x.shape[0] <= 1024:   # rank 1 guards and recompiles
              x = x * 2
      ```

      ## Fix
      Remove the rank-dependent decision (see ARF302 at the guard's line), or make it a value
      every rank computes the same way.
      """,
    fix="make every rank take the same decisions (see ARF302/ARF304 for the line)",
    scope="ranks",
    needs=RANKS,
)
def check_compile_count(rc: RanksContext) -> Iterable[Finding]:
    by_frame: dict[int, dict[int, list[CompileId]]] = defaultdict(lambda: {r: [] for r in rc.ranks})
    for r in rc.ranks:
        for cid in rc.compiles(r):
            by_frame[cid.frame_id][r].append(cid)
    for frame_id, per_rank in sorted(by_frame.items()):
        counts = {r: len(c) for r, c in per_rank.items()}
        if len(set(counts.values())) < 2:
            continue
        first = next(c[0] for c in per_rank.values() if c)
        where = rc.frame(first)
        text = ranks_text(
            per_rank,
            lambda cids: (
                f"{len(cids)} compile(s)" + (f" ({', '.join(map(str, cids))})" if cids else "")
            ),
        )
        fn = f" {where.name}" if where.name else ""
        on_every_rank: set[str] = set.intersection(
            *[{str(c) for c in cids} for cids in per_rank.values()]
        )
        extra = sorted({str(c) for cids in per_rank.values() for c in cids} - on_every_rank)
        details = [
            f"rank {r}: " + ("; ".join(_compile_story(rc.contexts[r], c)) or "not compiled")
            for r, c in per_rank.items()
        ]
        details += [
            f"rank {r}'s log is cut short (line {ctx.trace.truncated_line}): a compile "
            f"in progress when the job died is not counted"
            for r, ctx in rc.contexts.items()
            if ctx.trace.truncated_line is not None
        ]
        why = _why_more(rc, per_rank)
        yield rank_finding(
            f"frame {frame_id}{fn} compiled a different number of times per rank: {text}"
            + (f"; {why}" if why else ""),
            where,
            rc.ranks,
            extra or [str(first)],
            details,
            expr=f"frame {frame_id}",
        )


def _dynamic(ctx: AuditContext, cid: CompileId) -> bool:
    return any(c == cid for c, _ in ctx.token_symbols)


def _compile_story(ctx: AuditContext, cids: list[CompileId]) -> list[str]:
    """Each compile of a frame on one rank: static or dynamic in num_tokens, at which size,
    and the guard whose failure caused it (torch's recompile reason)."""
    reasons = {a.compile_id: a.payload_json() for a in ctx.trace.artifacts(RECOMPILE_REASONS)}
    out = []
    for cid in cids:
        n = ctx.compile_sizes.get(cid)
        text = f"{cid} {'dynamic' if _dynamic(ctx, cid) else 'static'}"
        text += f" at num_tokens={n}" if n is not None else ""
        reason = reasons.get(cid)
        if isinstance(reason, list) and reason:
            text += f" after `{str(reason[0]).split(': ', 1)[-1].split('  #')[0].strip()}` failed"
        out.append(text)
    return out


def _why_more(rc: RanksContext, per_rank: dict[int, list[CompileId]]) -> str:
    """Why the ranks with more compiles made them: static compiles where another rank's were
    dynamic (one rank left num_tokens unmarked), or guards that failed on them only."""
    fewest = min(len(c) for c in per_rank.values())
    parts = []
    for r, cids in per_rank.items():
        if len(cids) == fewest:
            continue
        ctx = rc.contexts[r]
        static = [c for c in cids if not _dynamic(ctx, c)]
        others = [q for q in per_rank if q != r and len(per_rank[q]) == fewest]
        if (
            static
            and others
            and any(_dynamic(rc.contexts[q], c) for q in others for c in per_rank[q])
        ):
            parts.append(
                f"rank {r} compiled {len(static)} static graph(s) where rank(s) "
                f"{', '.join(map(str, others))} compiled one dynamic in num_tokens (num_tokens "
                f"is not marked dynamic on rank {r}: mark it on every rank)"
            )
    return "; ".join(parts)


def _token_guards(ctx: AuditContext) -> dict[CompileId | None, dict[str, Frame]]:
    """compile id -> {guard with the token symbol spelled as its source: decision line}."""
    out: dict[CompileId | None, dict[str, Frame]] = defaultdict(dict)
    for d in decisions(ctx):
        if d.where.by == "compiler":
            continue  # follows from the graph (a rank with a tighter guard needs none)
        for g in d.guards:
            name = pretty_source(g.source) if g.source else "num_tokens"
            text = re.sub(rf"\b{re.escape(g.symbol)}\b", name, g.expr) if g.symbol else g.expr
            out[d.compile_id].setdefault(text, d.where.decision)
    return out


@rule(
    "ARF302",
    "rank-token-guard-mismatch",
    "the same compiled graph guards num_tokens differently on different ranks",
    """
      ## What it does
      Compares, for every compiled graph (compile id) that several ranks compiled, the guards
      on the token count each rank added, and reports guards that only some ranks have - at
      the line that added them. Guards the compiler added itself (`[compiler]` findings)
      follow from the graph and are not compared.

      ## Why is this bad?
      A guard on one rank only means that rank decides something from num_tokens that the
      others do not: when traffic crosses the threshold, it alone recompiles (ARF301), and if
      the two sides of the branch run different collectives, the job hangs.

      ## Example
      ```python
      self.rank = dist.get_rank()
      ...
      if self.rank == 1 and x.shape[0] <= 1024:   # ARF302: the guard exists on rank 1 only
          x = x * 2
      ```

      ## Fix
      Make the decision the same on every rank (a config value all ranks share, not the rank
      id), or move it into an opaque custom op (see ARF102).
      """,
    fix="make the decision identical on every rank, or move it into a custom op",
    scope="ranks",
    needs=RANKS,
)
def check_token_guards(rc: RanksContext) -> Iterable[Finding]:
    guards = {r: _token_guards(ctx) for r, ctx in rc.contexts.items()}
    common = set.intersection(*[set(rc.compiles(r)) for r in rc.ranks])
    found: dict[tuple[str, int], Finding] = {}
    for cid in sorted(common):
        per_rank = {r: guards[r].get(cid, {}) for r in rc.ranks}
        every = set.intersection(*[set(g) for g in per_rank.values()])
        for g in per_rank.values():
            for text, where in g.items():
                if text in every:
                    continue
                having = [q for q in rc.ranks if text in per_rank[q]]
                lacking = [q for q in rc.ranks if q not in having]
                key = (where.filename, where.line)
                detail = (
                    f"graph {cid}: `{text}` on rank(s) {', '.join(map(str, having))}, "
                    f"not on {', '.join(map(str, lacking))}"
                )
                if key in found:
                    if detail not in found[key].details:
                        found[key].details.append(detail)
                    continue
                found[key] = rank_finding(
                    f"compiled graph {cid} guards num_tokens with `{text}` on rank(s) "
                    f"{', '.join(map(str, having))} but not on rank(s) "
                    f"{', '.join(map(str, lacking))}",
                    where,
                    rc.ranks,
                    [str(cid)],
                    [detail],
                    expr=text,
                )
    return found.values()


def _fused(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes.values() if optable.is_fused(n.target)]


def _placement(n: Node) -> str:
    where = f" at {n.source.filename.rsplit('/', 1)[-1]}:{n.source.line}" if n.source else ""
    return f"{n.op}{where}"


@rule(
    "ARF303",
    "rank-fusion-mismatch",
    "the fusion pass fused different allreduce chains on different ranks",
    """
      ## What it does
      Compares, for every compiled graph that several ranks compiled, where the fused
      `arfuse.fused_allreduce_*` ops are in each rank's Inductor post-grad graph (and the
      match count the fusion pass logged), and reports graphs where the ranks differ.

      ## Why is this bad?
      The fused op runs its own allreduce (FlashInfer's one-shot/two-shot kernel through a
      shared workspace); the unfused chain runs NCCL's. A rank that fused a chain and a rank
      that did not wait for each other in different collectives: the job hangs or reads a
      workspace nobody wrote. Causes: the pass enabled on some ranks only, a rank-dependent
      config or threshold table, a graph that differs per rank (ARF302).

      ## Example
      ```python
      options = {"post_grad_custom_post_pass": arfuse.AllReduceFusionPass()}
      if dist.get_rank() != 0:
          options = {}            # ARF303: rank 0 fuses, the others do not
      torch.compile(model, options=options)
      ```

      ## Fix
      Compile every rank with the same pass and the same `FusionConfig` and thresholds table;
      remove rank-dependent branches in the model.
      """,
    fix="compile every rank with the same fusion pass, FusionConfig and thresholds",
    scope="ranks",
    needs=RANKS,
)
def check_fusion(rc: RanksContext) -> Iterable[Finding]:
    matches = {
        r: {a.compile_id: p.get("matches") for a, p in fusion_reports(ctx)}
        for r, ctx in rc.contexts.items()
    }
    common = set.intersection(*[set(rc.graphs(r)) for r in rc.ranks])
    for cid in sorted(common, key=lambda c: (c is None, c or CompileId(0, 0))):
        fused = {r: _fused(rc.graphs(r)[cid]) for r in rc.ranks}
        placement = {r: [_placement(n) for n in nodes] for r, nodes in fused.items()}
        counts = {r: matches[r].get(cid) for r in rc.ranks}
        if len({tuple(p) for p in placement.values()}) < 2 and len(set(counts.values())) < 2:
            continue
        # the first position where the ranks differ: its node's line is the finding's line
        pos = first_difference(placement) or 0  # 0: only the match counts differ
        where = _user_frame(nodes[pos] for nodes in fused.values() if pos < len(nodes)) or rc.frame(
            cid
        )
        text = ranks_text(placement, lambda p: f"{len(p)} fused op(s)")
        yield rank_finding(
            f"compiled graph {cid} has different fused allreduce ops per rank: {text}",
            where,
            rc.ranks,
            [str(cid)],
            [
                f"graph {cid} rank {r}: {', '.join(p) or 'no fused op'}"
                + (
                    f" (fusion pass: {counts[r]} match(es))"
                    if counts[r] is not None
                    else " (fusion pass did not run)"
                )
                for r, p in placement.items()
            ],
            expr=f"graph {cid}",
        )


def _collectives(graph: Graph, extra: tuple[str, ...] = ()) -> list[Node]:
    """Collective nodes; `extra`: allreduce ops a FusionConfig named (`vllm::all_reduce`)."""
    return [n for n in graph.nodes.values() if optable.is_collective(n.target, extra)]


@rule(
    "ARF304",
    "rank-collective-mismatch",
    "the same compiled graph issues different collectives on different ranks (a hang)",
    """
      ## What it does
      Lists the collectives (all_reduce, all_gather, reduce_scatter, all_to_all, broadcast,
      `arfuse.all_reduce`, the fused allreduce ops) of every compiled graph in each rank's
      Inductor post-grad graph (AOTAutograd's graph under `aot_eager`), in graph order, and
      reports graphs whose sequences differ between ranks - at the first collective where they
      part, naming the ranks.

      ## Why is this bad?
      Collectives match across ranks by order. When rank 0's third collective is an
      all_reduce and rank 1's is an all_gather (or nothing), both wait forever: the classic
      tensor-parallel hang, which shows at run time as a NCCL timeout minutes later with no
      pointer to the cause.

      ## Example
      ```python
      def forward(self, x):
          y = self.proj(x)
          if dist.get_rank() == 0:        # ARF304: rank 0 runs one all_reduce more
              y = funcol.all_reduce(y, "sum", group)
          return y
      ```

      ## Fix
      Make every rank issue the same collectives in the same order: remove rank-dependent
      branches around collectives, compile every rank with the same passes (ARF303).
      """,
    fix="make every rank issue the same collectives in the same order",
    scope="ranks",
    needs=RANKS,
)
def check_collectives(rc: RanksContext) -> Iterable[Finding]:
    common = set.intersection(*[set(rc.graphs(r)) for r in rc.ranks])
    extra = tuple(
        dict.fromkeys(op for ctx in rc.contexts.values() for op in configured_ops(ctx)[0])
    )
    for cid in sorted(common, key=lambda c: (c is None, c or CompileId(0, 0))):
        nodes = {r: _collectives(rc.graphs(r)[cid], extra) for r in rc.ranks}
        seqs = {r: [n.op for n in ns] for r, ns in nodes.items()}
        if len({tuple(s) for s in seqs.values()}) < 2:
            continue
        pos = first_difference(seqs)
        assert pos is not None  # the sequences differ (checked above)
        at = at_position(seqs, pos, "nothing")
        where = _user_frame(ns[pos] for ns in nodes.values() if pos < len(ns)) or rc.frame(cid)
        yield rank_finding(
            f"compiled graph {cid} issues different collectives per rank (a hang): collective "
            f"#{pos + 1} is {ranks_text(at, str)}",
            where,
            rc.ranks,
            [str(cid)],
            [
                f"graph {cid} rank {r}: {len(s)} collective(s): {', '.join(s) or 'none'}"
                for r, s in seqs.items()
            ],
            expr=f"graph {cid} collective #{pos + 1}",
        )
