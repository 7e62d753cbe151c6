"""Which token counts the sweep feeds: defaults (or the target's), plus every threshold +-1.

Thresholds come from the target (`AuditTarget.thresholds`) and from providers in
`THRESHOLD_PROVIDERS`: a provider takes the target and returns token counts at which some code
is expected to switch behaviour. The built-in provider reads arfuse's thresholds table
(`arfuse.thresholds.lookup`) for a target that declares `hidden` (and `dtype`): the one-shot and
fusion limits of every GPU generation in the table at the target's world size.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from arfuse.audit.live.target import AuditTarget
from arfuse.audit.options import DEFAULT_SIZES

THRESHOLD_PROVIDERS: list[Callable[[AuditTarget], Iterable[int]]] = []


def table_provider(target: AuditTarget) -> Iterable[int]:
    """Switch points of arfuse's thresholds table for the target's hidden size and dtype."""
    if target.hidden is None:
        return ()
    try:
        thresholds = importlib.import_module("arfuse.thresholds")
        import torch
    except ImportError:
        return ()
    dtype = target.dtype if target.dtype is not None else torch.bfloat16
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    out: set[int] = set()
    for arch in thresholds.table():
        limits = thresholds.lookup(arch, target.world_size or 1, dtype, target.hidden)
        if limits is not None:
            out.update((limits.oneshot_max_tokens, limits.fused_max_tokens))
    return sorted(t for t in out if t <= target.max_tokens)


def thresholds(target: AuditTarget) -> list[int]:
    found = set(target.thresholds)
    for provider in [*THRESHOLD_PROVIDERS, table_provider]:
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
    if sizes is None:  # the default sweep stays inside the target's token domain
        inside = {s for s in chosen if target.min_tokens <= s <= target.max_tokens}
        chosen = inside if any(s >= 2 for s in inside) else chosen
    big = sorted(s for s in chosen if s >= 2)
    return big + sorted(s for s in chosen if s < 2)


def parse_sizes(text: str) -> list[int]:
    """`"1,16,2048"` -> [1, 16, 2048] (the --sizes option)."""
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(
            f"--sizes takes comma-separated token counts like 1,16,2048; got {text!r}"
        ) from None
    if not out or min(out) < 1:
        raise ValueError(f"--sizes needs positive token counts, got {text!r}")
    return out
