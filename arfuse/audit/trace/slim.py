"""What a streamed trace keeps: only the events, stacks and payloads the selected rules read.

Each rule declares what it reads (`Rule.needs`, a set of names, usually one of `GUARDS`,
`GRAPHS`, `RANKS` below; a rule that declares nothing reads all of them). The names:

    "guard_added_fast"            keep these events (their scalar fields)
    "guard_added_fast.stack"      ... and their user_stack / stack frames
    "artifact:recompile_reasons"  keep this artifact's payload (artifact events are always kept)
    "graph:aot_inference_graph"   keep this graph dump's payload
    "collectives:inductor_post_grad_graph"
                                  keep the payload only when it may hold a collective or a fused
                                  op (`arfuse.optable.text_has_collective`); otherwise it is
                                  emptied, so ranks still see the same set of graphs

`CONTEXT` is what every audit reads whatever the rules (compile sizes, token symbols, the torch
version). `Policy` turns a set of names into what the reader tests per event; `slim` applies it
to the events one chunk added. Memory then grows with what the rules need, not with the log.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arfuse import optable
from arfuse.audit.trace.records import (
    AOT_GRAPHS,
    CALL_ARTIFACT,
    COLLECTIVE_SCHEDULE,
    FUSION_REPORT,
    GRAPH_EXECUTION,
    OUTPUT_CODE,
    POST_GRAD_READ,
    TENSOR_META,
    TORCH_VERSION,
    Artifact,
    CompilationMetrics,
    Event,
    GraphDump,
    StackEvent,
    UnknownEvent,
)

if TYPE_CHECKING:
    from arfuse.audit.rules import Rule

CONTEXT = frozenset(
    {
        "create_symbol",
        "dynamo_start",
        "compilation_metrics",
        "describe_tensor",
        "describe_source",
        f"artifact:{CALL_ARTIFACT}",
        f"artifact:{TORCH_VERSION}",
    }
)

#: What a rule reads, in the names `Policy.of` takes; each rule declares its `needs` from these.
#: The model frame each compile began in: where a finding the compiler made is shown, and the
#: line that called a library function compiled directly.
COMPILED_FRAMES = frozenset({"dynamo_start.stack"})
GUARDS = COMPILED_FRAMES | frozenset(
    {
        "guard_added_fast.stack",
        "guard_added.stack",
        "symbolic_shape_specialization.stack",
        "create_unbacked_symbol",
        "artifact:recompile_reasons",
        "artifact:dynamo_graph_break_reason",
    }
)
GRAPHS = frozenset(
    {f"collectives:{name}" for _, name in POST_GRAD_READ} | {f"artifact:{FUSION_REPORT}"}
)
#: what tlparse's multi-rank page compares, and the output code's collectives
DIVERGENCE = COMPILED_FRAMES | frozenset(
    {
        f"artifact:{COLLECTIVE_SCHEDULE}",
        f"artifact:{TENSOR_META}",
        f"artifact:{GRAPH_EXECUTION}",
        f"collectives:{OUTPUT_CODE}",
    }
)
RANKS = GUARDS | GRAPHS | DIVERGENCE | {f"collectives:{g}" for g in AOT_GRAPHS}
#: A rule that declares no needs reads all of the above.
_EVERYTHING_KNOWN = GUARDS | GRAPHS | RANKS

_COMPRESS_OVER = 4096
# a collective call in Inductor's Python output code (what facts.output_code_collectives counts)
_COLLECTIVE_CALL = re.compile(rb"torch\.ops\._?c10d_functional\.\w+\.default\(")
_METRIC_STR_MAX = 500  # config dumps are longer; fail_reason is kept whole
_METRIC_KEEP = frozenset(
    {"restart_reasons", "fail_reason", "fail_user_frame_filename", "fail_user_frame_lineno"}
)


@dataclass(frozen=True)
class Policy:
    """What to keep, in the form the reader tests per event."""

    kinds: frozenset[str]  # event kinds built at all (artifacts always are)
    stacks: frozenset[str]  # kinds whose stacks are kept
    payloads: frozenset[str]  # artifact names / graph kinds whose payload is kept
    collectives: frozenset[str]  # ... kept only when it may hold a collective or fused op
    extra_ops: tuple[str, ...] = ()  # custom allreduce ops (qualified names) that count too

    @classmethod
    def of(cls, reads: Iterable[str], extra_ops: Iterable[str] = ()) -> Policy:
        kinds, stacks, payloads, collectives = set(), set(), set(), set()
        for name in {*reads, *CONTEXT}:
            what, sep, arg = name.partition(":")
            if sep and what == "artifact":
                payloads.add(arg)
            elif sep and what == "graph":
                payloads.add(arg)
                kinds.add(arg)
            elif sep and what == "collectives":
                collectives.add(arg)
                kinds.add(arg)
            elif name.endswith(".stack"):
                stacks.add(name[: -len(".stack")])
                kinds.add(name[: -len(".stack")])
            else:
                kinds.add(name)
        return cls(
            frozenset(kinds),
            frozenset(stacks),
            frozenset(payloads),
            frozenset(collectives),
            tuple(extra_ops),
        )

    def builds(self, kind: str) -> bool:
        return kind == "artifact" or kind == "str" or kind in self.kinds


def reads_of(rules: Iterable[Rule]) -> frozenset[str]:
    """What the rules read together (a rule that declares no `needs` reads everything known)."""
    out: set[str] = set()
    for r in rules:
        if getattr(r, "scope", "rank") != "report":  # those read no trace
            out |= r.needs or _EVERYTHING_KNOWN
    return frozenset(out)


def policy_for(rules: Iterable[Rule], extra_ops: Iterable[str] = ()) -> Policy:
    """The policy of the given rules (`arfuse.audit.rules.select_rules(...)`)."""
    return Policy.of(reads_of(rules), extra_ops)


#: What every rule reads: the reader's policy when it is given none.
DEFAULT = Policy.of(_EVERYTHING_KNOWN)


def _compress(raw: bytes | None) -> bytes | None:
    if raw is not None and len(raw) > _COMPRESS_OVER:
        return zlib.compress(raw, 1)
    return raw


def _slim_metrics(m: CompilationMetrics) -> None:
    """Keep compilation_metrics' scalar fields (config dumps and big lists dropped)."""
    full = m.metrics
    m._metrics = {
        k: v
        for k, v in full.items()
        if v is None
        or isinstance(v, (bool, int, float))
        or (isinstance(v, str) and len(v) <= _METRIC_STR_MAX)
        or k in _METRIC_KEEP
    }
    m.raw_meta = b""


def _payload(policy: Policy, name: str, raw: bytes | None, extra: set[str]) -> bytes | None:
    if raw is None:
        return None
    if name in policy.payloads:
        return _compress(raw)
    if name == OUTPUT_CODE and name in policy.collectives:
        # only its collective calls are read (facts.output_code_collectives): keep those lines
        return b"\n".join(_COLLECTIVE_CALL.findall(raw))
    if name in policy.collectives:
        return _compress(raw) if optable.text_has_collective(raw, extra) else b""
    return None


def _learn_ops(e: Artifact, extra_ops: set[str]) -> None:
    """Allreduce ops a FusionConfig named (`vllm::all_reduce`), from the pass's report: the
    graphs logged after it that call them hold collectives too."""
    report = e.payload_json()
    ops = report.get("allreduce_ops") if isinstance(report, dict) else None
    if isinstance(ops, list):
        extra_ops.update(str(op) for op in ops)


def slim(
    events: list[Event], policy: Policy, resolver: Any, extra_ops: set[str] | None = None
) -> list[Event]:
    """The events of one chunk reduced to what `policy` keeps: payloads dropped or compressed,
    kept stacks resolved to `Frame` tuples (the resolver shares equal ones), the rest of each
    event's raw data dropped. `extra_ops` (kept across chunks) gathers the custom allreduce ops
    the fusion pass's reports name, so graphs that call them count as holding a collective."""
    extra = extra_ops if extra_ops is not None else set(policy.extra_ops)
    kept: list[Event] = []
    for e in events:
        if isinstance(e, Artifact):
            if e.name == FUSION_REPORT and e.raw_payload:
                _learn_ops(e, extra)
            e.raw_payload = _payload(policy, e.name, e.raw_payload, extra)
        elif isinstance(e, GraphDump):
            if e.graph_kind not in policy.kinds:
                continue
            payload = _payload(policy, e.graph_kind, e.raw_payload, extra)
            e.raw_payload = payload or None
        elif isinstance(e, CompilationMetrics):
            _slim_metrics(e)
            e.raw_payload = None
        elif isinstance(e, StackEvent):
            if e.kind in policy.stacks:
                e.raw_user_stack = resolver.frames(e.raw_user_stack)
                e.raw_stack = resolver.frames(e.raw_stack)
            else:
                e.raw_user_stack = e.raw_stack = None
            e.raw_payload = None
        elif isinstance(e, UnknownEvent):
            if e.name not in policy.kinds:
                continue
            e.raw_payload = None
        else:
            continue  # chromium events and other kinds no rule reads
        kept.append(e)
    return kept
