"""Read TORCH_TRACE logs into `arfuse.audit.trace.records`: fast on real logs, safe on the rest.

    trace = parse_file("dedicated_log_torch_trace_rank_0_x.log.gz")   # everything, strict
    trace = parse_stream(fh, name, policy=policy_for(rules))          # what the rules read
    trace = parse_bytes(data)                                         # lenient, never raises

Speed: one regex finds every envelope line (payload lines are skipped by the regex engine, not
by Python); the JSON of an envelope is parsed by orjson when installed; kinds the policy does
not keep are never parsed; stacks are resolved once per distinct stack.

Bad input (strict parses, which the offline audit uses) raises `TraceFormatError` or
`TraceReadError`, both `ValueError`s whose message names the file and the line or byte offset:
a log with no event, or more garbage lines than events (past `GARBAGE_MIN`), is not a
TORCH_TRACE log; a line longer than `MAX_LINE` stops the read (memory stays bounded); a
compressed file cut short is named with the offset it ends at. Lines that are not events are
kept as `MalformedLine` records, the first `MALFORMED_KEPT` of them (all are counted).
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arfuse.audit.trace.records import (
    GRAPH_KINDS,
    TORCH_VERSION,
    Artifact,
    ChromiumEvent,
    CompilationMetrics,
    CompileId,
    CreateSymbol,
    CreateUnbackedSymbol,
    DynamoStart,
    Event,
    Frame,
    GraphDump,
    GuardAdded,
    GuardAddedFast,
    MalformedLine,
    SymbolicShapeSpecialization,
    Trace,
    UnknownEvent,
    loads,
)
from arfuse.audit.trace.slim import DEFAULT, Policy, slim

MAX_LINE = 64 << 20  # a longer line is not a trace line: stop before it eats memory
MAX_EVENT = 1 << 30  # one envelope plus its payload lines
MALFORMED_KEPT = 100  # MalformedLine records kept (all are counted)
GARBAGE_MIN = 100  # more bad lines than this and than events: not a trace log
CHUNK = 16 << 20

_ENVELOPE = re.compile(
    rb"\n[VIWEC\[](?:rank\d+\]:[VIWEC])?(\d{4} \d\d:\d\d:\d\d\.\d+) +\d+ ([^\]\n]*)\] ([^\n]*)"
)
_ENVELOPE_KEYS = frozenset(
    {
        "rank",
        "compiled_autograd_id",
        "frame_id",
        "frame_compile_id",
        "attempt",
        "has_payload",
        "severity",
        "timestamp",
        "pathname",
        "thread",
        "subgraph_name",
        "stack",
    }
)
_KIND = re.compile(rb'^\{"(\w+)"')
# Kinds whose metadata is only parsed when someone looks: big, and rarely needed.
_LAZY_KINDS = frozenset(
    {
        b"compilation_metrics",
        b"describe_storage",
        b"describe_tensor",
        b"describe_source",
        b"dynamo_cpp_guards_str",
        b"bwd_compilation_metrics",
        b"link",
        b"dynamo_guards",
        b"optimized_graph",
    }
)
_TAIL = re.compile(rb'"(rank|frame_id|frame_compile_id|attempt|compiled_autograd_id)": (\d+)')
_NOT_PAYLOAD = re.compile(rb"\n(?!\t)")
_STACK_KINDS = frozenset(
    {
        "create_symbol",
        "create_unbacked_symbol",
        "dynamo_start",
        "guard_added_fast",
        "guard_added",
        "symbolic_shape_specialization",
    }
)
_STACK_KEYS = (("user_stack", b'"user_stack": '), ("stack", b'"stack": '))
# One stack frame as torch logs it, matched as bytes: a frame seen before costs a dict lookup,
# not a JSON parse (no capturing groups, for findall).
_JSTR = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'  # a JSON string, as an unrolled loop (fast in re)
_FRAME = re.compile(
    rb'\{"line": -?\d+, "name": '
    + _JSTR
    + rb', "filename": \d+(?:, "loc": (?:null|'
    + _JSTR
    + rb"))?\}"
)
_EXAMPLE = (
    "V1127 14:36:18.743000 2893 torch/_dynamo/convert_frame.py:1] "
    '{"dynamo_start": {...}, "frame_id": 0, ...}'
)


class _Span:
    """The payload lines after one envelope, sliced out only for an event that keeps them."""

    __slots__ = ("data", "end", "to")

    def __init__(self, data: bytes, end: int, to: int) -> None:
        self.data, self.end, self.to = data, end, to

    def bytes(self) -> bytes | None:
        if self.to <= self.end + 1:
            return None
        return self.data[self.end + 1 : self.to].rstrip(b"\n")


class TraceFormatError(ValueError):
    """The input is not a TORCH_TRACE log (or not one this reader can hold in memory)."""


class TraceReadError(ValueError):
    """The file cannot be read to its end (a compressed file cut short, an I/O error)."""


def _text(raw: bytes) -> str:
    return raw[:200].decode("utf-8", "replace")


class Resolver:
    """Turns raw stacks into `Frame` tuples through the (growing) string table. A raw stack is
    a parsed JSON list of frame dicts, or the list's bytes as logged (the fast path: a frame
    or a whole stack seen before is one dict lookup). Equal stacks resolve to one shared
    tuple (a trace repeats the same deep stack many times)."""

    __slots__ = ("_frames", "_stacks", "strings")

    def __init__(self, strings: dict[int, str]) -> None:
        self.strings = strings
        self._frames: dict[Any, Frame] = {}
        self._stacks: dict[Any, tuple[Frame, ...]] = {}

    def _frame(self, f: Any) -> tuple[Frame | None, bool]:
        """A frame dict -> (Frame, whether its file name is known); None for a non-dict."""
        if not isinstance(f, dict):
            return None, True
        fid = f.get("filename")
        known = isinstance(fid, int) and fid in self.strings
        if isinstance(fid, int):
            filename = self.strings[fid] if known else f"<unknown file #{fid}>"
        else:
            filename = str(fid)
        line, loc = f.get("line"), f.get("loc")
        frame = Frame(
            filename,
            line if isinstance(line, int) else 0,
            str(f.get("name", "")),
            loc if isinstance(loc, str) else None,
        )
        return frame, known or not isinstance(fid, int)

    def frames(self, raw: Any) -> tuple[Frame, ...] | None:
        if raw is None or isinstance(raw, tuple):  # absent, or already resolved
            return raw
        if isinstance(raw, bytes):
            return self._from_bytes(raw)
        if not isinstance(raw, list):
            return None
        frames = (self._frame(f)[0] for f in raw)
        return tuple(f for f in frames if f is not None)

    def _from_bytes(self, raw: bytes) -> tuple[Frame, ...] | None:
        hit = self._stacks.get(raw)
        if hit is not None:
            return hit
        if raw[:4] == b"null":
            return None
        found = _FRAME.findall(raw)
        if len(found) != raw.count(b'{"line": ') or raw[:1] != b"[":
            # not the shape torch writes: parse the list as JSON (slow, and rare)
            try:
                parsed, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8", "replace"))
            except ValueError:
                return None
            return self.frames(parsed) if isinstance(parsed, list) else None
        out, complete = [], True
        frames = self._frames
        for fb in found:
            frame = frames.get(fb)
            if frame is None:
                made, known = self._frame(loads(fb))
                if made is None:  # not a frame object after all
                    continue
                frame = made
                complete &= known
                if known:
                    frames[fb] = frame
            out.append(frame)
        result = tuple(out)
        if complete:
            self._stacks[raw] = result
        return result


def _tail_meta(raw: bytes) -> dict[str, Any]:
    """Envelope keys of a line whose body we do not parse (they follow the body)."""
    tail = raw[-300:]
    out: dict[str, Any] = {k.decode(): int(v) for k, v in _TAIL.findall(tail)}
    if b'"has_payload"' in tail:
        out["has_payload"] = True
    return out


def _stack_meta(raw: bytes) -> dict | None:
    """`_head_meta` plus the event's stacks as the bytes of their JSON lists (resolved by
    `Resolver` without a JSON parse). None when the line is not of the shape torch writes.

    The two keys split the line: a list runs from its key to the next key, the last one to
    the line's last `]` (the envelope keys after it hold no brackets). A key spelled inside a
    string is escaped (`\\"stack\\"`), so `find` only meets the real ones."""
    meta = _head_meta(raw)
    if meta is None:
        return None
    body = next(iter(v for k, v in meta.items() if k not in _ENVELOPE_KEYS), None)
    if not isinstance(body, dict):
        return None
    keys = _stack_keys(raw)
    for n, (_, start, name) in enumerate(keys):
        end = keys[n + 1][0] if n + 1 < len(keys) else raw.rfind(b"]") + 1
        body[name] = raw[start:end] if end > start else raw[start : start + 4]
    return meta


def _stack_keys(raw: bytes) -> list[tuple[int, int, str]]:
    """(where the body before the key ends, where the key's list starts, key) of the stack keys
    of an event line, in line order. A key follows `, ` or opens the body (`{"stack": `)."""
    out = []
    for name, key in _STACK_KEYS:
        at = raw.find(b", " + key)
        if at >= 0:
            out.append((at, at + 2 + len(key), name))
            continue
        at = raw.find(b"{" + key)
        if at > 0:
            out.append((at + 1, at + 1 + len(key), name))
    out.sort()
    return out


def _head_meta(raw: bytes) -> dict | None:
    """The envelope of a line whose stacks are not needed, without parsing them: torch writes
    an event's stacks after its other fields, so the JSON before them, closed, is the body;
    the envelope keys come from the line's tail. None when the line is not of that shape."""
    keys = _stack_keys(raw)
    if not keys:
        return None
    try:
        head = loads(raw[: keys[0][0]] + b"}}")
    except ValueError:
        return None
    if not isinstance(head, dict) or len(head) != 1:
        return None
    meta = _tail_meta(raw)
    meta.update(head)
    return meta


def _payload_end(data: bytes, end: int, limit: int) -> int:
    """End of the tab-indented payload lines after the envelope ending at `end` (a regex
    scan, so a payload of a million lines costs no Python loop)."""
    start = end + 1
    if start >= limit or data[start : start + 1] != b"\t":
        return min(start, limit)
    m = _NOT_PAYLOAD.search(data, start, limit)
    return limit if m is None else m.start() + 1


def _build(name: str, body: Any, common: dict, resolver: Resolver) -> Event:
    b = body if isinstance(body, dict) else {}

    def stacks() -> dict:
        return {
            "raw_user_stack": b.get("user_stack"),
            "raw_stack": b.get("stack"),
            "resolver": resolver,
        }

    if name == "guard_added_fast":
        return GuardAddedFast(**common, **stacks(), expr=str(b.get("expr", "")))
    if name == "create_symbol":
        return CreateSymbol(
            **common,
            **stacks(),
            symbol=str(b.get("symbol", "")),
            val=str(b.get("val", "")),
            vr=str(b.get("vr", "")),
            source=str(b.get("source", "")),
        )
    if name == "symbolic_shape_specialization":
        sources = b.get("sources") or ()
        return SymbolicShapeSpecialization(
            **common,
            **stacks(),
            symbol=str(b.get("symbol", "")),
            sources=tuple(str(s) for s in sources)
            if isinstance(sources, list)
            else (str(sources),),
            value=str(b.get("value", "")),
            reason=str(b.get("reason", "")),
        )
    if name == "guard_added":
        s2s = b.get("symbol_to_sources")
        return GuardAdded(
            **common,
            **stacks(),
            expr=str(b.get("expr", "")),
            prefix=str(b.get("prefix", "")),
            symbol_to_sources=s2s if isinstance(s2s, dict) else {},
        )
    if name == "dynamo_start":
        return DynamoStart(**common, **stacks())
    if name == "create_unbacked_symbol":
        return CreateUnbackedSymbol(
            **common,
            **stacks(),
            symbol=str(b.get("symbol", "")),
            vr=str(b.get("vr", "")),
        )
    if name == "compilation_metrics":
        return CompilationMetrics(**common, _metrics=b)
    if name == "artifact":
        return Artifact(**common, name=str(b.get("name", "")), encoding=str(b.get("encoding", "")))
    if name in GRAPH_KINDS:
        return GraphDump(**common, graph_kind=name)
    return UnknownEvent(**common, name=name, _metadata=body)


class _Reader:
    """Parses whole lines into one `Trace`, chunk after chunk; keeps the state that spans
    chunks (line count, string table, dynamo generations, garbage counts)."""

    def __init__(self, source: str, policy: Policy | None) -> None:
        self.trace = Trace(source=source)
        self.resolver = Resolver(self.trace.strings)
        self.policy = policy
        self.lines = 0  # lines before the chunk being parsed
        self.good = 0  # envelopes read (built, or left out on purpose)
        self.generation: dict[int | None, int] = {}  # rank -> dynamo resets seen
        self.started: dict[int | None, set[tuple]] = {}  # rank -> compiles started since
        # kinds whose stacks the policy drops: parse only the JSON before the stacks
        self.head_only: frozenset[bytes] = frozenset()
        self.stack_kinds: frozenset[bytes] = frozenset()  # stacks kept: matched as bytes
        self.extra_ops: set[str] = set(policy.extra_ops) if policy is not None else set()
        if policy is not None:
            self.head_only = frozenset(k.encode() for k in _STACK_KINDS - policy.stacks)
            self.stack_kinds = frozenset(k.encode() for k in _STACK_KINDS & policy.stacks)

    # -- bad lines -------------------------------------------------------------------------
    def _bad(self, line_no: int, raw: bytes, error: str, count: int = 1) -> None:
        t = self.trace
        t.malformed_count += count
        if len(t.malformed) < MALFORMED_KEPT:
            t.malformed.append(MalformedLine(line_no, _text(raw), error))

    def _garbage(self, data: bytes, start: int, stop: int, line_no: int) -> None:
        chunk = data[start:stop]
        body = chunk.lstrip(b"\n")
        if not body.strip():
            return
        line_no += len(chunk) - len(body)
        lines = body.rstrip(b"\n").count(b"\n") + 1
        self._bad(line_no, body.split(b"\n", 1)[0], "not a trace event line", lines)

    # -- compile ids -----------------------------------------------------------------------
    def _compile_id(self, meta: dict, start: bool = False) -> CompileId | None:
        frame, fcid = meta.get("frame_id"), meta.get("frame_compile_id")
        if not (isinstance(frame, int) and isinstance(fcid, int)):
            return None
        attempt, ca, rank = (
            meta.get("attempt"),
            meta.get("compiled_autograd_id"),
            meta.get("rank"),
        )
        attempt = attempt if isinstance(attempt, int) else 0
        ca = ca if isinstance(ca, int) else None
        rank = rank if isinstance(rank, int) else None
        if start:  # a dynamo_start: an id started before means torch._dynamo.reset() ran
            key = (ca, frame, fcid, attempt)
            started = self.started.setdefault(rank, set())
            if key in started:
                self.generation[rank] = self.generation.get(rank, 0) + 1
                started.clear()
            started.add(key)
        return CompileId(frame, fcid, attempt, ca, self.generation.get(rank, 0))

    # -- one chunk of whole lines ------------------------------------------------------------
    def feed(self, data: bytes, stop: int) -> None:
        """Parse `data[:stop]`: whole lines, each preceded by a newline (`data[0]` is one).
        A leading newline lets one literal-prefixed regex find every envelope, the first one
        included (5x faster than a multi-line `^` anchor tried at every byte)."""
        events: list[Event] = []
        matches = list(_ENVELOPE.finditer(data, 0, stop))
        counted_to, lines = 0, self.lines
        covered_to = 1  # bytes up to here are envelopes or their payloads
        for i, m in enumerate(matches):
            start, end = m.start() + 1, m.end()
            if start > covered_to:
                lines += data.count(b"\n", counted_to, covered_to)
                counted_to = covered_to
                self._garbage(data, covered_to, start, lines)
            lines += data.count(b"\n", counted_to, start)
            counted_to = start
            nxt = matches[i + 1].start() + 1 if i + 1 < len(matches) else stop
            covered_to = _payload_end(data, end, nxt)
            event = self._event(m, lines, _Span(data, end, covered_to))
            if event is not None:
                events.append(event)
        if covered_to < stop:
            lines += data.count(b"\n", counted_to, covered_to)
            counted_to = covered_to
            self._garbage(data, covered_to, stop, lines)
        self.lines = lines + data.count(b"\n", counted_to, stop)
        if self.policy is not None:
            events = slim(events, self.policy, self.resolver, self.extra_ops)
        self.trace.events.extend(events)

    def _event(self, m: re.Match[bytes], line_no: int, payload: _Span) -> Event | None:
        """One envelope (and the payload lines after it) as an event; None for a string-table
        entry, a kind the policy does not build, or a bad line (counted as such)."""
        policy, raw = self.policy, m.group(3)
        km = _KIND.match(raw)
        kind = km.group(1) if km else None
        if kind == b"chromium_event":  # the most frequent kind, never needed: no JSON
            self.good += 1
            if policy is None:
                return ChromiumEvent(line_no, m.group(1).decode(), m.group(2).decode(), None, None)
            return None
        if (
            policy is not None
            and kind is not None
            and kind != b"dynamo_start"
            and not policy.builds(kind.decode())
            and raw.endswith(b"}")
        ):
            self.good += 1  # a kind no selected rule reads: not even parsed
            return None
        if kind in _LAZY_KINDS and raw.endswith(b"}"):
            return self._lazy_event(m, kind, line_no, payload)
        meta = (
            _head_meta(raw)
            if kind in self.head_only
            else _stack_meta(raw)
            if kind in self.stack_kinds
            else None
        )
        if meta is None:
            try:
                meta = loads(raw)
            except ValueError as exc:
                self._bad(line_no, raw, f"bad JSON: {exc}")
                return None
        return self._json_event(m, meta, line_no, payload)

    def _lazy_event(self, m: re.Match[bytes], kind: bytes, line_no: int, payload: _Span) -> Event:
        """A kind whose metadata is decoded only when a rule reads it."""
        raw = m.group(3)
        meta = _tail_meta(raw)
        common: dict[str, Any] = {
            "line_no": line_no,
            "timestamp": m.group(1).decode(),
            "emitter": m.group(2).decode(),
            "compile_id": self._compile_id(meta),
            "rank": meta.get("rank"),
            "raw_payload": payload.bytes() if "has_payload" in meta else None,
        }
        name = kind.decode()
        self.good += 1
        if name == "compilation_metrics":
            return CompilationMetrics(**common, raw_meta=raw)
        return UnknownEvent(**common, name=name, raw_meta=raw)

    def _json_event(
        self, m: re.Match[bytes], meta: Any, line_no: int, payload: _Span
    ) -> Event | None:
        raw = m.group(3)
        if not isinstance(meta, dict):
            self._bad(line_no, raw, "metadata is not a JSON object")
            return None
        if "str" in meta and isinstance(meta["str"], list) and len(meta["str"]) == 2:
            text, sid = meta["str"]
            if isinstance(sid, int):
                self.trace.strings[sid] = str(text)
            self.good += 1
            return None
        names = [k for k in meta if k not in _ENVELOPE_KEYS]
        if not names:
            self._bad(line_no, raw, "no event kind")
            return None
        self.good += 1
        name = names[0]
        rank = meta.get("rank")
        common = {
            "line_no": line_no,
            "timestamp": m.group(1).decode(),
            "emitter": m.group(2).decode(),
            "compile_id": self._compile_id(meta, name == "dynamo_start"),
            "rank": rank if isinstance(rank, int) else None,
            "raw_payload": payload.bytes() if "has_payload" in meta else None,
        }
        return _build(name, meta[name], common, self.resolver)

    # -- is this a trace at all ---------------------------------------------------------------
    def check(self, final: bool) -> None:
        t = self.trace
        if not t.malformed_count:
            return
        first = t.malformed[0]
        where = f"line {first.line_no}: {first.text[:80]!r} ({first.error})"
        if final and self.good == 0:
            raise TraceFormatError(
                f"{t.source}: not a TORCH_TRACE log: no line is a trace event (first bad {where})."
                f" TORCH_TRACE writes lines like `{_EXAMPLE}`; pass the .log file it wrote"
            )
        if t.malformed_count >= GARBAGE_MIN and t.malformed_count > self.good:
            raise TraceFormatError(
                f"{t.source}: not a TORCH_TRACE log: {t.malformed_count} of the first "
                f"{self.lines} lines are not trace events, {self.good} are (first bad {where})"
            )

    def finish(self) -> Trace:
        t = self.trace
        t.torch_version = _torch_version(t)
        return t


def _torch_version(trace: Trace) -> str | None:
    for a in trace.artifacts(TORCH_VERSION):
        p = a.payload_json()
        if isinstance(p, dict) and isinstance(p.get("pytorch_version"), str):
            return p["pytorch_version"]
    for m in trace.of(CompilationMetrics):
        v = m.metrics.get("pytorch_version")
        if isinstance(v, str) and v:
            return v
    return None


def _cut(buf: bytes) -> int:
    """Where the last event of `buf` starts (the newline before its envelope line): what
    comes before it is whole events, an envelope and all its tab-indented payload lines. 0
    when there is none yet. A newline that ends `buf` is no cut: payload may follow."""
    end = len(buf) - 1
    while True:
        i = buf.rfind(b"\n", 0, end)
        if i <= 0:
            return 0
        if buf[i + 1 : i + 2] != b"\t":
            return i
        end = i


def parse_bytes(data: bytes, source: str = "<memory>", *, strict: bool = False) -> Trace:
    """Parse a whole trace held in memory. Lenient by default: never raises on bad input
    (bad lines become `MalformedLine` records); `strict=True` raises `TraceFormatError` on
    input that is not a trace log."""
    reader = _Reader(source, None)
    gc_was_on = gc.isenabled()
    gc.disable()  # many small objects, no cycles: the collector would only rescan them
    try:
        data = b"\n" + data
        reader.feed(data, len(data))
    finally:
        if gc_was_on:
            gc.enable()
    if strict:
        reader.check(final=True)
    return reader.finish()


def parse_stream(
    fh: Any,
    source: str = "<stream>",
    *,
    slim: bool = True,
    policy: Policy | None = None,
    chunk_size: int = CHUNK,
    progress: Callable[[int], Any] | None = None,
    strict: bool = True,
) -> Trace:
    """Parse a trace from a binary file object chunk by chunk (working memory: one chunk plus
    what the policy keeps). `slim=True` keeps what `policy` says (what every rule family reads
    by default, `slim.DEFAULT`, when None); `slim=False` keeps everything.
    `progress(bytes_read)` is called after every chunk. A last line without its newline (a job
    killed while writing) sets `trace.truncated_line`.
    `strict` raises `TraceFormatError` / `TraceReadError` on bad input (see the module doc)."""
    if slim and policy is None:
        policy = DEFAULT
    reader = _Reader(source, policy if slim else None)
    trace = reader.trace
    buf = b"\n"  # every line the reader sees follows a newline: the first one too
    done = 0
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        while True:
            try:
                block = fh.read(chunk_size)
            except (EOFError, OSError, zlib.error) as exc:
                raise TraceReadError(
                    f"{source}: cannot read past byte {done:,} of the log{_compressed_at(fh)} "
                    f"({exc}): the file is cut short or corrupt. Copy it again, or keep what is "
                    f"readable with `gzip -dc FILE > part.log` and audit part.log"
                ) from None
            done += len(block)
            if block:
                buf += block
                cut = _cut(buf)
                if cut == 0:
                    _check_sizes(buf, source, reader.lines, done)
                    continue  # one event bigger than a chunk: read on
            else:
                cut = len(buf)
                if len(buf) > 1 and not buf.endswith(b"\n"):
                    trace.truncated_line = reader.lines + buf.count(b"\n")
            reader.feed(buf, cut)
            buf = buf[cut:]
            if strict:
                reader.check(final=False)
            if progress is not None:
                progress(done)
            if not block:
                break
    finally:
        if gc_was_on:
            gc.enable()
    trace.bytes_read = done
    if strict:
        reader.check(final=True)
    return reader.finish()


def _compressed_at(fh: Any) -> str:
    """Where a gzip file object's compressed stream broke: " (compressed: byte N of M)"."""
    raw: Any = getattr(fh, "fileobj", None)
    try:
        at = raw.tell()
        size = os.fstat(raw.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return ""
    return f" (compressed: byte {at:,} of {size:,})"


def _check_sizes(buf: bytes, source: str, lines: int, done: int) -> None:
    """Bounded memory: an unfinished line or event past the caps is an error, not a read on."""
    last = buf.rfind(b"\n")
    if len(buf) - last - 1 > MAX_LINE:
        line = lines + buf.count(b"\n")
        raise TraceFormatError(
            f"{source}: not a TORCH_TRACE log: line {line} runs past {MAX_LINE >> 20} MiB "
            f"without a newline (at byte {done:,})"
        )
    if len(buf) > MAX_EVENT:
        raise TraceFormatError(
            f"{source}: one event at line {lines + 1} is over {MAX_EVENT >> 20} MiB with its "
            f"payload (at byte {done:,}); this reader does not hold events that large"
        )


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


def parse_file(path: str | Path, *, strict: bool = True) -> Trace:
    """Parse one TORCH_TRACE `.log` file (gzip accepted), keeping every event."""
    with open_trace(path) as fh:
        return parse_stream(fh, str(path), slim=False, strict=strict)


def read_bytes(path: str | Path) -> bytes:
    """A whole log in memory (decompressed): for tests and benchmarks."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a file; pass the .log file that TORCH_TRACE wrote")
    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data
