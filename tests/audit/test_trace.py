"""The trace parser: real torch 2.11 and 2.13 logs, and anything else thrown at it."""

import gzip
import io
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arfuse.audit.api import analyze
from arfuse.audit.trace.reader import (
    TraceFormatError,
    TraceReadError,
    parse_bytes,
    parse_file,
    parse_stream,
    read_bytes,
)
from arfuse.audit.trace.records import (
    ChromiumEvent,
    CompilationMetrics,
    CompileId,
    CreateSymbol,
    GuardAddedFast,
    MalformedLine,
    SymbolicShapeSpecialization,
    UnknownEvent,
)

DATA = Path(__file__).resolve().parent / "data"
VERSIONS = ["2.11.0", "2.13.0"]


def _env(
    kind: str, body: dict, *, frame=0, fcid=0, payload: str | None = None, rank: int | None = None
) -> bytes:
    meta = {kind: body, "frame_id": frame, "frame_compile_id": fcid, "attempt": 0}
    if rank is not None:
        meta["rank"] = rank
    if payload is not None:
        meta["has_payload"] = "0" * 32
    line = f"V1127 14:36:18.743000 2893 torch/x.py:1] {json.dumps(meta)}\n"
    if payload is not None:
        line += "".join(f"\t{p}\n" for p in payload.split("\n"))
    return line.encode()


@pytest.mark.parametrize("version", VERSIONS)
def test_real_logs_parse_completely(version):
    trace = parse_file(DATA / f"torch-{version}-branch.log.gz")
    assert trace.malformed == []
    guards = [g.expr for g in trace.of(GuardAddedFast)]
    assert "s77 <= 2048" in guards and "Eq(Mod(s77, 4), 0)" in guards
    (sym, *_) = list(trace.of(CreateSymbol))
    assert sym.source == "L['x'].size()[0]" and sym.symbol == "s77"
    # file ids resolve through the string table
    g = next(trace.of(GuardAddedFast))
    assert g.user_stack[-1].filename.endswith("capture_trace_fixtures.py")
    assert g.user_stack[-1].loc.startswith("y = x * 2 if n <= 2048")
    assert CompileId(0, 1) in trace.compile_ids()
    assert any(isinstance(e, ChromiumEvent) for e in trace.events)
    assert {e.name for e in trace.of(UnknownEvent)} >= {"describe_tensor"}  # kept, not dropped


@pytest.mark.parametrize("version", VERSIONS)
def test_real_logs_payloads_and_metrics(version):
    trace = parse_file(DATA / f"torch-{version}-eq_strict.log.gz")
    failed = [m for m in trace.of(CompilationMetrics) if m.fail_type]
    assert [m.fail_type for m in failed] == ["ConstraintViolationError"]
    assert "specialized it to be a constant (16)" in failed[0].fail_reason
    (spec,) = list(trace.of(SymbolicShapeSpecialization))
    assert spec.value == "16" and spec.sources == ("L['x'].size()[0]",)
    reasons = [a.payload_json() for a in trace.artifacts("recompile_reasons")]
    assert reasons and all(isinstance(r, (list, str)) for r in reasons)


@pytest.mark.parametrize("version", VERSIONS)
def test_real_logs_inductor_post_grad_graph(version):
    trace = parse_file(DATA / f"torch-{version}-funcol_inductor.log.gz")
    (graph,) = list(trace.artifacts("inductor_post_grad_graph"))
    assert "_c10d_functional.all_reduce" in graph.payload
    assert not graph.payload.startswith("\t") and "\n\t" not in graph.payload
    assert trace.ranks == {0}


def test_compile_id_parse_and_str():
    assert CompileId.parse("[0/1]") == CompileId(0, 1)
    assert CompileId.parse("3/4_1") == CompileId(3, 4, 1)
    assert str(CompileId(3, 4, 1)) == "3/4_1"
    assert str(CompileId(0, 2, 0, 5)) == "!5/0/2"
    assert CompileId.parse("nonsense") is None


def test_truncated_last_line_and_garbage_are_kept_as_malformed():
    data = (
        _env("guard_added_fast", {"expr": "s0 <= 8"})
        + b"garbage line here\n"
        + _env("guard_added_fast", {"expr": "s0 > 8"})
        + b'V1127 14:36:18.7 1 x.py:1] {"guard_added'
    )
    trace = parse_bytes(data)
    assert [g.expr for g in trace.of(GuardAddedFast)] == ["s0 <= 8", "s0 > 8"]
    assert len(trace.malformed) == 2
    assert trace.malformed[0].text == "garbage line here" and trace.malformed[0].line_no == 2
    assert trace.malformed[1].line_no == 4


def test_huge_payload_is_sliced_not_copied_line_by_line():
    big = "x" * 5_000_000
    data = _env(
        "artifact",
        {"name": "inductor_post_grad_graph", "encoding": "string"},
        payload=big + "\nsecond line",
    ) + _env("guard_added_fast", {"expr": "s0 < 3"})
    trace = parse_bytes(data)
    (art,) = list(trace.artifacts("inductor_post_grad_graph"))
    assert art.payload == big + "\nsecond line"
    assert next(trace.of(GuardAddedFast)).line_no == 4


def test_missing_string_id_and_unknown_kind():
    data = _env(
        "guard_added_fast",
        {"expr": "s0 <= 8", "user_stack": [{"line": 3, "name": "f", "filename": 99}]},
    ) + _env("brand_new_event", {"a": 1})
    trace = parse_bytes(data)
    g = next(trace.of(GuardAddedFast))
    assert g.user_stack[0].filename == "<unknown file #99>"
    (u,) = list(trace.of(UnknownEvent))
    assert u.name == "brand_new_event" and u.metadata == {"a": 1}


def test_gzip_and_non_file_errors(tmp_path):
    p = tmp_path / "t.log.gz"
    p.write_bytes(gzip.compress(_env("guard_added_fast", {"expr": "s1 > 2"})))
    assert [g.expr for g in parse_file(p).of(GuardAddedFast)] == ["s1 > 2"]
    with pytest.raises(ValueError, match="pass the .log file"):
        parse_file(tmp_path)


_events = st.lists(
    st.tuples(
        st.sampled_from(
            ["guard_added_fast", "create_symbol", "artifact", "compilation_metrics", "mystery"]
        ),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
        st.integers(0, 3),
        st.integers(0, 5),
        st.one_of(st.none(), st.text(max_size=200)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_events)
def test_fuzz_generated_events_roundtrip(events):
    data = b""
    for kind, text, frame, fcid, payload in events:
        body = (
            {"expr": text}
            if kind == "guard_added_fast"
            else {"name": text, "encoding": "string"}
            if kind == "artifact"
            else {"x": text}
        )
        data += _env(kind, body, frame=frame, fcid=fcid, payload=payload)
    trace = parse_bytes(data)
    assert trace.malformed == []
    assert len(trace.events) == len(events)
    for e, (kind, text, frame, fcid, payload) in zip(trace.events, events, strict=True):
        assert e.compile_id == CompileId(frame, fcid)
        if kind == "guard_added_fast":
            assert e.expr == text
        if payload is not None:
            assert e.payload == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2000))
def test_fuzz_arbitrary_bytes_never_raise(noise, cut):
    real = _env("guard_added_fast", {"expr": "s0 <= 4"}, payload="p")
    data = real + noise + real[: cut % (len(real) + 1)]
    trace = parse_bytes(data)
    assert trace.events and isinstance(trace.events[0], GuardAddedFast)
    assert all(isinstance(m, MalformedLine) for m in trace.malformed)


def test_rank_prefixed_lines_and_first_line_envelope():
    # stderr-style logs prefix each line with "[rankN]:"; the very first line is an event too
    line = _env("guard_added_fast", {"expr": "s0 >= 3"}, rank=1).decode()
    data = ("[rank1]:" + line + line).encode()
    trace = parse_bytes(data)
    assert [g.expr for g in trace.of(GuardAddedFast)] == ["s0 >= 3", "s0 >= 3"]
    assert [g.line_no for g in trace.of(GuardAddedFast)] == [1, 2]
    assert trace.ranks == {1} and trace.malformed == []


# -- properties of the streaming reader on recorded logs (issue 13) ------------------------------

FIXTURE = read_bytes(DATA / "torch-2.13.0-branch.log.gz")
_LINES = FIXTURE.split(b"\n")
# envelope lines of kinds no rule reads (the reader skips them; mutating one changes nothing)
_UNREAD_KINDS = (
    b'{"chromium_event"',
    b'{"describe_storage"',
    b'{"dynamo_cpp_guards_str"',
    b'{"dynamo_output_graph"',
)
_UNREAD = [i for i, line in enumerate(_LINES) if any(k in line[:200] for k in _UNREAD_KINDS)]
# the end of the last line a rule reads: cutting the log after it loses no evidence
_LAST_READ = max(
    i
    for i, line in enumerate(_LINES)
    if any(
        k in line[:200]
        for k in (
            b'{"guard_added_fast"',
            b'{"artifact"',
            b'{"compilation_metrics"',
            b'{"create_symbol"',
            b'{"symbolic_shape_specialization"',
        )
    )
)
_EVIDENCE_END = sum(len(line) + 1 for line in _LINES[: _LAST_READ + 1])


def _keys(trace):
    return sorted((f.code, f.line) for f in analyze({0: trace}).findings)


FULL = _keys(parse_bytes(FIXTURE))


def _read(data, chunk):
    """The strict streaming reader: a trace, or None for a clean refusal (exit 2)."""
    try:
        return parse_stream(io.BytesIO(data), "fuzz.log", chunk_size=chunk)
    except (TraceFormatError, TraceReadError):
        return None


_chunks = st.sampled_from([997, 1 << 16, 16 << 20])


def test_fixture_facts():
    assert len(FULL) == 4 and len(_UNREAD) > 20 and 0 < _EVIDENCE_END < len(FIXTURE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20_000), _chunks)
def test_arbitrary_bytes_are_refused_or_read_in_bounded_memory(data, chunk):
    tracemalloc.start()
    try:
        trace = _read(data, chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + (1 << 20)
    if trace is not None:
        assert len(trace.malformed) <= trace.malformed_count


@settings(max_examples=60, deadline=None)  # each runs every rule (~0.1 s)
@given(st.integers(0, len(FIXTURE)), _chunks)
def test_truncations_never_crash_and_keep_findings(cut, chunk):
    trace = _read(FIXTURE[:cut], chunk)
    if cut >= _EVIDENCE_END:
        assert trace is not None and _keys(trace) == FULL  # never a PASS
    if trace is not None:  # a line cut short is reported as such, whole lines are not
        cut_short = not FIXTURE[:cut].endswith(b"\n") and cut > 0
        assert (trace.truncated_line is not None) == cut_short


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(_UNREAD),
    st.sampled_from(["delete", "duplicate", "garble"]),
    st.binary(min_size=1, max_size=200),
    _chunks,
)
def test_mutating_lines_no_rule_reads_never_turns_findings_into_a_pass(i, op, junk, chunk):
    lines = list(_LINES)
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    else:
        lines[i] = junk
    trace = _read(b"\n".join(lines), chunk)
    assert trace is None or _keys(trace) == FULL  # refused (exit 2) or the same findings


@pytest.mark.parametrize(
    "frames",
    [
        [{"line": 3, "name": "f", "filename": 1, "loc": 'a = b["stack"]  # ], "stack": ['}],
        [
            {"name": "f", "line": 3, "filename": 1},
            {"line": 4, "name": "g", "filename": 1, "loc": None, "extra": [1]},
        ],
        [],
    ],
)
def test_stacks_read_as_bytes_equal_the_json_parse(frames):
    strings = 'V1127 14:36:18.743000 1 x.py:1] {"str": ["/m/model.py", 1]}\n'
    for order in (("user_stack", "stack"), ("stack", "user_stack")):
        body = {"symbol": "s0", "sources": ["L['x'].size()[0]"], "value": "8"}
        body.update({order[0]: frames, order[1]: frames[::-1]})
        data = (
            strings + f"V1127 14:36:18.743000 1 x.py:1] "
            f"{json.dumps({'symbolic_shape_specialization': body, 'frame_id': 0})}\n"
        ).encode()
        full = next(parse_bytes(data).of(SymbolicShapeSpecialization))
        streamed = next(parse_stream(io.BytesIO(data)).of(SymbolicShapeSpecialization))
        assert streamed.user_stack == full.user_stack and streamed.stack == full.stack
        assert len(full.user_stack) == len(frames) and streamed.value == "8"


def test_json_the_fast_parser_rejects_still_parses():
    # torch's json.dumps writes NaN/Infinity and big ints; orjson refuses them, the stdlib not
    data = _env("compilation_metrics", {"fail_type": "E", "x": float("nan"), "n": 2**70}) + _env(
        "guard_added_fast", {"expr": "s0 < oo", "weight": float("inf")}
    )
    assert b"NaN" in data and b"Infinity" in data
    for trace in (parse_bytes(data), parse_stream(io.BytesIO(data))):
        assert next(trace.of(CompilationMetrics)).fail_type == "E"
        assert next(trace.of(GuardAddedFast)).expr == "s0 < oo" and trace.malformed_count == 0
