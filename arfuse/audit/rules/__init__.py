"""The rule registry. A rule is a small object: code, kebab-case name, summary, ruff-style docs
(what it does / why is this bad / example / fix) and a check function over an `AuditContext`.

Families (a module holds one family or part of one):
    ARF1xx  specialization.py  num_tokens specialization, each guard judged over the token
                               domain: pins, range and divisibility guards, recompiles,
                               ConstraintViolationError, the compiler's own switches (ARF101-106)
            compiled.py        graph breaks and frames that did not compile (ARF107-108)
    ARF2xx  fusion.py          fusion coverage: allreduce + add/RMSNorm left unfused, pass disabled
    ARF3xx  ranks.py           cross-rank consistency: compiles, token guards, fused ops and
                               collectives that differ between ranks (scope "ranks": the check
                               gets a `RanksContext` of every rank's trace, runs once)
            divergence.py      what tlparse's multi-rank page compares: cache hits, tensor
                               metadata, execution order; collectives never waited for
    ARF9xx  hygiene.py         the audit's own exceptions: unused inline suppressions, stale
                               baseline entries (scope "report": found by `report.accept`)
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from arfuse.audit.findings import Finding, Location

# a check function: takes an AuditContext (scope "rank") or a RanksContext (scope "ranks")
_Check = TypeVar("_Check", bound="Callable[[Any], Iterable[Finding]]")


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    summary: str
    docs: str
    check: Callable[[Any], Iterable[Finding]]  # AuditContext or RanksContext, as `scope` says
    fix: str = ""
    # "rank": once per rank's trace; "ranks": once over all ranks; "report": reads no trace,
    # its findings come from the report step (suppressions, baseline: `report.accept`)
    scope: str = "rank"
    # what it reads from a trace, in `arfuse.audit.trace.slim`'s names; empty: its family's default
    needs: frozenset[str] = frozenset()

    def run(self, ctx: Any) -> Iterable[Finding]:
        """The check's findings, named as this rule: a check never writes its own code."""
        for f in self.check(ctx):
            f.code, f.name, f.fix = self.code, self.name, f.fix or self.fix
            yield f


_REGISTRY: dict[str, Rule] = {}


def rule(
    code: str,
    name: str,
    summary: str,
    docs: str,
    fix: str = "",
    scope: str = "rank",
    needs: Iterable[str] = (),
) -> Callable[[_Check], _Check]:
    """Register `check` as rule `code`; `docs` is markdown (dedented). `scope="ranks"`: the
    check compares ranks and gets a `RanksContext` instead of one rank's `AuditContext`."""

    def register(check: _Check) -> _Check:
        if code in _REGISTRY:
            raise AssertionError(f"rule {code} registered twice")
        _REGISTRY[code] = Rule(
            code,
            name,
            summary,
            textwrap.dedent(docs).strip(),
            check,
            textwrap.dedent(fix).strip(),
            scope,
            frozenset(needs),
        )
        return check

    return register


def finding(message: str, location: Location, **fields: Any) -> Finding:
    """A finding of the rule whose check returns it: `Rule.run` fills in its code and name, so
    both are written once, in `@rule`."""
    from arfuse.audit.findings import Finding

    return Finding("", "", message, location, **fields)


def all_rules() -> list[Rule]:
    """Every registered rule, by code: each module of this package registers its own, so a new
    rule (or a new family module) is written in one place."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return [_REGISTRY[c] for c in sorted(_REGISTRY)]


def get_rule(code: str) -> Rule:
    rules = {r.code: r for r in all_rules()}
    if code not in rules:
        raise ValueError(f"unknown rule {code!r}; `arfuse rules` lists them: {', '.join(rules)}")
    return rules[code]


def select_rules(select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Rule]:
    """Ruff-style prefix selection: `select=["ARF1"]`, `ignore=["ARF103"]`."""
    select, ignore = (
        [s.strip().upper() for s in select if s.strip()],
        [s.strip().upper() for s in ignore if s.strip()],
    )
    rules = all_rules()
    for prefix in [*select, *ignore]:
        if not prefix.startswith("ARF") or not any(r.code.startswith(prefix) for r in rules):
            raise ValueError(
                f"{prefix!r} matches no rule; use a code or prefix such as ARF1, "
                f"ARF103 (see `arfuse rules`)"
            )
    chosen = [r for r in rules if not select or any(r.code.startswith(s) for s in select)]
    return [r for r in chosen if not any(r.code.startswith(i) for i in ignore)]
