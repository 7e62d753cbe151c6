"""Trace reader speed on real logs, side by side with tlparse (not a test):

    python -m tools.audit_bench LOG [LOG ...] [--mb 200] [--token-source SRC]

LOG is a TORCH_TRACE `.log` or `.log.gz` (several are concatenated; `--mb` repeats the result
up to that size). Writes the plain log to a temporary directory, then measures on it:

1. the reader alone, in this process: `parse_stream` keeping what every rule reads (what
   `arfuse audit --trace` does), best of `--repeat`, CPU seconds of this process -> MB/s per
   core (CPU time, so other load on the machine does not count), and wall seconds;
2. the whole command `python -m arfuse audit --trace LOG` in a fresh process (start-up,
   imports, parse, rules, report) and `tlparse LOG` on the same file, each the best of
   `--repeat` runs: wall and CPU seconds of each, and the ratio tlparse / arfuse.

`--stream GB[,GB]` instead writes synthetic logs of those sizes (a new compile id every
100 KB) and prints the whole offline audit's time and peak RSS: the memory bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _plain(files: list[Path], mb: float, out: Path) -> int:
    """Concatenate `files` (decompressed) into `out`, repeated up to `mb` MB; its size."""
    from arfuse.audit.trace.reader import open_trace

    with out.open("wb") as dst:
        for f in files:
            with open_trace(f) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    size = out.stat().st_size
    if mb and mb * 1e6 > size:
        one = out.read_bytes()
        with out.open("ab") as dst:
            while size + len(one) <= mb * 1e6:
                dst.write(one)
                size += len(one)
    return size


def _reader(path: Path, repeat: int) -> dict[str, float]:
    import gc

    from arfuse.audit.rules import all_rules
    from arfuse.audit.trace.reader import parse_stream
    from arfuse.audit.trace.slim import policy_for

    policy = policy_for(all_rules())
    best_cpu = best_wall = float("inf")
    events = 0
    for _ in range(repeat):
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        with path.open("rb") as fh:
            trace = parse_stream(fh, str(path), policy=policy)
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
        events = len(trace.events)
    return {"cpu": best_cpu, "wall": best_wall, "events": events}


def _child(cmd: list[str]) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rc": proc.returncode, "err": proc.stderr.strip()[-400:]}


def _tlparse() -> str | None:
    exe = shutil.which("tlparse") or str(Path(sys.executable).with_name("tlparse"))
    return exe if Path(exe).exists() or shutil.which(exe) else None


def compare(files: list[Path], mb: float, repeat: int, token_sources: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="arfuse-bench-") as tmp:
        log = Path(tmp) / "bench.log"
        size = _plain(files, mb, log)
        mbs = size / 1e6
        print(
            f"log: {mbs:.1f} MB from {', '.join(f.name for f in files)}"
            + (f" (repeated to {mb:g} MB)" if mb else ""),
            flush=True,
        )
        r = _reader(log, repeat)
        print(
            f"reader: {mbs / r['cpu']:.0f} MB/s per core ({r['cpu']:.2f} s CPU, "
            f"{r['wall']:.2f} s wall, best of {repeat}; {r['events']} events kept)",
            flush=True,
        )
        cmd = [
            sys.executable,
            "-m",
            "arfuse",
            "audit",
            "--trace",
            str(log),
            "--format",
            "json",
            "--no-progress",
        ]
        for s in token_sources:
            cmd += ["--token-source", s]
        # whole commands: best of `repeat` too (the first run also pays cold file caches)
        ours = min((_child(cmd) for _ in range(repeat)), key=lambda x: x["wall"])
        note = "" if ours["rc"] in (0, 1) else f" [exit {ours['rc']}: {ours['err']}]"
        print(
            f"arfuse audit --trace: {ours['wall']:.2f} s wall, {ours['cpu']:.2f} s CPU "
            f"(whole command, best of {repeat}){note}",
            flush=True,
        )
        exe = _tlparse()
        if exe is None:
            print("tlparse not found (pip install tlparse): no comparison")
            return
        tl = [exe, str(log), "-o", str(Path(tmp) / "tl"), "--overwrite", "--no-browser"]
        theirs = min((_child(tl) for _ in range(repeat)), key=lambda x: x["wall"])
        print(
            f"tlparse: {theirs['wall']:.2f} s wall, {theirs['cpu']:.2f} s CPU (best of {repeat})"
            + ("" if theirs["rc"] == 0 else f" [exit {theirs['rc']}]")
        )
        print(
            f"tlparse / arfuse: {theirs['wall'] / ours['wall']:.1f}x wall, "
            f"{theirs['cpu'] / ours['cpu']:.1f}x CPU (whole commands); tlparse CPU / arfuse "
            f"reader CPU: {theirs['cpu'] / r['cpu']:.1f}x"
        )


# -- the memory bound: synthetic logs of any size -------------------------------------------------


def stream_chunk(index: int) -> bytes:
    """~100 KB shaped like one compile of a real log: its create_symbol, guards with deep
    stacks, chromium events, a post-grad graph and a compilation_metrics line with a 20 KB
    config dump, all under compile id `[index // 8 / index % 8]`."""
    cid = {"frame_id": index // 8, "frame_compile_id": index % 8, "attempt": 0}
    head = "V1127 14:36:18.496000 2893 torch/_logging/structured.py:28] "
    lines = [
        head + json.dumps({"str": [f"/venv/lib/python3.11/site-packages/torch/m{i}.py", i]})
        for i in range(30)
    ]
    lines.append(
        head
        + json.dumps(
            {
                "create_symbol": {
                    "symbol": "s77",
                    "val": str(16 + index % 4096),
                    "vr": "[2, int_oo]",
                    "source": "L['x'].size()[0]",
                    "user_stack": [{"line": 10, "name": "forward", "filename": 1}],
                },
                **cid,
            }
        )
    )
    stack = [
        {"line": 100 + i, "name": f"fn{i}", "filename": i % 30, "loc": "x = y(z)"}
        for i in range(60)
    ]
    for k in range(40):
        lines.append(head + json.dumps({"chromium_event": {}, **cid, "has_payload": "0"}))
        lines += ["\t{", '\t"name": "GraphLowering.run",', '\t"ph": "B"', "\t}"]
        if k < 3:
            lines.append(
                head
                + json.dumps(
                    {
                        "guard_added_fast": {
                            "expr": f"s77 <= {k}",
                            "user_stack": stack[-2:],
                            "stack": stack,
                        },
                        **cid,
                    }
                )
            )
    lines.append(
        head
        + json.dumps(
            {
                "artifact": {"name": "inductor_post_grad_graph", "encoding": "string"},
                **cid,
                "has_payload": "0",
            }
        )
    )
    for n in range(400):
        lines.append(f"\t        # File: /m/model.py:{n} in forward, code: h = y + res")
        lines.append(
            f'\t        add_{n}: "f32[s77, 64][64, 1]cpu" = torch.ops.aten.add.Tensor('
            f"wait_{n}, arg3_1);  wait_{n} = arg3_1 = None"
        )
    lines.append(
        head
        + json.dumps(
            {
                "compilation_metrics": {
                    "compile_id": f"{index // 8}/{index % 8}",
                    "co_name": "forward",
                    "co_filename": "/m/model.py",
                    "co_firstlineno": 9,
                    "inductor_config": "x" * 20000,
                },
                **cid,
            }
        )
    )
    return ("\n".join(lines) + "\n").encode()


def _stream_child(path: str) -> None:
    from arfuse.audit.api import analyze
    from arfuse.audit.offline import load_traces

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    traces, run = load_traces(path)
    parsed = time.perf_counter() - t0
    report = analyze(traces, run)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "parse_s": parsed,
                "audit_s": total,
                "peak_rss_mb": peak / 1024,
                "rss_before_mb": base / 1024,
                "events": sum(len(t.events) for t in traces.values()),
                "findings": len(report.findings),
            }
        )
    )


def stream_bench(sizes_gb: list[float], directory: Path) -> None:
    for gb in sizes_gb:
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            path = Path(tmp) / "dedicated_log_torch_trace_rank_0_synthetic.log"
            target, written, i = int(gb * 1e9), 0, 0
            with path.open("wb") as fh:
                while written < target:
                    chunk = stream_chunk(i)
                    fh.write(chunk)
                    written += len(chunk)
                    i += 1
            proc = subprocess.run(
                [sys.executable, "-m", "tools.audit_bench", "--stream-child", str(path)],
                cwd=Path(__file__).resolve().parents[1],
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mb = written / 1e6
            print(
                f"{mb:,.0f} MB synthetic log ({i} compiles, {r['events']} events kept): "
                f"parse {r['parse_s']:.1f} s ({mb / r['parse_s']:.0f} MB/s), whole offline "
                f"audit {r['audit_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(after imports {r['rss_before_mb']:.0f} MB), {r['findings']} finding(s)",
                flush=True,
            )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--stream-child":
        _stream_child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="TORCH_TRACE .log / .log.gz files")
    ap.add_argument(
        "--mb",
        type=float,
        default=0.0,
        help="repeat the logs up to this many MB (default: as they are)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="reader: best of N runs")
    ap.add_argument(
        "--token-source",
        action="append",
        default=[],
        help="passed to `arfuse audit --trace` (for logs of ambiguous token dims)",
    )
    ap.add_argument(
        "--stream",
        metavar="GB[,GB]",
        help="instead: the offline audit's time and peak RSS on synthetic logs of "
        "these sizes (written to --dir), each in a fresh process",
    )
    ap.add_argument("--dir", type=Path, default=None, help="where --stream writes its logs")
    args = ap.parse_args()
    if args.stream:
        stream_bench([float(x) for x in args.stream.split(",")], args.dir or Path("/tmp"))
        return
    if not args.files:
        ap.error(
            "pass TORCH_TRACE logs to measure (record one with "
            "tests/audit/tools/capture_hf_log.py, or use tests/audit/data/*.log.gz)"
        )
    missing = [f for f in args.files if not f.is_file()]
    if missing:
        ap.error(f"no such file: {missing[0]}")
    compare(args.files, args.mb, args.repeat, args.token_source)


if __name__ == "__main__":
    main()
