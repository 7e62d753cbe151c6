"""Every num_tokens guard of a trace, judged over the token domain: one verdict per decision.

A decision is one source line in one compile. Its guards are judged together (their
conjunction is where the compiled graph stays valid), so a reshape's Mod guard and its
floor-division consequences give one verdict, not three. Then:

    holds everywhere in the domain                  -> dismissed (counted, listed with the reason)
    a compiler guard implied by the model's guards  -> folded into the model line's decision
    fails somewhere in the domain                   -> a decision of one kind:
        one count / every count but a few  PIN        a residue class   DIVISIBILITY
        contiguous runs                    RANGE      torch's own code  COMPILER

    j = judge(ctx)   # or ctx.judgement (computed once per context, on first use)
    for d in j.decisions: d.kind, d.where.decision, d.verdict.describe()
    j.dismissed        # the guards that hold everywhere, each with the reason
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from arfuse.audit.judge.attribution import Attribution, attribute, short_path
from arfuse.audit.judge.domain import Verdict
from arfuse.audit.judge.guards import GuardClass, classify, symbols
from arfuse.audit.trace.records import CompileId, GuardAddedFast, SymbolicShapeSpecialization

if TYPE_CHECKING:
    import numpy as np

    from arfuse.audit.judge.context import AuditContext

#: what a failing decision is; the rules (not the judge) name the codes
PIN, RANGE, DIVISIBILITY, COMPILER = "pin", "range", "divisibility", "compiler"
_BY_SHAPE = {
    "point": PIN,
    "except": PIN,
    "periodic": DIVISIBILITY,
    "interval": RANGE,
    "never": RANGE,
}
_BY_SYNTAX = {GuardClass.PIN: PIN, GuardClass.RANGE: RANGE, GuardClass.DIVISIBILITY: DIVISIBILITY}


@dataclass(frozen=True)
class TokenGuard:
    """One guard (or specialization) that involves a token symbol."""

    expr: str
    tokens: tuple[str, ...]  # the token symbols it names, sorted
    source: str
    compile_id: CompileId | None
    where: Attribution
    values: tuple[tuple[str, int], ...] = ()  # other symbols' values in this compile

    @property
    def symbol(self) -> str:
        return self.tokens[0]


@dataclass
class Decision:
    """One source line's guards in one compile, judged together."""

    where: Attribution
    compile_id: CompileId | None
    guards: list[TokenGuard]
    verdict: Verdict
    kind: str  # PIN, RANGE, DIVISIBILITY or COMPILER
    folded: list[TokenGuard] = field(default_factory=list)  # compiler re-checks of this line

    @property
    def line_key(self) -> tuple[str, int]:
        return self.where.decision.filename, self.where.decision.line


def token_guards(ctx: AuditContext) -> list[TokenGuard]:
    """Every guard/specialization event on a token symbol that names a source line."""
    out = []
    for e in ctx.trace.events:
        if isinstance(e, GuardAddedFast):
            tokens = tuple(sorted(s for s in symbols(e.expr) if ctx.token_source(e.compile_id, s)))
            expr = e.expr
        elif isinstance(e, SymbolicShapeSpecialization):
            src = ctx.token_source(e.compile_id, e.symbol)
            if not src and not any(ctx.is_token_source(s) for s in e.sources):
                continue
            tokens = (e.symbol,)
            expr = f"Eq({e.symbol}, {e.value})"
        else:
            continue
        if not tokens:
            continue
        where = attribute(e.user_stack, e.stack)
        if where is None:
            continue
        values = ctx.symbol_values(e.compile_id)
        others = tuple(
            sorted((s, values[s]) for s in symbols(expr) if s not in tokens and s in values)
        )
        src = ctx.token_source(e.compile_id, tokens[0]) or ""
        if not src and isinstance(e, SymbolicShapeSpecialization) and e.sources:
            src = e.sources[0]
        out.append(TokenGuard(expr, tokens, src, e.compile_id, where, others))
    return out


@dataclass
class Judgement:
    """Every token guard of one rank's trace, judged: the decisions that fail somewhere in the
    domain, and the guards dismissed (hold everywhere, or re-check a model line) with why."""

    decisions: list[Decision] = field(default_factory=list)
    dismissed: list[dict[str, Any]] = field(default_factory=list)
    _seen: set[tuple[str, str, int]] = field(default_factory=set, repr=False)

    def dismiss(self, guards: list[TokenGuard], where: Attribution, reason: str) -> None:
        for g in guards:
            key = (g.expr, where.decision.filename, where.decision.line)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.dismissed.append(
                {
                    "expr": g.expr,
                    "path": where.decision.filename,
                    "line": where.decision.line,
                    "by": where.by,
                    "compile_id": str(g.compile_id) if g.compile_id else "",
                    "reason": reason,
                }
            )


def decisions(ctx: AuditContext) -> list[Decision]:
    """The decisions of `ctx`'s judgement (judged once per context)."""
    return ctx.judgement.decisions


def judge(ctx: AuditContext) -> Judgement:
    """Judge every token guard of one rank's trace over the token domain (a pure function of
    the context; `AuditContext.judgement` keeps its result)."""
    j = Judgement()
    groups: dict[tuple[Any, str, int], list[TokenGuard]] = {}
    lo, hi = ctx.domain.lo, ctx.domain.hi
    for g in token_guards(ctx):  # numpy (arfuse.audit.judge.truth) loads only if there are any
        size = ctx.compile_sizes.get(g.compile_id) if g.compile_id else None
        if size is not None and not lo <= size <= hi:
            j.dismiss(
                [g],
                g.where,
                f"compiled for num_tokens={size:,}, outside the token "
                f"domain {ctx.domain}: that graph never serves it",
            )
            continue
        key = (g.compile_id, g.where.decision.filename, g.where.decision.line)
        groups.setdefault(key, []).append(g)
    judged: list[tuple[Decision, np.ndarray | None]] = []
    for guards in groups.values():
        judged += _judge_line(ctx, j, guards)
    out: list[Decision] = []
    kept: list[tuple[Decision, np.ndarray]] = []
    # strongest first (most failing counts), model lines before the compiler's
    order = sorted(
        judged,
        key=lambda dt: (
            dt[1] is None,
            dt[0].where.by == "compiler",
            -(0 if dt[1] is None else int((~dt[1]).sum())),
        ),
    )
    for d, t in order:  # (a line's guards that always hold were dismissed one by one)
        host = _implied_by(d, t, kept) if t is not None else None
        if host is not None:
            host.folded += d.guards
            line = f"{short_path(host.where.decision.filename)}:{host.where.decision.line}"
            who = "the compiler re-checks" if d.where.by == "compiler" else "follows from"
            j.dismiss(
                d.guards,
                d.where,
                f"{who} the guard decided at {line} (folded into that finding)",
            )
            continue
        if d.where.by != "compiler" and t is not None:
            kept.append((d, t))
        out.append(d)
    out.sort(key=lambda d: (d.line_key, str(d.compile_id)))
    j.decisions = out
    return j


def _judge_line(
    ctx: AuditContext, j: Judgement, guards: list[TokenGuard]
) -> list[tuple[Decision, np.ndarray | None]]:
    """The conjunction of the judgeable guards as one decision; an unjudgeable guard is its
    own decision, its kind given by its syntax."""
    from arfuse.audit.judge.truth import holds, verdict_of

    first_cid, where = guards[0].compile_id, guards[0].where
    compiler = where.by == "compiler"  # its own switch, whatever the shape: ARF106
    total: np.ndarray | None = None
    start = 0
    judgeable: list[TokenGuard] = []
    out: list[tuple[Decision, np.ndarray | None]] = []
    for g in guards:
        got = holds(g.expr, set(g.tokens), ctx.domain, dict(g.values))
        if isinstance(got, str):
            cls = classify(g.expr, set(g.tokens))
            if cls in _BY_SYNTAX:
                v = Verdict(g.expr, "unknown", ctx.domain, reason=got)
                kind = COMPILER if compiler else _BY_SYNTAX[cls]
                out.append((Decision(where, first_cid, [g], v, kind), None))
            else:
                j.dismiss([g], where, f"torch's own bound on a dynamic size ({got})")
            continue
        truth, start = got
        if truth.all():
            j.dismiss([g], where, verdict_of(g.expr, truth, start, ctx.domain).describe())
            continue
        total = truth if total is None else total & truth
        judgeable.append(g)
    if judgeable and total is not None:
        expr = " & ".join(dict.fromkeys(g.expr for g in judgeable))
        v = verdict_of(expr, total, start, ctx.domain)
        kind = COMPILER if compiler else _BY_SHAPE.get(v.shape, RANGE)
        out.insert(0, (Decision(where, first_cid, judgeable, v, kind), total))
    return out


def _implied_by(
    d: Decision, truth: np.ndarray, kept: list[tuple[Decision, np.ndarray]]
) -> Decision | None:
    """The model-line decision of the same compile that already implies `d` (d can only fail
    where it fails), else None. A compiler guard folds into any such line, or into the
    line's conjunction; a model line only when its guards are floor-division consequences of
    a size (`Ne(s0//4, 0)` after a `view(-1, 4, h)`), which no one wrote on purpose."""
    same = [(u, t) for u, t in kept if u.compile_id == d.compile_id]
    derived = all("//" in g.expr for g in d.guards)
    if d.where.by != "compiler" and not derived:
        return None
    for u, t in same:
        if not (t & ~truth).any():
            return u
    if same and d.where.by == "compiler":
        import numpy as np

        conj = np.logical_and.reduce([t for _, t in same])
        if not (conj & ~truth).any():
            return same[0][0]
    return None
