"""Offline audit: the rules over TORCH_TRACE logs some other job wrote (vLLM, SGLang, torchrun),
without running any model.

    traces, run, notes = load_traces("trace_dir/")       # or one .log[.gz], or a .tar[.gz]
    report = analyze(traces, run)

`PATH` is a TORCH_TRACE directory (one `dedicated_log_torch_trace_rank_N_*.log` per rank), a
`--keep` directory of `arfuse audit` (run.json + trace/), one `.log` / `.log.gz`, or a tarball
of either. Logs are streamed (constant working memory in the log size) and a last line cut
short by a crash is a note, not an error. The token symbol comes from the recorded
`create_symbol` sources; `token_sources` overrides when they are ambiguous.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from arfuse.audit.context import AuditContext, RunInfo
from arfuse.audit.trace import (
    CompilationMetrics, CreateSymbol, Trace, open_trace, parse_stream,
)

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_LOG = re.compile(r"\.log(\.gz)?$")
_RANK = re.compile(r"rank_(\d+)")


@dataclass
class TraceSource:
    """One log to parse: where it comes from, its rank, and how to open it."""

    name: str
    rank: int | None
    size: int | None
    mtime: float
    open: Callable[[], IO[bytes]]


def _rank_of(name: str) -> int | None:
    m = _RANK.search(Path(name).name)
    return int(m.group(1)) if m else None


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_TAR_SUFFIXES)


def _file_source(p: Path) -> TraceSource:
    st = p.stat()
    # progress counts decompressed bytes: a .gz file's own size is no total for them
    size = None if p.name.endswith(".gz") else st.st_size
    return TraceSource(str(p), _rank_of(p.name), size, st.st_mtime, lambda p=p: open_trace(p))


def _tar_sources(path: Path) -> tuple[list[TraceSource], dict | None]:
    import gzip

    try:
        tar = tarfile.open(path, "r:*")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable tarball ({exc})") from None
    run_json = None
    out = []
    for m in members:
        if not m.isfile():
            continue
        if Path(m.name).name == "run.json":
            fh = tar.extractfile(m)
            run_json = json.loads(fh.read()) if fh else None
            continue
        if not _LOG.search(m.name):
            continue

        def opener(m: tarfile.TarInfo = m) -> IO[bytes]:
            fh = tar.extractfile(m)
            assert fh is not None  # isfile() above
            return gzip.GzipFile(fileobj=fh) if m.name.endswith(".gz") else fh

        out.append(TraceSource(f"{path}:{m.name}", _rank_of(m.name), m.size, float(m.mtime),
                               opener))
    return out, run_json


def discover(path: str | Path) -> tuple[list[TraceSource], dict | None]:
    """The logs under `path` and the run.json of a `--keep` directory (None if there is none)."""
    path = Path(path)
    if is_tarball(path):
        sources, run_json = _tar_sources(path)
    elif path.is_dir():
        run_json = json.loads((path / "run.json").read_text()) \
            if (path / "run.json").is_file() else None
        top = path / "trace" if run_json is not None and (path / "trace").is_dir() else path
        files = sorted(p for p in top.glob("*") if p.is_file() and _LOG.search(p.name)
                       and p.name != "worker.log")
        if not files:  # a --keep directory (trace/) or a tree of per-job directories
            files = sorted(p for p in path.rglob("*") if p.is_file() and _LOG.search(p.name))
        sources = [_file_source(p) for p in files]
    elif path.is_file():
        sources, run_json = [_file_source(path)], None
    else:
        raise ValueError(f"{path}: no such file or directory")
    if not sources:
        raise ValueError(f"{path}: no TORCH_TRACE .log files found (expected "
                         f"dedicated_log_torch_trace_rank_N_*.log, a .log file or a tarball of "
                         f"them)")
    return sources, run_json


def pick_per_rank(sources: list[TraceSource]) -> tuple[dict[int, TraceSource], list[str]]:
    """One log per rank (the newest when a directory holds several runs), with a note for
    every log left out. A log without a rank in its name is rank 0 (a single-process job);
    next to rank-named logs it is another process of the job (vLLM's API server, a launcher)
    and is left out."""
    by_rank: dict[int, list[TraceSource]] = defaultdict(list)
    notes = []
    if any(s.rank is not None for s in sources):
        for s in sources:
            if s.rank is None:
                notes.append(f"{s.name} left out: no rank in its name, next to per-rank logs")
        sources = [s for s in sources if s.rank is not None]
    for s in sources:
        by_rank[s.rank if s.rank is not None else 0].append(s)
    chosen = {}
    for rank, items in sorted(by_rank.items()):
        items.sort(key=lambda s: (s.mtime, s.name))
        chosen[rank] = items[-1]
        for s in items[:-1]:
            notes.append(f"rank {rank}: {s.name} left out (several logs for one rank; the "
                         f"newest, {Path(chosen[rank].name).name}, is audited)")
    return chosen, notes


def _progress_bar(show: bool, sources: dict[int, TraceSource]):
    if not show:
        return None
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    sizes = [s.size for s in sources.values()]
    total = None if None in sizes else sum(sizes)
    bar = Progress(TextColumn("[bold]parse[/] {task.description}"), BarColumn(),
                   DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    return bar, total


def parse_sources(sources: dict[int, TraceSource], progress: bool = False
                  ) -> dict[int, Trace]:
    """Stream-parse one log per rank (a progress bar over all of them when `progress`)."""
    made = _progress_bar(progress, sources)
    traces: dict[int, Trace] = {}
    if made is None:
        for rank, s in sources.items():
            with s.open() as fh:
                traces[rank] = parse_stream(fh, s.name)
        return traces
    bar, total = made
    with bar:
        task = bar.add_task("", total=total)
        base = 0
        for rank, s in sources.items():
            bar.update(task, description=f"rank {rank}: {Path(s.name).name}")
            with s.open() as fh:
                traces[rank] = parse_stream(
                    fh, s.name, progress=lambda n, b=base: bar.update(task, completed=b + n))
            base += s.size or traces[rank].bytes_read
            bar.update(task, completed=base)
    return traces


# -- the token symbol ---------------------------------------------------------------------------

class AmbiguousTokenSource(ValueError):
    """More than one dynamic size could be num_tokens; the message lists them."""


def token_candidates(traces: dict[int, Trace]) -> dict[str, list[str]]:
    """Each dynamic input source recorded by `create_symbol` -> the values it was created with."""
    out: dict[str, list[str]] = {}
    for t in traces.values():
        for e in t.of(CreateSymbol):
            if e.source:
                vals = out.setdefault(e.source, [])
                if e.val and e.val not in vals:
                    vals.append(e.val)
    return out


def infer_token_sources(traces: dict[int, Trace]) -> list[str]:
    """The sources that stand for num_tokens: every recorded dynamic size when each compile has
    exactly one (torch gives equal dynamic sizes one symbol, so `input_ids`, `positions` and the
    hidden states of a vLLM graph are one symbol). Raises `AmbiguousTokenSource` when a
    compile has several (a batch and a sequence dim, a KV-cache length)."""
    per_compile: dict[tuple[int, Any], dict[str, tuple[str, str]]] = defaultdict(dict)
    for rank, t in traces.items():
        for e in t.of(CreateSymbol):
            if e.source:
                per_compile[(rank, e.compile_id)].setdefault(e.symbol, (e.source, e.val))
    sources = sorted({s for syms in per_compile.values() for s, _ in syms.values()})
    # several symbols of one compile with one value (inputs each marked dynamic: input_ids and
    # positions, x and residual) are one count; different values are different dims
    split = [syms for syms in per_compile.values() if len({v for _, v in syms.values()}) > 1]
    if split:
        cands = token_candidates(traces)
        listing = "\n".join(f"  --token-source \"{s}\"   (recorded values: "
                            f"{', '.join(cands.get(s, [])[:6]) or '?'})" for s in sources)
        raise AmbiguousTokenSource(
            f"cannot tell which dynamic size is num_tokens: a compiled graph has "
            f"{max(len(v) for v in split)} dynamic sizes of different values. Name it "
            f"with --token-source (repeat it for each input that carries the tokens), one "
            f"of:\n{listing}")
    return sources


def _summary_sizes(traces: dict[int, Trace], run: RunInfo) -> list[int]:
    sizes: set[int] = set()
    for rank, t in traces.items():
        sizes |= set(AuditContext(t, run, rank).compile_sizes.values())
    return sorted(sizes)


def load_traces(path: str | Path, *, token_sources: Iterable[str] = (),
                progress: bool = False) -> tuple[dict[int, Trace], RunInfo]:
    """Parse every rank's log under `path` and describe the run for the rules."""
    import time

    t0 = time.perf_counter()
    sources, run_json = discover(path)
    chosen, notes = pick_per_rank(sources)
    traces = parse_sources(chosen, progress)
    seconds = round(time.perf_counter() - t0, 2)
    overrides = [s for s in token_sources if s]
    if run_json is not None:
        run = RunInfo.from_json(run_json)
        traces = {r: t for r, t in traces.items() if r in run.ranks} or traces
        if overrides:
            run.token_sources, run.token_dims = overrides, {}
    else:
        run = RunInfo(target=str(path), seconds=seconds)
        run.token_sources = overrides or infer_token_sources(traces)
        if not run.token_sources:
            notes.append("no dynamic size was recorded (no create_symbol event): every "
                         "compile is static, so no guard on num_tokens can be attributed")
        run.ranks = sorted(traces)
        run.world_size = max(traces) + 1
        run.backend = "inductor" if any(
            True for t in traces.values() for _ in t.artifacts("inductor_post_grad_graph")) \
            else "?"
        run.sizes = _summary_sizes(traces, run)
        run.notes.append(f"offline audit of {len(traces)} rank log(s); num_tokens is "
                         f"{', '.join(run.token_sources) or '?'}"
                         + (" (--token-source)" if overrides else
                            " (from the recorded create_symbol sources)"))
    for rank, t in sorted(traces.items()):
        if t.truncated_line is not None:
            notes.append(f"rank {rank}: {Path(t.source).name} ends in a line cut short (line "
                         f"{t.truncated_line}; the job was likely killed while writing): "
                         f"everything before it was audited")
        if not any(True for _ in t.of(CompilationMetrics)) and not t.events:
            notes.append(f"rank {rank}: {Path(t.source).name} holds no trace events")
    run.notes.extend(notes)
    return traces, run
