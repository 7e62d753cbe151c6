"""Which dynamic size of a recorded compile is num_tokens, read from its `create_symbol` events.

Used by the offline audit, where no target says which input carries the tokens:

    run.token_sources = infer_token_sources(traces)     # or AmbiguousTokenSource, listing them
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from arfuse.audit.trace.records import CreateSymbol, Trace


class AmbiguousTokenSource(ValueError):
    """More than one dynamic size could be num_tokens; the message lists them."""


_SIZE = re.compile(r"\.size\(\)\[\d+\]$")
# Inputs that carry the tokens in HF / vLLM / SGLang models: preferred when a graph has
# several dynamic sizes (a KV-cache length, a batch dim, attention-mask lengths).
_TOKEN_NAMES = re.compile(
    r"\[['\"](input_ids|inputs_embeds|position_ids|positions|"
    r"cache_position)['\"]\]"
)


def is_size_source(source: str) -> bool:
    """A tensor dimension (`L['x'].size()[0]`), not a float or int attribute that dynamic=True
    also makes a symbol of (`math.pi`, an eps, a dropout p)."""
    return bool(_SIZE.search(source))


def token_candidates(traces: dict[int, Trace]) -> dict[str, list[str]]:
    """Each dynamic tensor size recorded by `create_symbol` -> the values it was created with."""
    out: dict[str, list[str]] = {}
    for t in traces.values():
        for e in t.of(CreateSymbol):
            if is_size_source(e.source):
                vals = out.setdefault(e.source, [])
                if e.val and e.val not in vals:
                    vals.append(e.val)
    return out


def _per_compile(
    traces: dict[int, Trace], keep: Callable[[str], bool]
) -> dict[tuple[int, Any], dict[str, tuple[str, str]]]:
    out: dict[tuple[int, Any], dict[str, tuple[str, str]]] = defaultdict(dict)
    for rank, t in traces.items():
        for e in t.of(CreateSymbol):
            if keep(e.source):
                out[(rank, e.compile_id)].setdefault(e.symbol, (e.source, e.val))
    return out


def _split(per_compile: dict) -> list[dict]:
    # several symbols of one compile with one value (inputs each marked dynamic: input_ids and
    # positions, x and residual) are one count; different values are different dims
    return [syms for syms in per_compile.values() if len({v for _, v in syms.values()}) > 1]


def infer_token_sources(traces: dict[int, Trace]) -> list[str]:
    """The sources that stand for num_tokens: the recorded dynamic tensor sizes when each
    compile has one value among them (torch gives equal dynamic sizes one symbol, so
    `input_ids`, `positions` and the hidden states of a vLLM graph are one symbol). Where a
    compile has sizes of different values, the token inputs (`input_ids`, `inputs_embeds`,
    position ids) decide if they agree. Raises `AmbiguousTokenSource` otherwise (a batch and a
    sequence dim, a KV-cache length)."""
    per_compile = _per_compile(traces, is_size_source)
    sources = sorted({s for syms in per_compile.values() for s, _ in syms.values()})
    if not _split(per_compile):
        return sources
    named = _per_compile(traces, lambda s: is_size_source(s) and bool(_TOKEN_NAMES.search(s)))
    if named and not _split(named):
        return sorted({s for syms in named.values() for s, _ in syms.values()})
    cands = token_candidates(traces)
    ordered = sorted(sources, key=lambda s: (not _TOKEN_NAMES.search(s), s))
    listing = "\n".join(
        f'  --token-source "{s}"   (recorded values: {", ".join(cands.get(s, [])[:6]) or "?"})'
        for s in ordered
    )
    raise AmbiguousTokenSource(
        f"cannot tell which dynamic size is num_tokens: a compiled graph has "
        f"{max(len(v) for v in _split(per_compile))} dynamic sizes of different values. Name "
        f"it with --token-source (repeat it for each input that carries the tokens), one "
        f"of:\n{listing}"
    )
