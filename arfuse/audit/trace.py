"""A typed model of torch's structured compile trace (TORCH_TRACE / TORCH_DTRACE logs).

A trace is a glog-prefixed line per event whose tail is one JSON object naming the event kind,
optionally followed by payload lines that start with a tab:

    V1127 14:36:18.743000 2893 torch/fx/experimental/symbolic_shapes.py:8058] {"guard_added_fast": {...}, "frame_id": 0, "frame_compile_id": 1, "attempt": 0}
    V1127 14:36:18.872000 2893 torch/_dynamo/guards.py:5400] {"artifact": {"name": "recompile_reasons", "encoding": "json"}, ..., "has_payload": "18ac..."}
    \t[
    \t"0/1: (x.size()[0] % 4) == 0  # ..."
    \t]

File names in stacks are ids into `{"str": [path, id]}` lines (string interning). Each event
becomes one dataclass (`GuardAddedFast`, `CreateSymbol`, ...); kinds this module does not know
are kept as `UnknownEvent`, and lines that are not events (garbage, a line cut short by a
crash) become `MalformedLine` records instead of errors. Payloads are kept as raw bytes and
decoded on first use, so a trace with huge graph payloads parses at the speed of a regex scan.

The format is the same in torch 2.11 and 2.13 (fixture logs of both are under
tests/audit/data/).
"""

from __future__ import annotations

import gc
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

# An envelope line: glog prefix, then the JSON metadata up to the end of the line. Payload
# lines start with a tab and are skipped by the regex engine, not by Python.
_ENVELOPE = re.compile(
    rb"\n[VIWEC\[](?:rank\d+\]:[VIWEC])?(\d{4} \d\d:\d\d:\d\d\.\d+) +\d+ ([^\]\n]*)\] ([^\n]*)")
_ENVELOPE_KEYS = frozenset({
    "rank", "compiled_autograd_id", "frame_id", "frame_compile_id", "attempt", "has_payload",
    "severity", "timestamp", "pathname", "thread", "subgraph_name", "stack",
})


@dataclass(frozen=True, slots=True, order=True)
class CompileId:
    """`[frame_id/frame_compile_id]` plus the restart attempt (`_attempt` when > 0)."""

    frame_id: int
    frame_compile_id: int
    attempt: int = 0
    compiled_autograd_id: int | None = None

    def __str__(self) -> str:
        prefix = f"!{self.compiled_autograd_id}/" if self.compiled_autograd_id is not None else ""
        suffix = f"_{self.attempt}" if self.attempt else ""
        return f"{prefix}{self.frame_id}/{self.frame_compile_id}{suffix}"

    @classmethod
    def parse(cls, text: str) -> "CompileId | None":
        """Parse `"0/1"`, `"[0/1]"`, `"0/1_2"`, `"!3/0/1"`; None when it is not a compile id."""
        m = re.fullmatch(r"\[?(?:!(\d+)/)?(\d+)/(\d+)(?:_(\d+))?\]?", text.strip())
        if not m:
            return None
        ca, frame, fcid, attempt = m.groups()
        return cls(int(frame), int(fcid), int(attempt or 0), int(ca) if ca else None)


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame; `filename` is resolved through the string table."""

    filename: str
    line: int
    name: str = ""
    loc: str | None = None


@dataclass(slots=True)
class Event:
    """Fields every event has. `line_no` is the 1-based line of the envelope in the log."""

    line_no: int
    timestamp: str
    emitter: str  # "torch/_dynamo/guards.py:5400": where torch logged it
    compile_id: CompileId | None
    rank: int | None
    raw_payload: bytes | None = field(default=None, repr=False)

    kind = "event"

    @property
    def payload(self) -> str | None:
        """The payload text (tabs stripped), decoded on first use."""
        if self.raw_payload is None:
            return None
        raw = self.raw_payload
        if raw[:1] == b"x":  # kept zlib-compressed by a streaming parse (payloads start with a tab)
            raw = zlib.decompress(raw)
        return _decode_payload(raw)

    def payload_json(self) -> Any:
        """The payload parsed as JSON; the raw text when it is not valid JSON."""
        text = self.payload
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text


@dataclass(slots=True)
class StackEvent(Event):
    """An event that carries `user_stack` and/or `stack` (frames innermost last).

    Frames are resolved through the string table on first access (most events of a large
    trace are never looked at)."""

    raw_user_stack: Any = field(default=None, repr=False)
    raw_stack: Any = field(default=None, repr=False)
    resolver: Any = field(default=None, repr=False, compare=False)

    @property
    def user_stack(self) -> tuple[Frame, ...] | None:
        return self.resolver.frames(self.raw_user_stack) if self.resolver else None

    @property
    def stack(self) -> tuple[Frame, ...] | None:
        return self.resolver.frames(self.raw_stack) if self.resolver else None


@dataclass(slots=True)
class DynamoStart(StackEvent):
    kind = "dynamo_start"


@dataclass(slots=True)
class CreateSymbol(StackEvent):
    symbol: str = ""
    val: str = ""
    vr: str = ""
    source: str = ""
    kind = "create_symbol"


@dataclass(slots=True)
class CreateUnbackedSymbol(StackEvent):
    symbol: str = ""
    vr: str = ""
    kind = "create_unbacked_symbol"


@dataclass(slots=True)
class GuardAddedFast(StackEvent):
    expr: str = ""
    kind = "guard_added_fast"


@dataclass(slots=True)
class GuardAdded(StackEvent):
    """TORCH_DTRACE only: like `guard_added_fast` plus the symbol -> source map."""

    expr: str = ""
    prefix: str = ""
    symbol_to_sources: dict[str, str] = field(default_factory=dict)
    kind = "guard_added"


@dataclass(slots=True)
class SymbolicShapeSpecialization(StackEvent):
    symbol: str = ""
    sources: tuple[str, ...] = ()
    value: str = ""
    reason: str = ""
    kind = "symbolic_shape_specialization"


@dataclass(slots=True)
class CompilationMetrics(Event):
    """The end-of-compile summary; `fail_type`/`fail_reason` say why a compile failed."""

    raw_meta: bytes = field(default=b"", repr=False)
    _metrics: Any = field(default=None, repr=False)
    kind = "compilation_metrics"

    @property
    def metrics(self) -> dict[str, Any]:
        """Parsed on first access: these lines carry whole config dumps (tens of KB)."""
        if self._metrics is None:
            self._metrics = _lazy_body(self.raw_meta, "compilation_metrics")
        return self._metrics if isinstance(self._metrics, dict) else {}

    @property
    def fail_type(self) -> str | None:
        return self.metrics.get("fail_type")

    @property
    def fail_reason(self) -> str | None:
        return self.metrics.get("fail_reason")

    @property
    def metrics_compile_id(self) -> CompileId | None:
        cid = self.metrics.get("compile_id")
        return CompileId.parse(cid) if isinstance(cid, str) else None


@dataclass(slots=True)
class Artifact(Event):
    """`{"artifact": {"name", "encoding"}}` with a payload: recompile reasons, graphs, ours."""

    name: str = ""
    encoding: str = ""
    kind = "artifact"


@dataclass(slots=True)
class GraphDump(Event):
    """A graph payload logged under its own kind (dynamo_output_graph, aot_*_graph, ...)."""

    graph_kind: str = ""
    kind = "graph"


@dataclass(slots=True)
class ChromiumEvent(Event):
    kind = "chromium_event"


@dataclass(slots=True)
class UnknownEvent(Event):
    """An event kind this parser does not model; kept with its metadata, not dropped."""

    name: str = ""
    raw_meta: bytes = field(default=b"", repr=False)
    _metadata: Any = field(default=None, repr=False)
    kind = "unknown"

    @property
    def metadata(self) -> Any:
        if self._metadata is None and self.raw_meta:
            self._metadata = _lazy_body(self.raw_meta, self.name)
        return self._metadata


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A line that is not an event (garbage, a truncated line); `text` is cut to 200 chars."""

    line_no: int
    text: str
    error: str


_GRAPH_KINDS = frozenset({
    "dynamo_output_graph", "aot_forward_graph", "aot_backward_graph", "aot_inference_graph",
    "aot_joint_graph", "inductor_pre_grad_graph", "inductor_post_grad_graph",
    "inductor_output_code", "optimized_graph",
})


@dataclass
class Trace:
    """A parsed trace: events in log order, the string table, and lines that were not events."""

    events: list[Event] = field(default_factory=list)
    strings: dict[int, str] = field(default_factory=dict)
    malformed: list[MalformedLine] = field(default_factory=list)
    source: str = "<memory>"
    truncated_line: int | None = None  # the last line was cut short (a crashed job)
    bytes_read: int = 0

    def of(self, cls: type) -> Iterator[Any]:
        """Events of one class, in log order."""
        return (e for e in self.events if isinstance(e, cls))

    def artifacts(self, name: str) -> Iterator[Artifact]:
        return (e for e in self.events if isinstance(e, Artifact) and e.name == name)

    def compile_ids(self) -> list[CompileId]:
        seen: dict[CompileId, None] = {}
        for e in self.events:
            if e.compile_id is not None:
                seen.setdefault(e.compile_id, None)
        return list(seen)

    @property
    def ranks(self) -> set[int]:
        return {e.rank for e in self.events if e.rank is not None}


def _lazy_body(raw: bytes, name: str) -> Any:
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta.get(name) if isinstance(meta, dict) else None


# Kinds whose metadata is only parsed when someone looks: big, and rarely needed.
_LAZY_KINDS = frozenset({b"compilation_metrics", b"describe_storage", b"describe_tensor",
                         b"describe_source", b"dynamo_cpp_guards_str", b"bwd_compilation_metrics",
                         b"link", b"dynamo_guards", b"optimized_graph"})
_KIND = re.compile(rb'^\{"(\w+)"')
_TAIL = re.compile(rb'"(rank|frame_id|frame_compile_id|attempt|compiled_autograd_id)": (\d+)')


def _tail_meta(raw: bytes) -> dict[str, Any]:
    """Envelope keys of a line whose body we do not parse (they follow the body)."""
    tail = raw[-300:]
    out: dict[str, Any] = {k.decode(): int(v) for k, v in _TAIL.findall(tail)}
    if b'"has_payload"' in tail:
        out["has_payload"] = True
    return out


def _decode_payload(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    # Every payload line starts with one tab; strip exactly that one.
    if text.startswith("\t"):
        text = text[1:]
    return text.replace("\n\t", "\n")


class _Resolver:
    """Turns raw stack dicts into `Frame`s through the (growing) string table."""

    __slots__ = ("strings", "_cache")

    def __init__(self, strings: dict[int, str]) -> None:
        self.strings = strings
        self._cache: dict[tuple, Frame] = {}

    def frames(self, raw: Any) -> tuple[Frame, ...] | None:
        if isinstance(raw, tuple):  # already resolved (a streaming parse resolves eagerly)
            return raw
        if not isinstance(raw, list):
            return None
        out = []
        for f in raw:
            if not isinstance(f, dict):
                continue
            fid = f.get("filename")
            key = (fid, f.get("line"), f.get("name"), f.get("loc"))
            frame = self._cache.get(key)
            if frame is None:
                if isinstance(fid, int):
                    filename = self.strings.get(fid, f"<unknown file #{fid}>")
                else:
                    filename = str(fid)
                line = f.get("line")
                frame = Frame(filename, line if isinstance(line, int) else 0,
                              str(f.get("name", "")), f.get("loc"))
                if isinstance(fid, int) and fid in self.strings:
                    self._cache[key] = frame
            out.append(frame)
        return tuple(out)


def _compile_id(meta: dict) -> CompileId | None:
    frame = meta.get("frame_id")
    fcid = meta.get("frame_compile_id")
    if isinstance(frame, int) and isinstance(fcid, int):
        attempt = meta.get("attempt")
        ca = meta.get("compiled_autograd_id")
        return CompileId(frame, fcid, attempt if isinstance(attempt, int) else 0,
                         ca if isinstance(ca, int) else None)
    return None


def _build(name: str, body: Any, common: dict, resolver: _Resolver) -> Event:
    b = body if isinstance(body, dict) else {}

    def stacks() -> dict:
        return {"raw_user_stack": b.get("user_stack"), "raw_stack": b.get("stack"),
                "resolver": resolver}

    if name == "guard_added_fast":
        return GuardAddedFast(**common, **stacks(), expr=str(b.get("expr", "")))
    if name == "create_symbol":
        return CreateSymbol(**common, **stacks(), symbol=str(b.get("symbol", "")),
                            val=str(b.get("val", "")), vr=str(b.get("vr", "")),
                            source=str(b.get("source", "")))
    if name == "symbolic_shape_specialization":
        sources = b.get("sources") or ()
        return SymbolicShapeSpecialization(
            **common, **stacks(), symbol=str(b.get("symbol", "")),
            sources=tuple(str(s) for s in sources) if isinstance(sources, list) else (str(sources),),
            value=str(b.get("value", "")), reason=str(b.get("reason", "")))
    if name == "guard_added":
        s2s = b.get("symbol_to_sources")
        return GuardAdded(**common, **stacks(), expr=str(b.get("expr", "")),
                          prefix=str(b.get("prefix", "")),
                          symbol_to_sources=s2s if isinstance(s2s, dict) else {})
    if name == "dynamo_start":
        return DynamoStart(**common, **stacks())
    if name == "create_unbacked_symbol":
        return CreateUnbackedSymbol(**common, **stacks(), symbol=str(b.get("symbol", "")),
                                    vr=str(b.get("vr", "")))
    if name == "compilation_metrics":
        return CompilationMetrics(**common, _metrics=b)
    if name == "artifact":
        return Artifact(**common, name=str(b.get("name", "")), encoding=str(b.get("encoding", "")))
    if name in _GRAPH_KINDS:
        return GraphDump(**common, graph_kind=name)
    return UnknownEvent(**common, name=name, _metadata=body)


def parse_bytes(data: bytes, source: str = "<memory>") -> Trace:
    """Parse a whole trace held in memory. Never raises on bad input."""
    gc_was_on = gc.isenabled()
    gc.disable()  # many small objects, no cycles: the collector would only rescan them
    try:
        return _parse(data, source)
    finally:
        if gc_was_on:
            gc.enable()


def _parse(data: bytes, source: str, trace: Trace | None = None,
           resolver: "_Resolver | None" = None, line_base: int = 0) -> Trace:
    """Parse `data` (whole lines) into `trace` (a new one by default); `line_base` is the number
    of lines before `data` when it is one chunk of a streamed file."""
    trace = trace if trace is not None else Trace(source=source)
    resolver = resolver or _Resolver(trace.strings)
    # A leading newline lets one literal-prefixed regex find every envelope, the first one
    # included (5x faster than a multi-line `^` anchor tried at every byte).
    data = b"\n" + data
    matches = list(_ENVELOPE.finditer(data))
    counted_to, lines = 0, line_base  # line_base + newlines in data[:counted_to]

    def line_at(pos: int) -> int:  # 1-based line number of the line starting at `pos`
        nonlocal counted_to, lines
        lines += data.count(b"\n", counted_to, pos)
        counted_to = pos
        return lines

    covered_to = 1  # bytes up to here are envelopes or their payloads
    for i, m in enumerate(matches):
        start, end = m.start() + 1, m.end()
        if start > covered_to:
            _garbage(data, covered_to, start, line_at(covered_to), trace)
        line_no = line_at(start)
        nxt = matches[i + 1].start() + 1 if i + 1 < len(matches) else len(data)
        covered_to = _payload_end(data, end, nxt)
        raw = m.group(3)
        if raw.startswith(b'{"chromium_event"'):  # most frequent, never needed: skip JSON
            trace.events.append(ChromiumEvent(line_no, m.group(1).decode(), m.group(2).decode(),
                                              None, None))
            continue
        km = _KIND.match(raw)
        if km and km.group(1) in _LAZY_KINDS and raw.endswith(b"}"):
            meta = _tail_meta(raw)
            payload = None
            if "has_payload" in meta and covered_to > end + 1:
                payload = data[end + 1:covered_to].rstrip(b"\n")
            common = {"line_no": line_no, "timestamp": m.group(1).decode(),
                      "emitter": m.group(2).decode(), "compile_id": _compile_id(meta),
                      "rank": meta.get("rank"), "raw_payload": payload}
            kind = km.group(1).decode()
            if kind == "compilation_metrics":
                trace.events.append(CompilationMetrics(**common, raw_meta=raw))
            else:
                trace.events.append(UnknownEvent(**common, name=kind, raw_meta=raw))
            continue
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            trace.malformed.append(MalformedLine(line_no, raw[:200].decode("utf-8", "replace"),
                                                 f"bad JSON: {exc}"))
            continue
        if not isinstance(meta, dict):
            trace.malformed.append(MalformedLine(line_no, raw[:200].decode("utf-8", "replace"),
                                                 "metadata is not a JSON object"))
            continue
        if "str" in meta and isinstance(meta["str"], list) and len(meta["str"]) == 2:
            text, sid = meta["str"]
            if isinstance(sid, int):
                trace.strings[sid] = str(text)
            continue
        names = [k for k in meta if k not in _ENVELOPE_KEYS]
        if not names:
            trace.malformed.append(MalformedLine(line_no, raw[:200].decode("utf-8", "replace"),
                                                 "no event kind"))
            continue
        name = names[0]
        rank = meta.get("rank")
        payload = None
        if "has_payload" in meta and covered_to > end + 1:
            payload = data[end + 1:covered_to].rstrip(b"\n")
        common = {"line_no": line_no, "timestamp": m.group(1).decode(),
                  "emitter": m.group(2).decode(), "compile_id": _compile_id(meta),
                  "rank": rank if isinstance(rank, int) else None, "raw_payload": payload}
        trace.events.append(_build(name, meta[name], common, resolver))
    if covered_to < len(data):
        _garbage(data, covered_to, len(data), line_at(covered_to), trace)
    return trace


_NOT_PAYLOAD = re.compile(rb"\n(?!\t)")


def _payload_end(data: bytes, end: int, limit: int) -> int:
    """End of the tab-indented payload lines after the envelope ending at `end` (a regex
    scan, so a payload of a million lines costs no Python loop)."""
    start = end + 1
    if start >= limit or data[start:start + 1] != b"\t":
        return min(start, limit)
    m = _NOT_PAYLOAD.search(data, start, limit)
    return limit if m is None else m.start() + 1


def _garbage(data: bytes, start: int, stop: int, line_no: int, trace: Trace) -> None:
    chunk = data[start:stop]
    if not chunk.strip():
        return
    first = chunk.lstrip(b"\n").split(b"\n", 1)[0]
    trace.malformed.append(MalformedLine(line_no, first[:200].decode("utf-8", "replace"),
                                         "not a trace event line"))


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a file; pass the .log file that TORCH_TRACE wrote")
    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def parse_file(path: str | Path) -> Trace:
    """Parse one TORCH_TRACE `.log` file (gzip accepted)."""
    return parse_bytes(read_bytes(path), source=str(path))


# What a streamed trace keeps: the rules read these artifacts' payloads and nothing else.
KEEP_PAYLOADS = frozenset({"inductor_post_grad_graph", "arfuse_fusion", "recompile_reasons",
                           "arfuse_audit_call"})
AOT_GRAPHS = frozenset({"aot_inference_graph", "aot_forward_graph"})
_COMPRESS_OVER = 4096
# A post-grad graph without a collective or fused op cannot hold an ARF2xx/ARF3xx finding: its
# text is dropped (the artifact stays, empty, so ranks still see the same set of graphs).
def _has_collective(payload: bytes) -> bool:
    # `torch.ops._c10d_functional.*` / `c10d.*` / `torch.ops.arfuse.*`: two memchr-speed scans
    return b"c10d" in payload or b"arfuse." in payload
_METRIC_STR_MAX = 500  # config dumps are longer; fail_reason is kept whole


def _slim_metrics(m: CompilationMetrics) -> None:
    """Keep compilation_metrics' scalar fields (config dumps and big lists dropped)."""
    full = m.metrics
    m._metrics = {k: v for k, v in full.items()
                  if v is None or isinstance(v, (bool, int, float))
                  or (isinstance(v, str) and len(v) <= _METRIC_STR_MAX)
                  or k in ("restart_reasons", "fail_reason", "fail_user_frame_filename")}
    m.raw_meta = b""


def _slim(trace: Trace, start: int, resolver: _Resolver, stacks: dict) -> None:
    """Drop what no rule reads from the events appended since `start`: chromium events, graph
    and code payloads, config dumps; resolve stacks to shared `Frame` tuples; compress kept
    payloads. Memory then grows with what the rules need (guards, post-grad graphs), not with
    the log's bytes."""
    kept = []
    for e in trace.events[start:]:
        if isinstance(e, ChromiumEvent):
            continue
        if isinstance(e, Artifact):
            if e.name not in KEEP_PAYLOADS:
                e.raw_payload = None
            elif (e.name == "inductor_post_grad_graph" and e.raw_payload is not None
                  and not _has_collective(e.raw_payload)):
                e.raw_payload = b""
            elif e.raw_payload is not None and len(e.raw_payload) > _COMPRESS_OVER:
                e.raw_payload = zlib.compress(e.raw_payload, 1)
        elif isinstance(e, GraphDump):
            # AOT graphs: the collective sequence (ARF304) where no post-grad graph is logged
            if (e.graph_kind in AOT_GRAPHS and e.raw_payload is not None
                    and _has_collective(e.raw_payload)):
                if len(e.raw_payload) > _COMPRESS_OVER:
                    e.raw_payload = zlib.compress(e.raw_payload, 1)
            else:
                e.raw_payload = None
        elif isinstance(e, CompilationMetrics):
            _slim_metrics(e)
            e.raw_payload = None
        elif isinstance(e, DynamoStart):
            e.raw_user_stack = e.raw_stack = e.raw_payload = None
        elif isinstance(e, StackEvent):
            for name in ("raw_user_stack", "raw_stack"):
                frames = resolver.frames(getattr(e, name))
                if frames is not None:
                    frames = stacks.setdefault(frames, frames)
                setattr(e, name, frames)
            e.raw_payload = None
        else:
            e.raw_payload = None
            if isinstance(e, UnknownEvent) and not e.name.startswith("describe_"):
                e.raw_meta, e._metadata = b"", None
        kept.append(e)
    del trace.events[start:]
    trace.events.extend(kept)


def _cut(buf: bytes | bytearray) -> int:
    """Length of the longest prefix of `buf` made of whole events (an envelope and all its
    tab-indented payload lines); 0 when there is none yet."""
    end = len(buf) - 1
    while True:
        i = buf.rfind(b"\n", 0, end)
        if i < 0:
            return 0
        if buf[i + 1:i + 2] not in (b"\t", b""):
            return i + 1
        end = i


def parse_stream(fh: Any, source: str = "<stream>", *, slim: bool = True,
                 chunk_size: int = 16 << 20, progress: Any = None) -> Trace:
    """Parse a trace from a binary file object chunk by chunk (constant working memory: one
    chunk plus what `slim` keeps). `progress(bytes_read)` is called after every chunk. A last
    line without its newline (a job killed while writing) sets `trace.truncated_line`."""
    trace = Trace(source=source)
    resolver = _Resolver(trace.strings)
    stacks: dict = {}
    buf = b""
    line_base = 0
    done = 0
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        while True:
            block = fh.read(chunk_size)
            done += len(block)
            if block:
                buf += block
                cut = _cut(buf)
                if cut == 0:
                    continue  # one event bigger than a chunk: read on
            else:
                cut = len(buf)
            if cut:
                chunk, buf = buf[:cut], buf[cut:]
                if not block and not chunk.endswith(b"\n"):
                    trace.truncated_line = line_base + chunk.count(b"\n") + 1
                start = len(trace.events)
                _parse(chunk, source, trace, resolver, line_base)
                line_base += chunk.count(b"\n")
                if slim:
                    _slim(trace, start, resolver, stacks)
                del chunk
            if progress is not None:
                progress(done)
            if not block:
                break
    finally:
        if gc_was_on:
            gc.enable()
    trace.bytes_read = done
    return trace


def open_trace(path: str | Path) -> Any:
    """A binary file object over a `.log` (gzip-compressed or not)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a file; pass the .log file that TORCH_TRACE wrote")
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else path.open("rb")


def trace_files(directory: str | Path) -> list[Path]:
    """The `.log` files of a TORCH_TRACE directory, oldest first."""
    return sorted(Path(directory).glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name))


def merge(traces: Iterable[Trace]) -> Trace:
    traces = list(traces)
    out = Trace(source="+".join(t.source for t in traces))
    for t in traces:
        out.events.extend(t.events)
        out.strings.update(t.strings)
        out.malformed.extend(t.malformed)
    return out
