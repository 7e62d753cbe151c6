"""Bad input to the offline audit (issue 13): exit 2 and a message naming the file and the
line or offset, memory that stays bounded, and nothing half-written."""

import errno
import gzip
import io
import json
import os
import random
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from arfuse.audit.cli import audit as audit_cmd
from arfuse.audit.findings import Finding, Location
from arfuse.audit.paths import atomic_write, sarif_location
from arfuse.audit.report.model import Report
from arfuse.audit.trace.reader import (
    CHUNK,
    GARBAGE_MIN,
    MALFORMED_KEPT,
    MAX_LINE,
    TraceFormatError,
    parse_stream,
)
from arfuse.audit.trace.sources import plain_log

DATA = Path(__file__).resolve().parent / "data"
BRANCH = DATA / "torch-2.13.0-branch.log.gz"
GOOD = (
    'V1127 14:36:18.743000 1 torch/fx/experimental/symbolic_shapes.py:1] {"guard_added_fast": '
    '{"expr": "s0 <= 8"}, "frame_id": 0, "frame_compile_id": 0, "attempt": 0}\n'
)


def _audit(*args):
    res = CliRunner().invoke(audit_cmd, [*map(str, args), "--no-progress"])
    return res.exit_code, res.output


def test_random_bytes_are_not_a_trace(tmp_path):
    log = tmp_path / "g.log"
    log.write_bytes(random.Random(0).randbytes(2 << 20))
    code, out = _audit("--trace", log)
    assert code == 2, out
    assert f"{log}: not a TORCH_TRACE log" in out and "line 1" in out


def test_garbage_lines_are_not_a_trace(tmp_path):
    log = tmp_path / "g.log"
    log.write_bytes(b"\n\nhello, this is not a trace\n" * 200_000)
    code, out = _audit("--trace", log)
    assert code == 2, out
    assert "not a TORCH_TRACE log" in out and "line 3: 'hello, this is not a trace'" in out


def test_truncated_gzip_names_file_and_offset(tmp_path):
    data = BRANCH.read_bytes()
    log = tmp_path / "cut.log.gz"
    log.write_bytes(data[: len(data) // 2])
    code, out = _audit("--trace", log)
    assert code == 2, out
    assert f"{log}: cannot read past byte " in out and "cut short or corrupt" in out
    half = len(data) // 2
    assert f"(compressed: byte {half:,} of {half:,})" in out


def _zeros_gz(path: Path, mib: int) -> None:
    block = b"\0" * (1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for _ in range(mib):
            fh.write(block)


def test_gz_of_zeros_without_newline_stays_bounded(tmp_path):
    log = tmp_path / "zeros.log.gz"
    _zeros_gz(log, (MAX_LINE >> 20) + 40)  # past the line cap (2 GiB in the report: the same)
    from arfuse.audit.offline import load_traces

    tracemalloc.start()
    try:
        with pytest.raises(TraceFormatError, match="line 1 runs past 64 MiB without a newline"):
            load_traces(log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE, f"peak {peak >> 20} MiB"
    code, out = _audit("--trace", log)
    assert code == 2 and "not a TORCH_TRACE log" in out


class _BadJsonForever(io.RawIOBase):
    """1 GiB of envelope lines with broken JSON, produced as read (never held whole)."""

    def __init__(self) -> None:
        self.line = b'V1127 14:36:18.743000 1 torch/x.py:1] {"guard_added_fast": {"expr": \n'
        self.left, self.served = 1 << 30, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n, self.left)
        out = (self.line * (n // len(self.line) + 1))[:n]
        self.left -= n
        self.served += n
        return out


def test_mostly_bad_json_stops_early():
    fh = _BadJsonForever()
    with pytest.raises(
        TraceFormatError,
        match=r"not a TORCH_TRACE log: \d+ of the first \d+ "
        r"lines are not trace events, 0 are",
    ):
        parse_stream(fh, "bad.log")
    assert fh.served <= 2 * CHUNK  # one chunk, not the whole gigabyte


def test_a_few_bad_lines_are_counted_and_records_capped(tmp_path):
    lines = [GOOD] * 300 + ['V1127 14:36:18.743000 1 torch/x.py:1] {"broken": \n'] * 150
    random.Random(1).shuffle(lines)
    trace = parse_stream(io.BytesIO("".join(lines).encode()), "few.log")
    assert trace.malformed_count == 150 and len(trace.malformed) == MALFORMED_KEPT
    log = tmp_path / "few.log"
    log.write_text("".join(lines))
    code, out = _audit("--trace", log, "--format", "json")
    assert code == 0, out  # no dynamic size in these lines: nothing to find, but a note
    assert (
        "150 trace line(s) were not events (truncated or garbage); skipped"
        in json.loads(out)["summary"]["notes"]
    )
    many = [GOOD] * 10 + ["junk\n"] * (GARBAGE_MIN + 1)
    with pytest.raises(
        TraceFormatError,
        match=r"\d+ of the first \d+ lines are not trace "
        r"events, 10 are \(first bad line 11: 'junk'",
    ):
        parse_stream(io.BytesIO("".join(many).encode()), "many.log")


def test_html_extraction_streams_a_tarball_member(tmp_path):
    member = tmp_path / "big.log"
    with member.open("wb") as fh:
        for _ in range(48):
            fh.write(GOOD.encode() * ((1 << 20) // len(GOOD)))
    tarball = tmp_path / "job.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        tar.add(member, arcname="trace/rank_0.log")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    tracemalloc.start()
    try:
        out = plain_log(f"{tarball}:trace/rank_0.log", out_dir)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.read_bytes() == member.read_bytes()
    assert peak < 8 << 20, f"peak {peak >> 20} MiB for a {member.stat().st_size >> 20} MiB member"


def test_baseline_of_the_wrong_shape_names_the_file(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text('{"version": 1, "findings": [1, "x"]}')
    code, out = _audit("--trace", BRANCH, "--baseline", bad)
    assert code == 2, out
    assert f"baseline {bad}: findings[0] (1) is not a baseline entry: not an object" in out
    bad.write_bytes(b"\xff\xfe not utf-8")
    code, out = _audit("--trace", BRANCH, "--baseline", bad)
    assert code == 2 and f"baseline {bad}: not UTF-8 text (byte 0); regenerate it with" in out
    bad.write_text('{"version": 1,')
    code, out = _audit("--trace", BRANCH, "--baseline", bad)
    assert code == 2 and f"baseline {bad}: not valid JSON (Expecting" in out


def test_run_json_of_the_wrong_shape_names_the_file(tmp_path):
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "rank_0.log").write_bytes(gzip.decompress(BRANCH.read_bytes()))
    for text, why in (
        ("[1, 2, 3]", "a JSON list, not an object"),
        ('{"sizes": "big"}', "'sizes' is not a JSON list"),
        ("{not json", "not valid JSON"),
    ):
        (tmp_path / "run.json").write_text(text)
        code, out = _audit("--trace", tmp_path)
        assert code == 2, out
        assert f"{tmp_path / 'run.json'}: " in out and why in out


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "baseline.json"
    target.write_text("old, whole\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, "new" * 1000)
    assert target.read_text() == "old, whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json"]  # no temp left


@pytest.mark.parametrize("flag", ["--write-baseline", "-o", "--also"])
def test_unwritable_outputs_fail_before_the_audit(tmp_path, flag):
    blocker = tmp_path / "file"
    blocker.write_text("")
    where = blocker / "out.json"
    value = f"json={where}" if flag == "--also" else str(where)
    code, out = _audit("--trace", BRANCH, flag, value)
    assert code == 2, out
    assert f"{where} cannot be written: {blocker} is not a directory" in out


def test_outputs_are_written_whole(tmp_path):
    out = tmp_path / "sub" / "report.json"
    code, _ = _audit(
        "--trace", BRANCH, "--format", "json", "-o", out, "--also", f"sarif={tmp_path / 'r.sarif'}"
    )
    assert code == 1
    assert json.loads(out.read_text())["findings"]
    assert json.loads((tmp_path / "r.sarif").read_text())["version"] == "2.1.0"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_sarif_uris_are_rfc3986_and_repo_relative(tmp_path):
    odd = tmp_path / "my models" / "v2#final?.py"
    f = Finding("ARF102", "num-tokens-range-guard", "m", Location(str(odd), 3))
    other = Finding("ARF102", "num-tokens-range-guard", "m", Location("/opt/x y/m.py", 4))
    sarif = json.loads(Report([f, other]).render("sarif", root=tmp_path))
    driver = sarif["runs"][0]["tool"]["driver"]
    assert driver["version"] and driver["version"][0].isdigit()
    locs = [
        r["locations"][0]["physicalLocation"]["artifactLocation"]
        for r in sarif["runs"][0]["results"]
    ]
    assert locs == [
        {"uri": "my%20models/v2%23final%3F.py", "uriBaseId": "%SRCROOT%"},
        {"uri": "file:///opt/x%20y/m.py"},
    ]
    site = "/venv/lib/python3.11/site-packages/torch/_inductor/ir.py"
    assert sarif_location(site, tmp_path) == {"uri": "torch/_inductor/ir.py"}


def test_rank_logs_of_different_torch_versions_get_a_note(tmp_path):
    (r0,) = (DATA / "ranks-divergent-torch-2.11.0").glob("*rank_0*.log.gz")
    (r1,) = (DATA / "ranks-divergent-torch-2.13.0").glob("*rank_1*.log.gz")
    for src in (r0, r1):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    code, out = _audit("--trace", tmp_path, "--format", "json")
    notes = json.loads(out)["summary"]["notes"]
    assert any(
        "different torch versions (torch 2.11.0+cu130 on rank(s) 0; torch 2.13.0+cpu "
        "on rank(s) 1)" in n
        for n in notes
    ), notes


def test_a_huge_run_json_is_refused_unread(tmp_path, monkeypatch):
    import arfuse.audit.trace.sources as sources

    monkeypatch.setattr(sources, "_RUN_JSON_MAX", 1000)  # the real cap is 64 MiB
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "rank_0.log").write_bytes(gzip.decompress(BRANCH.read_bytes()))
    (tmp_path / "run.json").write_text('{"notes": ["' + "x" * 5000 + '"]}')
    code, out = _audit("--trace", tmp_path)
    assert code == 2 and f"{tmp_path / 'run.json'}: over 1,000 bytes" in out
