"""A typed model of torch's structured compile trace (TORCH_TRACE / TORCH_DTRACE logs).

A trace is a glog-prefixed line per event whose tail is one JSON object naming the event kind,
optionally followed by payload lines that start with a tab:

    V1127 14:36:18.743000 2893 torch/.../symbolic_shapes.py:8058] {"guard_added_fast": {...}, ...}
    V1127 14:36:18.872000 2893 torch/.../guards.py:5400] {"artifact": {"name": "recompile_reas...
    \t[
    \t"0/1: (x.size()[0] % 4) == 0  # ..."
    \t]

File names in stacks are ids into `{"str": [path, id]}` lines (string interning). Each event
becomes one dataclass (`GuardAddedFast`, `CreateSymbol`, ...); kinds this module does not know
are kept as `UnknownEvent`, and lines that are not events become `MalformedLine` records.
Payloads are kept as raw bytes and decoded on first use. `arfuse.audit.trace.reader` builds these
from bytes; `arfuse.audit.trace.slim` decides what a streamed trace keeps.

The format is the same in torch 2.11 and 2.13 (fixture logs of both are under
tests/audit/data/).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_orjson_loads: Any
try:  # a C JSON parser; the stdlib one is the fallback
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency
    _orjson_loads = None

_COMPILE_ID = re.compile(r"\[?(?:!(\d+)/)?(\d+)/(\d+)(?:_(\d+))?(?:@(\d+))?\]?")


@dataclass(frozen=True, slots=True)
class CompileId:
    """`[frame_id/frame_compile_id]` plus the restart attempt (`_attempt` when > 0).

    `generation` counts `torch._dynamo.reset()`s seen in the log: compile ids restart at 0/0
    after a reset, so one log of several models holds several `0/0`s; the second one is
    `0/0@1`. Sorting puts earlier generations first."""

    frame_id: int
    frame_compile_id: int
    attempt: int = 0
    compiled_autograd_id: int | None = None
    generation: int = 0

    def __str__(self) -> str:
        prefix = f"!{self.compiled_autograd_id}/" if self.compiled_autograd_id is not None else ""
        suffix = f"_{self.attempt}" if self.attempt else ""
        gen = f"@{self.generation}" if self.generation else ""
        return f"{prefix}{self.frame_id}/{self.frame_compile_id}{suffix}{gen}"

    def _key(self) -> tuple[int, int, int, int, int]:
        ca = -1 if self.compiled_autograd_id is None else self.compiled_autograd_id
        return (self.generation, ca, self.frame_id, self.frame_compile_id, self.attempt)

    def __lt__(self, other: CompileId) -> bool:
        return self._key() < other._key()

    def __le__(self, other: CompileId) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: CompileId) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: CompileId) -> bool:
        return self._key() >= other._key()

    def in_generation(self, generation: int) -> CompileId:
        """This id as logged in the given dynamo generation (ids parsed from payload text,
        such as recompile reasons, do not say which generation they belong to)."""
        if generation == self.generation:
            return self
        return CompileId(
            self.frame_id,
            self.frame_compile_id,
            self.attempt,
            self.compiled_autograd_id,
            generation,
        )

    @classmethod
    def parse(cls, text: str) -> CompileId | None:
        """Parse `"0/1"`, `"[0/1]"`, `"0/1_2"`, `"!3/0/1"`, `"0/1@2"`; None when it is not a
        compile id."""
        m = _COMPILE_ID.fullmatch(text.strip())
        if not m:
            return None
        ca, frame, fcid, attempt, gen = m.groups()
        return cls(
            int(frame),
            int(fcid),
            int(attempt or 0),
            int(ca) if ca else None,
            int(gen or 0),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame; `filename` is resolved through the string table."""

    filename: str
    line: int
    name: str = ""
    loc: str | None = None


def decode_payload(raw: bytes) -> str:
    """Payload bytes as logged (each line tab-indented) -> the text, tabs stripped."""
    text = raw.decode("utf-8", errors="replace")
    text = text.removeprefix("\t")  # every payload line starts with one tab: strip that one
    return text.replace("\n\t", "\n")


def loads(raw: bytes | str) -> Any:
    """JSON, parsed by orjson when installed (3-10x the stdlib on trace lines)."""
    if _orjson_loads is not None:
        try:
            return _orjson_loads(raw)
        except ValueError:
            pass  # NaN, Infinity, integers past 64 bits: the stdlib parser takes them
    return json.loads(raw)


def lazy_body(raw: bytes, name: str) -> Any:
    """The `name` member of an envelope line's JSON (parsed when first looked at)."""
    try:
        meta = loads(raw)
    except ValueError:
        return None
    return meta.get(name) if isinstance(meta, dict) else None


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
        return decode_payload(raw)

    def payload_json(self) -> Any:
        """The payload parsed as JSON; the raw text when it is not valid JSON."""
        text = self.payload
        if text is None:
            return None
        try:
            return loads(text)
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
            self._metrics = lazy_body(self.raw_meta, "compilation_metrics")
        return self._metrics if isinstance(self._metrics, dict) else {}

    @property
    def fail_type(self) -> str | None:
        return self.metrics.get("fail_type")

    @property
    def fail_reason(self) -> str | None:
        return self.metrics.get("fail_reason")

    @property
    def metrics_compile_id(self) -> CompileId | None:
        """The compile id the metrics name, in the generation of the event itself."""
        cid = self.metrics.get("compile_id")
        parsed = CompileId.parse(cid) if isinstance(cid, str) else None
        if parsed is not None and self.compile_id is not None:
            return parsed.in_generation(self.compile_id.generation)
        return parsed

    @property
    def of_compile(self) -> CompileId | None:
        """The compile these metrics describe: the id they name, else the envelope's."""
        return self.metrics_compile_id or self.compile_id

    @property
    def frame(self) -> Frame | None:
        """The compiled frame (`co_filename:co_firstlineno`), None when the metrics lack it."""
        m = self.metrics
        if not m.get("co_filename"):
            return None
        return Frame(m["co_filename"], int(m.get("co_firstlineno") or 0), str(m.get("co_name", "")))

    @property
    def failed_frame(self) -> Frame:
        """The user frame torch blamed for a failed compile, else the compiled frame."""
        m = self.metrics
        path = m.get("fail_user_frame_filename") or m.get("co_filename") or "<unknown>"
        line = int(m.get("fail_user_frame_lineno") or m.get("co_firstlineno") or 0)
        return Frame(str(path), line, str(m.get("co_name") or ""))


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
            self._metadata = lazy_body(self.raw_meta, self.name)
        return self._metadata


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A line that is not an event (garbage, a truncated line); `text` is cut to 200 chars."""

    line_no: int
    text: str
    error: str


# -- the names of records and artifacts: this module is their one owner ------------------------
#: A post-grad graph is recorded in one of three forms, by torch version: an artifact named
#: POST_GRAD_GRAPH (torch 2.13), a top-level record of that kind (graph dump), or an artifact
#: named AFTER_POST_GRAD_GRAPH. Each form is ("artifact" | "graph", name).
POST_GRAD_GRAPH = "inductor_post_grad_graph"
AFTER_POST_GRAD_GRAPH = "after_post_grad_graph"
POST_GRAD_FORMS = (
    ("artifact", POST_GRAD_GRAPH),
    ("graph", POST_GRAD_GRAPH),
    ("artifact", AFTER_POST_GRAD_GRAPH),
)
#: The forms the audit reads today (every reader goes through `Trace.post_grad_graphs`, and
#: `slim.GRAPHS` keeps these): a new form is one more entry here.
POST_GRAD_READ = POST_GRAD_FORMS[:1]
FUSION_REPORT = "arfuse_fusion"  # the fusion pass's per-graph report artifact
CALL_ARTIFACT = "arfuse_audit_call"  # the audit driver's marker before every call
TORCH_VERSION = "torch_version"

GRAPH_KINDS = frozenset(
    {
        "dynamo_output_graph",
        "aot_forward_graph",
        "aot_backward_graph",
        "aot_inference_graph",
        "aot_joint_graph",
        "inductor_pre_grad_graph",
        POST_GRAD_GRAPH,
        "inductor_output_code",
        "optimized_graph",
    }
)
AOT_GRAPHS = frozenset({"aot_inference_graph", "aot_forward_graph"})


@dataclass
class Trace:
    """A parsed trace: events in log order, the string table, and lines that were not events.

    `malformed` keeps the first `MALFORMED_KEPT` such lines; `malformed_count` counts all."""

    events: list[Event] = field(default_factory=list)
    strings: dict[int, str] = field(default_factory=dict)
    malformed: list[MalformedLine] = field(default_factory=list)
    source: str = "<memory>"
    truncated_line: int | None = None  # the last line was cut short (a crashed job)
    bytes_read: int = 0
    malformed_count: int = 0
    torch_version: str | None = None  # "2.13.0+cpu", from the log itself when it says

    def of(self, cls: type) -> Iterator[Any]:
        """Events of one class, in log order."""
        return (e for e in self.events if isinstance(e, cls))

    def artifacts(self, name: str) -> Iterator[Artifact]:
        return (e for e in self.events if isinstance(e, Artifact) and e.name == name)

    def post_grad_graphs(self) -> Iterator[Artifact | GraphDump]:
        """Every post-grad graph record (forms: POST_GRAD_READ), in log order."""
        artifacts = {name for form, name in POST_GRAD_READ if form == "artifact"}
        dumps = {name for form, name in POST_GRAD_READ if form == "graph"}
        return (
            e
            for e in self.events
            if (isinstance(e, Artifact) and e.name in artifacts)
            or (isinstance(e, GraphDump) and e.graph_kind in dumps)
        )

    def compile_ids(self) -> list[CompileId]:
        seen: dict[CompileId, None] = {}
        for e in self.events:
            if e.compile_id is not None:
                seen.setdefault(e.compile_id, None)
        return list(seen)

    @property
    def ranks(self) -> set[int]:
        return {e.rank for e in self.events if e.rank is not None}
