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

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

# An envelope line: glog prefix, then the JSON metadata up to the end of the line. Payload
# lines start with a tab and are skipped by the regex engine, not by Python.
_ENVELOPE = re.compile(
    rb"^(?:\[rank\d+\]:)?[VIWEC](\d{4} \d\d:\d\d:\d\d\.\d+) +\d+ ([^\]\n]*)\] ([^\n]*)$",
    re.M,
)
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
        return _decode_payload(self.raw_payload)

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
    """An event that carries `user_stack` and/or `stack` (frames innermost last)."""

    user_stack: tuple[Frame, ...] | None = None
    stack: tuple[Frame, ...] | None = None


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

    metrics: dict[str, Any] = field(default_factory=dict)
    kind = "compilation_metrics"

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
    metadata: Any = None
    kind = "unknown"


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
        return {"user_stack": resolver.frames(b.get("user_stack")),
                "stack": resolver.frames(b.get("stack"))}

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
        return CompilationMetrics(**common, metrics=b)
    if name == "artifact":
        return Artifact(**common, name=str(b.get("name", "")), encoding=str(b.get("encoding", "")))
    if name in _GRAPH_KINDS:
        return GraphDump(**common, graph_kind=name)
    return UnknownEvent(**common, name=name, metadata=body)


def parse_bytes(data: bytes, source: str = "<memory>") -> Trace:
    """Parse a whole trace held in memory. Never raises on bad input."""
    trace = Trace(source=source)
    resolver = _Resolver(trace.strings)
    matches = list(_ENVELOPE.finditer(data))
    # Line numbers are only needed for the lines we keep: count newlines between envelopes.
    line_no = 1
    prev_end = 0
    covered_to = 0  # bytes up to here are envelopes or their payloads
    for i, m in enumerate(matches):
        start, end = m.span()
        line_no += data.count(b"\n", prev_end, start)
        prev_end = start
        if start > covered_to:
            _garbage(data, covered_to, start, line_no - data.count(b"\n", covered_to, start),
                     trace)
        nxt = matches[i + 1].start() if i + 1 < len(matches) else len(data)
        covered_to = _payload_end(data, end, nxt)
        raw = m.group(3)
        if raw.startswith(b'{"chromium_event"'):  # most frequent, never needed: skip JSON
            trace.events.append(ChromiumEvent(line_no, m.group(1).decode(), m.group(2).decode(),
                                              None, None))
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
        line_no += data.count(b"\n", prev_end, covered_to)
        _garbage(data, covered_to, len(data), line_no, trace)
    return trace


def _payload_end(data: bytes, end: int, limit: int) -> int:
    """End of the tab-indented payload lines after the envelope ending at `end`."""
    pos = end + 1
    while pos < limit and data[pos:pos + 1] == b"\t":
        nl = data.find(b"\n", pos, limit)
        pos = limit if nl < 0 else nl + 1
    return min(max(pos, end), limit)


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
