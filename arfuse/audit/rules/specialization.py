"""ARF1xx: num_tokens specialization - every guard, pin and recompile on the token count.

Evidence comes from the trace: `guard_added_fast` and `symbolic_shape_specialization` events,
`recompile_reasons` artifacts, and `compilation_metrics` of compiles that failed with
`ConstraintViolationError`. Each guard on a token symbol is judged exactly over the token domain
(`arfuse.audit.judge.verdicts`): a guard that holds for every num_tokens the model serves is not a
finding; one that fails somewhere gets the code its truth earns (ARF101 a pin, ARF102 a
threshold, ARF103 a residue class, ARF106 the compiler's own switch) and names the token counts
where the compiled graph stops being valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from arfuse.audit.findings import Finding, Location
from arfuse.audit.judge.attribution import Attribution, is_framework, short_path, user_frame
from arfuse.audit.judge.context import AuditContext, pretty_source
from arfuse.audit.judge.domain import recompiles_at
from arfuse.audit.judge.verdicts import COMPILER, DIVISIBILITY, PIN, RANGE, Decision, decisions
from arfuse.audit.rules import finding, rule
from arfuse.audit.trace.records import (
    RECOMPILE_REASONS,
    CompilationMetrics,
    CompileId,
    DynamoStart,
    Frame,
)
from arfuse.audit.trace.slim import COMPILED_FRAMES, GUARDS


@dataclass
class _Line:
    """Every decision of one kind at one source line, across compiles."""

    where: Attribution
    decisions: list[Decision] = field(default_factory=list)

    @property
    def exprs(self) -> list[str]:
        return list(dict.fromkeys(g.expr for d in self.decisions for g in d.guards))

    @property
    def flips(self) -> list[int]:
        return sorted({f for d in self.decisions for f in d.verdict.flips})

    @property
    def source(self) -> str:
        src = next((g.source for d in self.decisions for g in d.guards if g.source), "")
        return pretty_source(src) if src else "num_tokens"


def _cve_compiles(ctx: AuditContext) -> set[CompileId]:
    out = set()
    for m in ctx.trace.of(CompilationMetrics):
        if "ConstraintViolation" in (m.fail_type or ""):
            cid = m.of_compile
            if cid is not None:
                out.add(cid)
    return out


def _lines(ctx: AuditContext, kind: str) -> list[_Line]:
    lines: dict[tuple[str, int], _Line] = {}
    cve = _cve_compiles(ctx) if kind == PIN else set()
    for d in decisions(ctx):
        if d.kind != kind or d.compile_id in cve:
            continue
        lines.setdefault(d.line_key, _Line(d.where)).decisions.append(d)
    return list(lines.values())


def _compiled_frame(ctx: AuditContext, compile_id: object) -> Frame | None:
    """The model's frame Dynamo compiled as `compile_id` (the innermost frame of its
    `dynamo_start` stack outside torch and arfuse): where a compiler-made finding is shown."""
    for e in ctx.trace.of(DynamoStart):
        if str(e.compile_id) == str(compile_id):
            user = [f for f in e.stack or () if not is_framework(f.filename)]
            return user[-1] if user else None
    return None


def _finding(ctx: AuditContext, line: _Line, message: str) -> Finding:
    a = line.where
    details = []
    for d in line.decisions:
        size = ctx.compile_sizes.get(d.compile_id) if d.compile_id else None
        at = f" (compiled at num_tokens={size:,})" if size is not None else ""
        details.append(f"compile {d.compile_id}{at}: `{d.verdict.expr}` - {d.verdict.describe()}")
        for g in d.folded:
            f = g.where.decision
            who = "re-checked by the compiler" if g.where.by == "compiler" else "implied"
            details.append(f"also {who} at {short_path(f.filename)}:{f.line}: `{g.expr}`")
    if a.by == "compiler":
        details.append(
            f"added by the compiler itself in {a.decision.name or 'torch'} "
            f"(no model line decided it)"
        )
    sizes = sorted(
        {
            ctx.compile_sizes[d.compile_id]
            for d in line.decisions
            if d.compile_id in ctx.compile_sizes
        }
    )
    first = line.decisions[0]
    frames = list(a.frames)
    site = _compiled_frame(ctx, first.compile_id) if a.by == "compiler" else None
    if site is not None:  # shown on the model's code; the compiler's line is the related one
        frames = [site, *frames]
    return finding(
        message=message,
        location=Location.of(frames[0]),
        expr="; ".join(line.exprs),
        symbol=first.guards[0].symbol,
        compile_id=str(first.compile_id) if first.compile_id else "",
        frames=[Location.of(f) for f in frames],
        details=details,
        num_tokens=sizes,
    )


@rule(
    "ARF101",
    "num-tokens-pinned",
    "the compiled graph holds for one num_tokens only (or for every count but a few)",
    """
      ## What it does
      Finds source lines whose guards on the token count hold for a single count inside the
      token domain (`Eq(s0, 16)`, a `symbolic_shape_specialization`, `[0] * n`,
      `np.ceil(n / 64)` on a size) or fail for a few isolated counts (`Ne(s0, 8)`: every
      count except 8). Each guard is judged over the whole domain, so `Eq(ceil(s0/64), 1)`
      (valid for 1-64) is a threshold (ARF102), not a pin.

      ## Why is this bad?
      A pinned graph is valid for exactly one token count: every other count fails its guard
      and recompiles (past the recompile limit, it runs eagerly). An excluded count compiles
      its own graph when it arrives. Under `mark_dynamic` the same line raises
      `ConstraintViolationError` (see ARF105).

      ## Example
      ```python
      def forward(self, x):
          if x.shape[0] == 16:        # ARF101: valid for num_tokens=16 only
              return self.decode_path(x)
          return self.prefill_path(x)
      ```

      ## Fix
      Make the choice inside a custom op (its real kernel may branch freely; its fake kernel
      must not), or compute the value with torch ops on the symbolic size
      (`torch.sym_max`, `//`) instead of Python `int`/`numpy` on it.
      """,
    fix="move the comparison into a custom op's real kernel, or keep the size symbolic",
    needs=GUARDS,
)
def check_pinned(ctx: AuditContext) -> Iterable[Finding]:
    for line in _lines(ctx, PIN):
        verdicts = [d.verdict for d in line.decisions]
        points = sorted({v.runs[0][0] for v in verdicts if v.shape == "point"})
        excluded = sorted({x for v in verdicts if v.shape == "except" for x in v.excluded})
        parts = []
        if points:
            parts.append(
                f"valid for num_tokens={', '.join(f'{p:,}' for p in points)} only"
                + (" (one graph per count)" if len(points) > 1 else "")
            )
        if excluded:
            parts.append(
                f"valid for every num_tokens except {', '.join(f'{x:,}' for x in excluded)}"
            )
        parts += [v.describe() for v in verdicts if v.shape == "unknown"][:1]
        yield _finding(
            ctx,
            line,
            f"{line.source} is compared with a constant here: {'; '.join(parts)}",
        )


@rule(
    "ARF102",
    "num-tokens-range-guard",
    "a threshold on num_tokens inside the token domain: the graph recompiles when crossed",
    """
      ## What it does
      Finds source lines whose guards on the token count hold on one or a few contiguous runs
      of the token domain (`s0 <= 2048`, `-s0 > -4095` from `keys[-4095:]`,
      `Eq(ceil(s0/64), 1)`), in model code, a custom op's fake kernel, or a pattern
      replacement, and names the exact counts where the graph stops being valid.
      A threshold outside the domain (`--max-tokens`) is not a finding.

      ## Why is this bad?
      The compiled graph is only valid on one side of the threshold. When traffic crosses it,
      torch.compile recompiles (ARF104) - in production, at the first large batch. The classic
      case is `if num_tokens <= max_token_num:` choosing a fused kernel; a sliding-window slice
      `keys[-window:]` is another.

      ## Example
      ```python
      def forward(self, x):
          if x.shape[0] <= 2048:      # ARF102: recompiles at 2,048 -> 2,049
              return fused_allreduce(x)
          return allreduce(x)
      ```

      ## Fix
      Put the threshold inside an opaque custom op whose real kernel branches at run time
      (its fake kernel returns the same shapes for every size), or compile one artifact per
      range on purpose (`arfuse.compile(model, ranges="auto")`).
      """,
    fix="branch at run time inside a custom op's real kernel, or compile per range on purpose",
    needs=GUARDS,
)
def check_range(ctx: AuditContext) -> Iterable[Finding]:
    for line in _lines(ctx, RANGE):
        judged = [d.verdict for d in line.decisions if d.verdict.shape != "unknown"]
        if judged and line.flips:
            valid = list(
                dict.fromkeys(" & ".join(f"[{a:,}, {b:,}]" for a, b in v.runs[:3]) for v in judged)
            )
            graphs = "graphs compiled here are" if len(valid) > 1 else "graph compiled here is"
            what = (
                f"the {graphs} valid for num_tokens in {' and '.join(valid)}: "
                f"{recompiles_at(line.flips)}"
            )
        elif judged:
            what = f"the graph compiled here {judged[0].describe()}"
        else:
            what = (
                f"{line.decisions[0].verdict.describe()}: the graph recompiles when "
                f"num_tokens crosses `{line.exprs[0]}`"
            )
        yield _finding(
            ctx,
            line,
            f"{line.source} is compared with a threshold here: {what}",
        )


@rule(
    "ARF103",
    "num-tokens-divisibility-guard",
    "the compiled graph holds only for some remainders of num_tokens inside the domain",
    """
      ## What it does
      Finds source lines whose guards hold only for a residue class of the token count
      inside the token domain (`Eq(Mod(s0, 4), 0)`: valid only for num_tokens % 4 == 0),
      typically a `view(-1, k, ...)`, a chunk/split into fixed pieces, or `if n % k == 0:`.
      Guards that merely mention `Mod` but hold for every count (padding to a multiple of 8
      and slicing back) are not findings.

      ## Why is this bad?
      The compiled graph holds only for token counts with that remainder: a batch with another
      remainder recompiles, and a reshape that assumes divisibility fails for it at run time.

      ## Example
      ```python
      def forward(self, x):
          return x.view(-1, 4, self.hidden)   # ARF103: valid only for num_tokens % 4 in {0}
      ```

      ## Fix
      Pad the token dim to a multiple outside the compiled region, or reshape along a dim
      that does not involve num_tokens.
      """,
    fix="pad num_tokens outside the compiled region, or reshape a dim that is not num_tokens",
    needs=GUARDS,
)
def check_divisibility(ctx: AuditContext) -> Iterable[Finding]:
    for line in _lines(ctx, DIVISIBILITY):
        what = "; ".join(dict.fromkeys(d.verdict.describe() for d in line.decisions))
        yield _finding(
            ctx,
            line,
            f"{line.source} must be divisible here: {what}",
        )


_INT32_MAX = "2147483647"


@rule(
    "ARF106",
    "compiler-num-tokens-switch",
    "torch's compiler itself switches code at a num_tokens inside the domain",
    """
      ## What it does
      Reports guards on the token count that no model line decided - Inductor added them
      for its own code generation - and that fail somewhere inside the token domain. The
      common ones: Triton codegen's 32-bit indexing (`64*s0 <= 2147483647` in
      `can_use_32bit_indexing`), which switches to 64-bit indexing for tensors of more than
      2^31 elements, and CPU codegen's reduction helpers (`s0 <= 4096` in
      `need_use_acc_helper`). A compiler guard that re-checks a model line's guard is folded
      into that line's finding, and one that holds for every count in the domain is silent.

      ## Why is this bad?
      The compiled code is valid up to the switch point only: the first batch past it
      recompiles (once), in the serving path. For 64-bit indexing that happens with long
      prefills on tensors such as `[num_tokens, vocab]` logits or `[num_tokens, num_tokens]`
      attention scores.

      ## Example
      ```python
      def forward(self, x):                  # x: [num_tokens, 128256] logits on the GPU
          return torch.log_softmax(x, -1)    # ARF106: 64-bit indexing above 16,743 tokens
      ```

      ## Fix
      Nothing in the model decided it. If the switch point is inside the range you serve,
      warm the compile at a size above it before serving (one extra compile), split the
      tensor (chunked logits), or narrow `--max-tokens` to the domain you really serve.
      """,
    fix="warm the second compile before serving, chunk the large tensor, or narrow "
    "--max-tokens to what you serve",
    needs=GUARDS | COMPILED_FRAMES,
)
def check_compiler_switch(ctx: AuditContext) -> Iterable[Finding]:
    for line in _lines(ctx, COMPILER):
        a = line.where.decision
        flips = line.flips
        if any(_INT32_MAX in e for e in line.exprs) or "32bit" in (a.name or ""):
            above = flips[0] if flips else None
            what = (
                f"Inductor switches to 64-bit indexing above {above:,} tokens: one recompile there"
                if above is not None
                else "Inductor's 32-bit indexing check fails inside the domain"
            )
        else:
            v = line.decisions[0].verdict
            where = f"{a.name} in {a.filename.rsplit('/', 1)[-1]}" if a.name else "Inductor"
            what = f"Inductor ({where}) picks different code across num_tokens: {v.describe()}"
            if flips and v.shape == "interval":
                what = (
                    f"Inductor ({where}) picks different code above {flips[0]:,} tokens: "
                    f"{recompiles_at(flips)}"
                )
        yield _finding(ctx, line, f"[compiler] {what}")


# -- ARF104: recompiles --------------------------------------------------------------------
_LOC = re.compile(r"([^\s(]+?\.py):(\d+) in ([\w<>.]+)(?: \(([^()]*)\))?")
# where Dynamo evaluates a guard on behalf of the traced line: never the decision
_EVAL_PLUMBING = re.compile(r"_dynamo/variables/|fx/experimental/|_dynamo/symbolic_convert")
_MISMATCH = re.compile(
    # torch 2.6 quotes the source (`tensor 'L['x']'`), later versions the name (`tensor 'x'`)
    r"tensor '(?:L\[')?([^'\]]+)(?:'\])?' size mismatch at index (\d+)\. expected (\d+), "
    r"actual (\d+)"
)
_TORCH_REL = re.compile(
    r"^(_dynamo|_inductor|fx|_subclasses|_library|_functorch|_prims|_refs|"
    r"_decomp|nn|distributed|_higher_order_ops)/"
)


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
        if text[m.end(3) :].lstrip().startswith("(user code shown"):
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


@rule(
    "ARF104",
    "num-tokens-recompile",
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
    fix="remove the guard at this line (see the ARF101-ARF103 finding at the same line)",
    needs=GUARDS | COMPILED_FRAMES,
)
def check_recompile(ctx: AuditContext) -> Iterable[Finding]:
    limit = _recompile_limit(ctx)
    groups, first_static = _recompiles_by_line(ctx)
    for frame, events, sizes in groups.values():
        cids = list(dict.fromkeys(c for c, _ in events))
        at = f" at num_tokens={', '.join(map(str, sorted(sizes)))}" if sizes else ""
        message = f"recompiled {len(cids)} time(s){at} because a guard from this line failed"
        static = first_static.get((frame.filename, frame.line))
        frames = [frame]
        site = _compiled_frame(ctx, cids[0]) if cids and is_framework(frame.filename) else None
        if site is not None:  # a compiler guard failed: shown at the model's compiled frame
            frames = [site, frame]
        yield finding(
            message=(_static_first(static, len(cids)) if static else message) + limit,
            fix=_MARK_DYNAMIC.format(arg=static[0], dim=static[1]) if static else "",
            location=Location.of(frames[0]),
            expr="; ".join(dict.fromkeys(g for _, g in events)),
            compile_id=str(cids[0]) if cids else "",
            frames=[Location.of(f) for f in frames],
            details=[
                f"recompile {c} (num_tokens={ctx.compile_sizes.get(c, '?')}): failed `{g}`"
                for c, g in events
            ],
            num_tokens=sorted(sizes),
        )


_MARK_DYNAMIC = (
    "mark the token dim dynamic before the first call: "
    "torch._dynamo.maybe_mark_dynamic({arg}, {dim}) (or torch.compile(dynamic=True))"
)


def _static_first(static: tuple[str, str, int, int, bool], recompiles: int) -> str:
    """ARF104's message when the graph that failed was static in num_tokens."""
    arg, dim, was, now, dynamic = static
    again = "recompiled it dynamic" if dynamic else f"recompiled it static again ({recompiles} "
    return (
        f"the first compile was static: num_tokens={was} was a constant of its graph "
        f"(torch.compile's default dynamic=None does that with the first size it sees, "
        f"dynamic=False with every size), so num_tokens={now} failed its size check on "
        f"{arg}.size()[{dim}] and " + (again if dynamic else again + "recompile(s))")
    )


_Groups = dict[tuple[str, int], tuple[Frame, list[tuple[CompileId, str]], list[int]]]


def _recompiles_by_line(
    ctx: AuditContext,
) -> tuple[_Groups, dict[tuple[str, int], tuple[str, str, int, int, bool]]]:
    """source line -> (its frame, the (recompile, failed guard) pairs, the num_tokens); and
    the lines whose failed graph was static: (arg, dim, its size, the new size, new dynamic)."""
    groups: _Groups = {}
    first_static: dict[tuple[str, int], tuple[str, str, int, int, bool]] = {}
    pins = {d.compile_id: d.where for d in decisions(ctx) if d.kind == PIN}
    frame_of = {m.of_compile: m.frame for m in ctx.trace.of(CompilationMetrics)}
    for art in ctx.trace.artifacts(RECOMPILE_REASONS):
        cid = art.compile_id
        n = ctx.compile_sizes.get(cid) if cid else None
        if n is not None and n < 2:
            continue  # num_tokens 0/1 always gets its own graph: torch's 0/1 specialization
        if n is not None and not ctx.domain.lo <= n <= ctx.domain.hi:
            continue  # a size the model does not serve: its recompile never happens in service
        for entry in _reason_entries(art.payload_json()):
            static: list[tuple[str, str, int, int, bool]] = []
            failed_id, _, text = entry.partition(": ")
            failed = CompileId.parse(failed_id)
            if failed is not None and cid is not None:  # the text does not say its generation
                failed = failed.in_generation(cid.generation)
            frames: list[Frame] = []
            mm = _MISMATCH.search(text)
            if mm:
                arg, dim, expected, _actual = mm.groups()
                if not ctx.is_token_source(f"L['{arg}'].size()[{dim}]") or int(expected) <= 1:
                    continue
                if failed in pins:
                    frames = [pins[failed].decision]
                elif frame_of.get(failed) is not None:
                    frames = [user_frame(ctx.trace, failed)]
                    if not any(c == failed for c, _ in ctx.token_symbols):
                        dynamic = any(c == cid for c, _ in ctx.token_symbols)
                        static.append((arg, dim, int(expected), int(_actual), dynamic))
            elif any(name in text for name in ctx.token_source_names):
                frames = _reason_lines(ctx, text)
            guard = text.split("  #")[0].strip()
            for f in frames:
                if static:
                    first_static.setdefault((f.filename, f.line), static[-1])
                g = groups.setdefault((f.filename, f.line), (f, [], []))
                if cid is not None and (cid, guard) not in g[1]:
                    g[1].append((cid, guard))
                if n is not None and n not in g[2]:
                    g[2].append(n)
    return groups, first_static


def _recompile_limit(ctx: AuditContext) -> str:
    limit_hits = sorted(
        n
        for m in ctx.trace.of(CompilationMetrics)
        if "recompile limit" in (m.fail_reason or "").lower()
        for n in [ctx.compile_sizes.get(m.of_compile)]
        if n is not None
    )
    if not limit_hits:
        return ""
    return (
        f"; torch._dynamo's recompile limit was hit at num_tokens={limit_hits[0]}: from "
        f"there on new sizes run EAGERLY (not compiled)"
    )


@rule(
    "ARF105",
    "num-tokens-constraint-violation",
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
    fix="remove the specialization at this line (see ARF101)",
    needs=GUARDS,
)
def check_constraint_violation(ctx: AuditContext) -> Iterable[Finding]:
    cve = _cve_compiles(ctx)
    metrics = {m.of_compile: m for m in ctx.trace.of(CompilationMetrics)}
    seen: dict[tuple[str, int], Finding] = {}
    for d in decisions(ctx):
        if d.compile_id not in cve or d.kind != PIN:
            continue
        cid, where, expr, sym = d.compile_id, d.where, d.verdict.expr, d.guards[0].symbol
        key = d.line_key
        reason = (metrics[cid].fail_reason or "").strip().splitlines()
        why = next((r.strip(" -") for r in reason if "marked" in r), reason[0] if reason else "")
        f = seen.get(key)
        if f is None:
            seen[key] = finding(
                message=f"ConstraintViolationError: {why}"
                if why
                else "ConstraintViolationError: num_tokens was specialized",
                location=Location.of(where.decision),
                expr=expr,
                symbol=sym,
                compile_id=str(cid),
                frames=[Location.of(x) for x in where.frames],
                details=[f"guard `{expr}`"],
                num_tokens=[n for n in [ctx.compile_sizes.get(cid)] if n is not None],
            )
        elif f"guard `{expr}`" not in f.details:
            f.details.append(f"guard `{expr}`")
    # A failed compile whose trace names no pin: attribute to the frame torch blamed.
    for cid in cve - {CompileId.parse(f.compile_id) for f in seen.values()}:
        m = metrics[cid].metrics
        frame = metrics[cid].failed_frame
        seen[(frame.filename, frame.line)] = finding(
            message="ConstraintViolationError: "
            + (m.get("fail_reason") or "").strip().splitlines()[0:1][0]
            if m.get("fail_reason")
            else "ConstraintViolationError",
            location=Location.of(frame),
            compile_id=str(cid),
            frames=[Location.of(frame)],
        )
    yield from seen.values()
