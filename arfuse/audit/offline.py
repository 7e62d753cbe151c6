"""Offline audit: the rules over TORCH_TRACE logs some other job wrote (vLLM, SGLang, torchrun),
without running any model.

    traces, run = load_traces("trace_dir/")       # or one .log[.gz], or a .tar[.gz]
    report = analyze(traces, run)

Finding and reading the logs is `arfuse.audit.trace.sources`; this module describes the run
for the rules: which size is num_tokens (the recorded `create_symbol` sources, unless
`options.token_sources` names it), the ranks, and a note for every oddity of the logs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from arfuse.audit.judge.context import AuditContext
from arfuse.audit.options import AuditOptions
from arfuse.audit.trace.records import CompilationMetrics, Trace
from arfuse.audit.trace.run_info import RunInfo
from arfuse.audit.trace.slim import policy_for
from arfuse.audit.trace.sources import discover, parse_sources, pick_per_rank
from arfuse.audit.trace.token_source import infer_token_sources


def _summary_sizes(traces: dict[int, Trace], run: RunInfo) -> list[int]:
    sizes: set[int] = set()
    for rank, t in traces.items():
        sizes |= set(AuditContext(t, run, rank).compile_sizes.values())
    return sorted(sizes)


def _version_note(traces: dict[int, Trace]) -> str | None:
    versions: dict[str, list[int]] = defaultdict(list)
    for rank, t in sorted(traces.items()):
        if t.torch_version:
            versions[t.torch_version].append(rank)
    if len(versions) < 2:
        return None
    which = "; ".join(
        f"torch {v} on rank(s) {', '.join(map(str, r))}" for v, r in sorted(versions.items())
    )
    return (
        f"the rank logs come from different torch versions ({which}): guards and graphs "
        f"differ between versions, so cross-rank (ARF3xx) differences may be the versions'"
    )


def load_traces(
    path: str | Path, options: AuditOptions | None = None
) -> tuple[dict[int, Trace], RunInfo]:
    """Parse every rank's log under `path` and describe the run for the rules. Keeps what the
    selected rules (`options.select` / `ignore`) read; `options.token_sources` names num_tokens
    (default: inferred from the recorded create_symbol sources)."""
    import time

    from arfuse.audit.rules import select_rules

    opts = options or AuditOptions()
    policy = policy_for(select_rules(opts.select, opts.ignore))
    token_sources, progress = opts.token_sources, opts.progress

    t0 = time.perf_counter()
    sources, run_json = discover(path)
    chosen, notes = pick_per_rank(sources)
    traces = parse_sources(chosen, progress, policy)
    seconds = round(time.perf_counter() - t0, 2)
    overrides = [s for s in token_sources if s]
    if run_json is not None:
        run = run_json
        traces = {r: t for r, t in traces.items() if r in run.ranks} or traces
        if overrides:
            run.token_sources, run.token_dims = overrides, {}
    else:
        run = RunInfo(target=str(path), seconds=seconds)
        run.token_sources = overrides or infer_token_sources(traces)
        if not run.token_sources:
            notes.append(
                "no dynamic tensor size was recorded (no create_symbol event of a "
                "`.size()`): every compile is static, so no guard on num_tokens can "
                "be attributed"
            )
        run.ranks = sorted(traces)
        run.world_size = max(traces) + 1
        run.backend = (
            "inductor" if any(True for t in traces.values() for _ in t.post_grad_graphs()) else "?"
        )
        run.sizes = _summary_sizes(traces, run)
        run.notes.append(
            f"offline audit of {len(traces)} rank log(s); num_tokens is "
            f"{', '.join(run.token_sources) or '?'}"
            + (" (--token-source)" if overrides else " (from the recorded create_symbol sources)")
        )
    for rank, t in sorted(traces.items()):
        if t.truncated_line is not None:
            notes.append(
                f"rank {rank}: {Path(t.source).name} ends in a line cut short (line "
                f"{t.truncated_line}; the job was likely killed while writing): "
                f"everything before it was audited"
            )
        if not any(True for _ in t.of(CompilationMetrics)) and not t.events:
            notes.append(f"rank {rank}: {Path(t.source).name} holds no trace events")
    version = _version_note(traces)
    if version:
        notes.append(version)
    run.notes.extend(notes)
    return traces, run
