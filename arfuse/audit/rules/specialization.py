"""ARF1xx: num_tokens specialization - every guard, pin and recompile on the token count.

Evidence comes from the trace: `guard_added_fast` and `symbolic_shape_specialization` events
(grouped per rule and source line), `recompile_reasons` artifacts, and `compilation_metrics`
of compiles that failed with `ConstraintViolationError`. Only guards on token symbols count; the
0/1-specialization bounds torch adds to every dynamic dim are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from arfuse.audit.attribution import Attribution, attribute, is_framework
from arfuse.audit.context import AuditContext
from arfuse.audit.findings import Finding, Location
from arfuse.audit.guards import GuardClass, classify, symbols
from arfuse.audit.rules import rule
from arfuse.audit.trace import (
    CompilationMetrics, CompileId, Frame, GuardAddedFast, SymbolicShapeSpecialization,
)


@dataclass
class _Group:
    """Evidence for one finding: one rule at one source line."""

    attribution: Attribution
    exprs: list[str] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    compile_ids: list[CompileId] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    seen: set = field(default_factory=set)  # (list index, item): `in` on the lists is O(n)

    def add(self, expr: str, symbol: str, source: str, cid: CompileId | None,
            size: int | None) -> None:
        for i, (seq, item) in enumerate(((self.exprs, expr), (self.symbols, symbol),
                                         (self.sources, source), (self.compile_ids, cid),
                                         (self.sizes, size))):
            if item is not None and item != "" and (i, item) not in self.seen:
                self.seen.add((i, item))
                seq.append(item)


def _cve_compiles(ctx: AuditContext) -> set[CompileId]:
    out = set()
    for m in ctx.trace.of(CompilationMetrics):
        if "ConstraintViolation" in (m.fail_type or ""):
            cid = m.metrics_compile_id or m.compile_id
            if cid is not None:
                out.add(cid)
    return out


def token_decisions(ctx: AuditContext) -> list[tuple[GuardClass, str, str, str,
                                                     CompileId | None, Attribution]]:
    """(class, expr, symbol, source, compile id, attribution) for every token guard/pin.

    A reshape that needs divisibility adds a Mod guard plus floor-division consequences
    (`Ne((s0//4), 0)`, `Eq((s0//((s0//4))), 4)`); on a line with a Mod guard those count as
    divisibility too, so the line gets one finding, not three."""
    cached = ctx.__dict__.get("_token_decisions")
    if cached is not None:
        return cached
    out = []
    for e in ctx.trace.events:
        if isinstance(e, GuardAddedFast):
            tokens = {s for s in symbols(e.expr) if ctx.token_source(e.compile_id, s)}
            cls = classify(e.expr, tokens) if tokens else None
            expr = e.expr
        elif isinstance(e, SymbolicShapeSpecialization):
            src = ctx.token_source(e.compile_id, e.symbol)
            if not src and any(ctx.is_token_source(s) for s in e.sources):
                src = e.sources[0]
            tokens = {e.symbol} if src else set()
            cls = GuardClass.PIN if tokens and e.value not in ("0", "1") else None
            expr = f"{e.symbol} == {e.value}"
        else:
            continue
        if cls is None or cls is GuardClass.RELATION:
            continue
        where = attribute(e.user_stack, e.stack)
        if where is None:
            continue
        sym = sorted(tokens)[0]
        out.append((cls, expr, sym, ctx.token_source(e.compile_id, sym) or "", e.compile_id,
                    where))
    div_lines = {(w.decision.filename, w.decision.line) for c, *_, w in out
                 if c is GuardClass.DIVISIBILITY}
    result = []
    for cls, expr, sym, src, cid, where in out:
        if (where.decision.filename, where.decision.line) in div_lines and "//" in expr:
            cls = GuardClass.DIVISIBILITY
        if cls is not GuardClass.FRAMEWORK:
            result.append((cls, expr, sym, src, cid, where))
    ctx.__dict__["_token_decisions"] = result
    return result


def _grouped(ctx: AuditContext, wanted: GuardClass) -> dict[tuple[str, int], _Group]:
    groups: dict[tuple[str, int], _Group] = {}
    cve = _cve_compiles(ctx)
    for cls, expr, sym, src, cid, where in token_decisions(ctx):
        if cls is not wanted or (wanted is GuardClass.PIN and cid in cve):
            continue
        key = (where.decision.filename, where.decision.line)
        group = groups.setdefault(key, _Group(where))
        group.add(expr, sym, src, cid, ctx.compile_sizes.get(cid) if cid else None)
    return groups


COMPILER_FIX = ("nothing in the model decided this: torch added the guard itself. Accept it in "
                "the baseline (--write-baseline) or report it upstream if it recompiles in "
                "production")


def _finding(code: str, name: str, message: str, group: _Group, fix: str) -> Finding:
    a = group.attribution
    details = [f"guard `{x}`" for x in group.exprs]
    if a.by == "compiler":
        details.append(f"added by the compiler itself in {a.decision.name or 'torch'} "
                       f"(no model line decided it)")
        message = f"[compiler] {message}"
        fix = COMPILER_FIX
    return Finding(
        code=code, name=name, message=message, location=Location.of(a.decision),
        expr="; ".join(group.exprs), symbol=group.symbols[0] if group.symbols else "",
        compile_id=str(group.compile_ids[0]) if group.compile_ids else "",
        frames=[Location.of(f) for f in a.frames], details=details,
        num_tokens=sorted(group.sizes), fix=fix)


def _src(group: _Group) -> str:
    return _pretty(group.sources[0]) if group.sources else "num_tokens"


def _pretty(source: str) -> str:
    return re.sub(r"L\['([^']+)'\]", r"\1", source)


@rule("ARF101", "num-tokens-pinned",
      "num_tokens is compared for equality with a constant (the graph specializes to it)",
      """
      ## What it does
      Finds source lines where the token count is compared for equality with a constant
      (`Eq(s0, 16)`, `Ne(s0, 16)`) or specialized to one (`symbolic_shape_specialization`),
      including values computed from the size outside torch (`[0] * n`, `np.ceil(n / 64)`).

      ## Why is this bad?
      At the constant, torch.compile builds a graph that is valid for exactly one token count;
      every other count fails its guard and recompiles (or, past the recompile limit, falls
      back to eager). Under `mark_dynamic` the same line raises `ConstraintViolationError`
      (see ARF105).

      ## Example
      ```python
      def forward(self, x):
          if x.shape[0] == 16:        # ARF101
              return self.decode_path(x)
          return self.prefill_path(x)
      ```

      ## Fix
      Make the choice inside a custom op (its real kernel may branch freely; its fake kernel
      must not), or compute the value with torch ops on the symbolic size
      (`torch.sym_max`, `//`) instead of Python `int`/`numpy` on it.
      """,
      fix="move the comparison into a custom op's real kernel, or keep the size symbolic")
def check_pinned(ctx: AuditContext) -> Iterable[Finding]:
    for group in _grouped(ctx, GuardClass.PIN).values():
        consts = sorted({x.split("==")[-1].strip() for x in group.exprs if "==" in x})
        pin = f"; specialized to {', '.join(consts)}" if consts else ""
        yield _finding("ARF101", "num-tokens-pinned",
                       f"{_src(group)} is compared with a constant here{pin}: the compiled graph "
                       f"is valid for one token count only", group,
                       "")


@rule("ARF102", "num-tokens-range-guard",
      "a threshold branch on num_tokens guards the compiled graph on a range",
      """
      ## What it does
      Finds source lines that compare the token count against a threshold (`s0 <= 2048`,
      `s0 > 8192`), whether in model code, a custom op's fake kernel, or a pattern replacement.

      ## Why is this bad?
      The compiled graph is only valid on one side of the threshold. When traffic crosses it,
      torch.compile recompiles (ARF104) - in production, at the first large batch. The classic
      case is `if num_tokens <= max_token_num:` choosing a fused kernel.

      ## Example
      ```python
      def forward(self, x):
          if x.shape[0] <= 2048:      # ARF102
              return fused_allreduce(x)
          return allreduce(x)
      ```

      ## Fix
      Put the threshold inside an opaque custom op whose real kernel branches at run time
      (its fake kernel returns the same shapes for every size), or compile one artifact per
      range on purpose (`arfuse.compile(model, ranges="auto")`).
      """,
      fix="branch at run time inside a custom op's real kernel, or compile per range on purpose")
def check_range(ctx: AuditContext) -> Iterable[Finding]:
    for group in _grouped(ctx, GuardClass.RANGE).values():
        yield _finding("ARF102", "num-tokens-range-guard",
                       f"{_src(group)} is compared with a threshold here "
                       f"({', '.join(f'`{x}`' for x in group.exprs)}): the graph recompiles "
                       f"when num_tokens crosses it", group, "")


@rule("ARF103", "num-tokens-divisibility-guard",
      "a reshape/slice or branch demands num_tokens be divisible by a constant",
      """
      ## What it does
      Finds source lines that add a divisibility guard on the token count
      (`Eq(Mod(s0, 4), 0)`), typically a `view(-1, k, ...)`, a chunk/split into fixed
      pieces, or `if n % k == 0:`.

      ## Why is this bad?
      The compiled graph holds only for token counts with that remainder: a batch with another
      remainder recompiles, and a reshape that assumes divisibility fails for it at run time.

      ## Example
      ```python
      def forward(self, x):
          return x.view(-1, 4, self.hidden)   # ARF103: num_tokens % 4 == 0
      ```

      ## Fix
      Pad the token dim to a multiple outside the compiled region, or reshape along a dim
      that does not involve num_tokens.
      """,
      fix="pad num_tokens outside the compiled region, or reshape a dim that is not num_tokens")
def check_divisibility(ctx: AuditContext) -> Iterable[Finding]:
    for group in _grouped(ctx, GuardClass.DIVISIBILITY).values():
        yield _finding("ARF103", "num-tokens-divisibility-guard",
                       f"{_src(group)} must be divisible here "
                       f"({', '.join(f'`{x}`' for x in group.exprs)}): other token counts "
                       f"recompile", group, "")


# -- ARF104: recompiles --------------------------------------------------------------------
_LOC = re.compile(r"([^\s(]+?\.py):(\d+) in ([\w<>.]+)(?: \(([^()]*)\))?")
# where Dynamo evaluates a guard on behalf of the traced line: never the decision
_EVAL_PLUMBING = re.compile(r"_dynamo/variables/|fx/experimental/|_dynamo/symbolic_convert")
_MISMATCH = re.compile(r"tensor '([^']+)' size mismatch at index (\d+)\. expected (\d+), actual (\d+)")
_TORCH_REL = re.compile(r"^(_dynamo|_inductor|fx|_subclasses|_library|_functorch|_prims|_refs|"
                        r"_decomp|nn|distributed|_higher_order_ops)/")


def _reason_entries(payload: object) -> list[str]:
    if isinstance(payload, list):
        return [str(p) for p in payload]
    if isinstance(payload, str):
        return [p for p in payload.splitlines() if p.strip()]
    return []


def _user_frame(ctx: AuditContext, path: str, line: str, name: str) -> Frame | None:
    if _TORCH_REL.match(path):
        return None
    full = ctx.resolve_path(path)
    if is_framework(full):
        return None
    return Frame(full, int(line), name)


def _reason_lines(ctx: AuditContext, text: str) -> list[Frame]:
    """The model lines a failed-guard description points at (0/1 notes dropped).

    Each part reads `<guard>  # <code>  # <path>:<line> in <fn> [(<inner frame or note>)]`,
    parts joined by ` and `; the note on torch's own 0/1 bound starts "(user code shown".
    """
    out, compiler = [], []
    for m in _LOC.finditer(text):
        path, line, name, paren = m.groups()
        if text[m.end(3):].lstrip().startswith("(user code shown"):
            continue
        inner = _LOC.search(paren or "")
        frame = _user_frame(ctx, *inner.groups()[:3]) if inner else None
        frame = frame or _user_frame(ctx, path, line, name)
        if frame and frame not in out:
            out.append(frame)
        elif frame is None and not _EVAL_PLUMBING.search(path):
            # the compiler's own guard (an Inductor frame): its full path from the string table
            compiler.append(Frame(ctx.resolve_path(path), int(line), name))
    return out or compiler[:1]


@rule("ARF104", "num-tokens-recompile",
      "a new num_tokens value failed a guard and recompiled the model",
      """
      ## What it does
      Reads the `recompile_reasons` of every recompile during the sweep and reports those
      caused by a guard on the token count, at the line that added the failing guard.
      Recompiles caused only by torch's 0/1 specialization (num_tokens == 1) are not reported.

      ## Why is this bad?
      Each recompile costs seconds to minutes of compile time in the serving path, and after
      `torch._dynamo.config.recompile_limit` recompiles the frame silently runs eagerly.

      ## Example
      ```python
      def forward(self, x):
          if x.shape[0] <= 2048:   # ARF102 + ARF104 when a batch of 2049 arrives
              ...
      ```

      ## Fix
      Remove the guard named in the finding (see ARF101-ARF103 at the same line).
      """,
      fix="remove the guard at this line (see the ARF101-ARF103 finding at the same line)")
def check_recompile(ctx: AuditContext) -> Iterable[Finding]:
    groups: dict[tuple[str, int], tuple[Frame, list[tuple[CompileId, str]], list[int]]] = {}
    pins = {cid: where for _c, _x, _s, _src, cid, where in token_decisions(ctx)
            if _c is GuardClass.PIN}
    code_of = {m.metrics_compile_id or m.compile_id: m.metrics for m in
               ctx.trace.of(CompilationMetrics)}
    for art in ctx.trace.artifacts("recompile_reasons"):
        cid = art.compile_id
        n = ctx.compile_sizes.get(cid) if cid else None
        if n is not None and n < 2:
            continue  # num_tokens 0/1 always gets its own graph: torch's 0/1 specialization
        for entry in _reason_entries(art.payload_json()):
            failed_id, _, text = entry.partition(": ")
            failed = CompileId.parse(failed_id)
            frames: list[Frame] = []
            mm = _MISMATCH.search(text)
            if mm:
                arg, dim, expected, _actual = mm.groups()
                if not ctx.is_token_source(f"L['{arg}'].size()[{dim}]") or int(expected) <= 1:
                    continue
                if failed in pins:
                    frames = [pins[failed].decision]
                else:
                    m = code_of.get(failed) or {}
                    if m.get("co_filename"):
                        frames = [Frame(m["co_filename"], int(m.get("co_firstlineno") or 0),
                                        str(m.get("co_name", "")))]
            elif any(name in text for name in ctx.token_source_names):
                frames = _reason_lines(ctx, text)
            guard = text.split("  #")[0].strip()
            for f in frames:
                g = groups.setdefault((f.filename, f.line), (f, [], []))
                if cid is not None and (cid, guard) not in g[1]:
                    g[1].append((cid, guard))
                if n is not None and n not in g[2]:
                    g[2].append(n)
    limit_hits = sorted(n for m in ctx.trace.of(CompilationMetrics)
                        if "recompile limit" in (m.fail_reason or "").lower()
                        for n in [ctx.compile_sizes.get(m.metrics_compile_id or m.compile_id)]
                        if n is not None)
    limit = (f"; torch._dynamo's recompile limit was hit at num_tokens={limit_hits[0]}: from "
             f"there on new sizes run EAGERLY (not compiled)") if limit_hits else ""
    for frame, events, sizes in groups.values():
        cids = list(dict.fromkeys(c for c, _ in events))
        at = f" at num_tokens={', '.join(map(str, sorted(sizes)))}" if sizes else ""
        yield Finding(
            code="ARF104", name="num-tokens-recompile",
            message=f"recompiled {len(cids)} time(s){at} because a guard from this line "
                    f"failed{limit}",
            location=Location.of(frame),
            expr="; ".join(dict.fromkeys(g for _, g in events)),
            compile_id=str(cids[0]) if cids else "", frames=[Location.of(frame)],
            details=[f"recompile {c} (num_tokens={ctx.compile_sizes.get(c, '?')}): "
                     f"failed `{g}`" for c, g in events],
            num_tokens=sorted(sizes), fix="")


@rule("ARF105", "num-tokens-constraint-violation",
      "torch raised ConstraintViolationError: num_tokens was marked dynamic but specialized",
      """
      ## What it does
      Reports compiles that failed with `ConstraintViolationError` - the token dim was marked
      dynamic (`torch._dynamo.mark_dynamic`, `--strict`) and code specialized it - at the
      line that specialized it, instead of crashing the audit.

      ## Why is this bad?
      With `mark_dynamic` the model does not compile at all; with `maybe_mark_dynamic` the
      same line silently pins num_tokens (ARF101).

      ## Example
      ```python
      torch._dynamo.mark_dynamic(x, 0)
      model(x)    # forward does `if x.shape[0] == 16:` -> ConstraintViolationError
      ```

      ## Fix
      Remove the specialization at the reported line (see ARF101).
      """,
      fix="remove the specialization at this line (see ARF101)")
def check_constraint_violation(ctx: AuditContext) -> Iterable[Finding]:
    cve = _cve_compiles(ctx)
    metrics = {m.metrics_compile_id or m.compile_id: m for m in ctx.trace.of(CompilationMetrics)}
    seen: dict[tuple[str, int], Finding] = {}
    for cls, expr, sym, src, cid, where in token_decisions(ctx):
        if cid not in cve or cls is not GuardClass.PIN:
            continue
        key = (where.decision.filename, where.decision.line)
        reason = (metrics[cid].fail_reason or "").strip().splitlines()
        why = next((r.strip(" -") for r in reason if "marked" in r), reason[0] if reason else "")
        f = seen.get(key)
        if f is None:
            seen[key] = Finding(
                code="ARF105", name="num-tokens-constraint-violation",
                message=f"ConstraintViolationError: {why}" if why else
                "ConstraintViolationError: num_tokens was specialized",
                location=Location.of(where.decision), expr=expr, symbol=sym,
                compile_id=str(cid), frames=[Location.of(x) for x in where.frames],
                details=[f"guard `{expr}`"], num_tokens=[n for n in [ctx.compile_sizes.get(cid)]
                                                         if n is not None],
                fix="")
        elif f"guard `{expr}`" not in f.details:
            f.details.append(f"guard `{expr}`")
    # A failed compile whose trace names no pin: attribute to the frame torch blamed.
    for cid in cve - {CompileId.parse(f.compile_id) for f in seen.values()}:
        m = metrics[cid].metrics
        path, line = m.get("fail_user_frame_filename"), m.get("fail_user_frame_lineno")
        frame = Frame(path or m.get("co_filename") or "<unknown>",
                      int(line or m.get("co_firstlineno") or 0), str(m.get("co_name", "")))
        seen[(frame.filename, frame.line)] = Finding(
            code="ARF105", name="num-tokens-constraint-violation",
            message="ConstraintViolationError: "
                    + (m.get("fail_reason") or "").strip().splitlines()[0:1][0]
            if m.get("fail_reason") else "ConstraintViolationError",
            location=Location.of(frame), compile_id=str(cid), frames=[Location.of(frame)],
            fix="")
    yield from seen.values()
