"""Which token counts the sweep feeds: defaults (or the target's), plus every threshold +-1.

Thresholds come from the target (`AuditTarget.thresholds`) and from providers registered in
`THRESHOLD_PROVIDERS` - the hook arfuse's own threshold table plugs into: a provider takes the
target and returns token counts at which some code is expected to switch behaviour. If a module
`arfuse.thresholds` exposes `audit_token_counts(target)`, it is used automatically.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable

from arfuse.audit.target import DEFAULT_SIZES, AuditTarget

THRESHOLD_PROVIDERS: list[Callable[[AuditTarget], Iterable[int]]] = []


def _table_provider(target: AuditTarget) -> Iterable[int]:
    try:
        mod = importlib.import_module("arfuse.thresholds")
    except ImportError:
        return ()
    fn = getattr(mod, "audit_token_counts", None)
    return fn(target) if callable(fn) else ()


def thresholds(target: AuditTarget) -> list[int]:
    found = set(target.thresholds)
    for provider in [*THRESHOLD_PROVIDERS, _table_provider]:
        found.update(int(t) for t in provider(target))
    return sorted(t for t in found if t >= 1)


def sweep(target: AuditTarget, sizes: Iterable[int] | None = None) -> list[int]:
    """The ordered sweep. The first call is a size >= 2 (size 0/1 would compile a static
    graph: torch's 0/1 specialization); then ascending, so crossing a threshold shows as a
    recompile; sizes below 2 come last."""
    base = list(sizes) if sizes is not None else list(target.sizes or DEFAULT_SIZES)
    for s in base:
        if not isinstance(s, int) or s < 1:
            raise ValueError(f"sizes must be positive token counts, got {s!r}")
    chosen = set(base)
    for t in thresholds(target):
        chosen.update(x for x in (t - 1, t, t + 1) if x >= 1)
    big = sorted(s for s in chosen if s >= 2)
    return big + sorted(s for s in chosen if s < 2)


def parse_sizes(text: str) -> list[int]:
    """`"1,16,2048"` -> [1, 16, 2048] (the --sizes option)."""
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"--sizes takes comma-separated token counts like 1,16,2048; "
                         f"got {text!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"--sizes needs positive token counts, got {text!r}")
    return out
