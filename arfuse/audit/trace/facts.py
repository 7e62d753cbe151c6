"""What one rank's trace says, read from every record form torch has written since 2.5.

The rules ask here and never name a record kind or an artifact: a post-grad graph is a
top-level record (torch <= 2.6), an `after_post_grad_graph` artifact (2025) or an
`inductor_post_grad_graph` artifact (2.13); a compile's id is its envelope's (the
`compile_id` inside `compilation_metrics` may repeat an older one); graph breaks show as a
break-reason artifact, as `restart_reasons` of the compile Dynamo restarted, and as resumed
frames named `torch_dynamo_resume_in_<fn>_at_<line>`; a graph Inductor served from a cache
logs no graph of its own, only a `*_cache_hit` artifact.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from arfuse.audit.trace.records import (
    CACHE_STATUS,
    COLLECTIVE_SCHEDULE,
    GRAPH_EXECUTION,
    OUTPUT_CODE,
    RESUME_PREFIX,
    TENSOR_META,
    Artifact,
    CompilationMetrics,
    CompileId,
    GraphDump,
    Trace,
)

_RESUME = re.compile(rf"^{RESUME_PREFIX}(\w+?)_at_(\d+)$")
# a collective call in Python output code: torch.ops._c10d_functional.<op>.default(
_CODE_CALL = re.compile(r"torch\.ops\._?c10d_functional\.(\w+)\.default\(")
_COMMENT = re.compile(r"#[^\n]*")


def compile_id(m: CompilationMetrics) -> CompileId | None:
    """The compile a `compilation_metrics` record closes: its envelope's id."""
    return m.of_compile


def compiles(trace: Trace) -> list[CompileId]:
    """The compiles that finished (a `compilation_metrics` record), by envelope id, in order."""
    return list(dict.fromkeys(c for m in trace.of(CompilationMetrics) if (c := compile_id(m))))


def post_grad_graphs(trace: Trace) -> list[Artifact | GraphDump]:
    """Every Inductor post-grad graph record (`.compile_id`, `.payload`), whatever its form."""
    return list(trace.post_grad_graphs())


def inductor_ran(trace: Trace) -> bool:
    """Whether Inductor compiled (or loaded from its cache) any graph of this trace."""
    return bool(post_grad_graphs(trace)) or any(
        isinstance(e, GraphDump) and e.graph_kind == OUTPUT_CODE for e in trace.events
    )


def cache_statuses(trace: Trace) -> list[tuple[CompileId | None, str, str]]:
    """(compile id, miss | hit | bypass, artifact name) of every cache artifact, in log order."""
    out = []
    for e in trace.events:
        if isinstance(e, Artifact):
            status = cache_status(e.name)
            if status:
                out.append((e.compile_id, status, e.name))
    return out


def cache_status(name: str) -> str | None:
    return next((status for frag, status in CACHE_STATUS if frag in name), None)


def cached_compiles(trace: Trace) -> set[CompileId | None]:
    """Compiles whose graph came from a cache (a hit and no miss): they log no graph."""
    by: dict[CompileId | None, set[str]] = {}
    for cid, status, _ in cache_statuses(trace):
        by.setdefault(cid, set()).add(status)
    return {cid for cid, s in by.items() if "hit" in s and "miss" not in s}


def _json_artifacts(trace: Trace, name: str) -> list[tuple[CompileId | None, Any]]:
    return [(a.compile_id, a.payload_json()) for a in trace.artifacts(name)]


def collective_schedules(trace: Trace) -> dict[CompileId | None, list[str]]:
    """compile id -> Inductor's collective kernels in the order it scheduled them."""
    out: dict[CompileId | None, list[str]] = {}
    for cid, ops in _json_artifacts(trace, COLLECTIVE_SCHEDULE):
        if isinstance(ops, list) and cid not in out:
            out[cid] = [str(op) for op in ops]
    return out


def tensor_meta(trace: Trace) -> dict[CompileId | None, list[dict[str, Any]]]:
    """compile id -> Inductor's ops with their outputs' shape, stride and dtype."""
    out: dict[CompileId | None, list[dict[str, Any]]] = {}
    for cid, body in _json_artifacts(trace, TENSOR_META):
        ops = body.get("ops") if isinstance(body, dict) else None
        if isinstance(ops, list) and cid not in out:
            out[cid] = [op for op in ops if isinstance(op, dict)]
    return out


def execution_order(trace: Trace) -> list[str] | None:
    """The compile ids of the graphs in the order they ran (the last such record)."""
    order = None
    for _, body in _json_artifacts(trace, GRAPH_EXECUTION):
        items = body.get("graph_execution_order") if isinstance(body, dict) else None
        if isinstance(items, list):
            # a graph served from a cache has no id here (null): skipped, as tlparse does
            ids = (i.get("compile_id") if isinstance(i, dict) else i for i in items)
            order = [str(i) for i in ids if isinstance(i, str)]
    return order


@dataclass(frozen=True)
class CodeCollectives:
    """The collective calls of one graph's output code."""

    started: Counter[str]  # op -> calls (all_reduce_, all_gather_into_tensor, ...)
    waits: int

    @property
    def unwaited(self) -> int:
        return max(0, sum(self.started.values()) - self.waits)


def output_code_collectives(trace: Trace) -> dict[CompileId | None, CodeCollectives]:
    """compile id -> the collectives its Inductor output code starts and waits for."""
    out: dict[CompileId | None, CodeCollectives] = {}
    for e in trace.of(GraphDump):
        if e.graph_kind != OUTPUT_CODE or not e.payload:
            continue
        calls = Counter(m.group(1) for m in _CODE_CALL.finditer(_COMMENT.sub("", e.payload)))
        waits = calls.pop("wait_tensor", 0)
        if calls or waits:
            out[e.compile_id] = CodeCollectives(calls, waits)
    return out


def resumed_at(co_name: str) -> tuple[str, int] | None:
    """`torch_dynamo_resume_in_forward_at_114` -> ("forward", 114): the frame Dynamo resumed
    after a graph break at that line."""
    m = _RESUME.match(co_name or "")
    return (m.group(1), int(m.group(2))) if m else None
