"""Parser throughput (not a test): `python -m arfuse.audit.bench [TRACE.log ...] [--mb 200]`.

Repeats the given trace logs (or a synthetic trace shaped like a real one: chromium events,
guards with deep stacks, graph payloads) up to --mb megabytes, parses them on one core, and
prints MB/s. The target is >= 100 MB/s.

`--stream GB[,GB...]` measures the offline audit's streaming path instead: it writes a
synthetic log of each size to disk (every 100 KB a new compile id: guards, a create_symbol, a
compilation_metrics line with a 20 KB config dump, graph payloads), then runs the whole
offline audit (`arfuse.audit.offline.load_traces` + `analyze`) on it in a fresh process and
prints its wall time, MB/s and peak RSS:

    python -m arfuse.audit.bench --stream 0.1,1 --dir /tmp
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arfuse.audit.trace import parse_bytes, read_bytes


def synthetic_chunk(guards: int = 3) -> bytes:
    """~100 KB with the byte mix of a real torch 2.13 Inductor trace (payloads ~75%, guard
    events ~3%); `--guard-heavy` makes every chunk carry 40 deep-stack guards instead."""
    lines = []
    for i in range(30):
        lines.append(f'V1127 14:36:18.496000 2893 torch/_logging/structured.py:28] '
                     f'{json.dumps({"str": [f"/venv/lib/python3.11/site-packages/torch/m{i}.py", i]})}')
    stack = [{"line": 100 + i, "name": f"fn{i}", "filename": i % 30, "loc": "x = y(z)"}
             for i in range(60)]
    for k in range(40):
        lines.append('V1127 14:36:18.497000 2893 torch/_dynamo/utils.py:2350] {"chromium_event": '
                     '{}, "frame_id": 0, "frame_compile_id": 0, "attempt": 0, "has_payload": "0"}')
        lines += ["\t{", '\t"name": "GraphLowering.run",', '\t"ts": 1795790178493527.0,',
                  '\t"args": {', '\t"compile_id": "0/0"', "\t},", '\t"ph": "B",', "\t}"]
        if k >= guards:
            continue
        meta = {"guard_added_fast": {"expr": f"s77 <= {k}", "user_stack": stack[-2:],
                                     "stack": stack}, "frame_id": 0, "frame_compile_id": 0,
                "attempt": 0}
        lines.append(f"V1127 14:36:18.743000 2893 torch/fx/experimental/symbolic_shapes.py:8058] "
                     f"{json.dumps(meta)}")
    lines.append('V1127 14:38:38.874000 3893 torch/_inductor/compile_fx.py:1404] {"artifact": '
                 '{"name": "inductor_post_grad_graph", "encoding": "string"}, "frame_id": 0, '
                 '"frame_compile_id": 0, "attempt": 0, "has_payload": "0"}')
    for n in range(400):
        lines.append(f"\t        # File: /m/model.py:{n} in forward, code: h = y + res")
        lines.append(f'\t        add_{n}: "f32[s77, 64][64, 1]cpu" = torch.ops.aten.add.Tensor('
                     f"wait_{n}, arg3_1);  wait_{n} = arg3_1 = None")
    lines.append('V1127 14:38:38.900000 3893 torch/_dynamo/guards.py:1] {"dynamo_cpp_guards_str": '
                 '{}, "frame_id": 0, "frame_compile_id": 0, "attempt": 0, "has_payload": "0"}')
    lines += [f"\t| | +- TENSOR_MATCH: check_tensor(L['x'], Tensor, size=[s{n}, 64])"
              for n in range(300)]
    return ("\n".join(lines) + "\n").encode()


def stream_chunk(index: int) -> bytes:
    """`synthetic_chunk` as compile `[index // 8 / index % 8]` of its own, with what a real
    compile also logs: the dynamic size's create_symbol and a compilation_metrics line."""
    cid = f'"frame_id": {index // 8}, "frame_compile_id": {index % 8}, "attempt": 0'
    body = synthetic_chunk().replace(b'"frame_id": 0, "frame_compile_id": 0, "attempt": 0',
                                     cid.encode())
    sym = {"create_symbol": {"symbol": "s77", "val": str(16 + index % 4096), "vr": "[2, int_oo]",
                             "source": "L['x'].size()[0]",
                             "user_stack": [{"line": 10, "name": "forward", "filename": 1}]}}
    metrics = {"compilation_metrics": {"compile_id": f"{index // 8}/{index % 8}",
                                       "co_name": "forward", "co_filename": "/m/model.py",
                                       "co_firstlineno": 9, "guard_count": 3,
                                       "inductor_config": "x" * 20000}}
    head = (f"V1127 14:36:18.500000 2893 torch/fx/experimental/symbolic_shapes.py:1] "
            f"{json.dumps(sym)[:-1]}, {cid}}}\n").encode()
    tail = (f"V1127 14:36:19.500000 2893 torch/_dynamo/utils.py:1] "
            f"{json.dumps(metrics)[:-1]}, {cid}}}\n").encode()
    return head + body + tail


def _stream_child(path: str) -> None:
    import resource

    from arfuse.audit.api import analyze
    from arfuse.audit.offline import load_traces

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    traces, run = load_traces(path)
    parsed = time.perf_counter() - t0
    report = analyze(traces, run)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"parse_s": parsed, "audit_s": total, "peak_rss_mb": peak / 1024,
                      "rss_before_mb": base / 1024,
                      "events": sum(len(t.events) for t in traces.values()),
                      "findings": len(report.findings)}))


def stream_bench(sizes_gb: list[float], directory: Path) -> None:
    import os
    import subprocess
    import sys
    import tempfile

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
            proc = subprocess.run([sys.executable, "-m", "arfuse.audit.bench", "--stream-child",
                                   str(path)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mb = written / 1e6
            print(f"{mb:,.0f} MB synthetic log ({i} compiles, {r['events']} events kept): "
                  f"parse {r['parse_s']:.1f} s ({mb / r['parse_s']:.0f} MB/s), whole offline "
                  f"audit {r['audit_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(after imports {r['rss_before_mb']:.0f} MB), {r['findings']} finding(s)",
                  flush=True)


def main() -> None:
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--stream-child":
        _stream_child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--guard-heavy", action="store_true",
                    help="synthetic worst case: 40 deep-stack guard events per 100 KB")
    ap.add_argument("--stream", metavar="GB[,GB]",
                    help="measure the offline audit's streaming path on synthetic logs of these "
                         "sizes (written to --dir) in a fresh process: time and peak RSS")
    ap.add_argument("--dir", type=Path, default=None, help="where --stream writes its logs")
    args = ap.parse_args()
    if args.stream:
        stream_bench([float(x) for x in args.stream.split(",")], args.dir or Path("/tmp"))
        return
    chunk = (b"".join(read_bytes(f) for f in args.files) if args.files
             else synthetic_chunk(40 if args.guard_heavy else 3))
    data = chunk * max(1, int(args.mb * 1e6 / len(chunk)))
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        trace = parse_bytes(data)
        best = min(best, time.perf_counter() - t0)
    mb = len(data) / 1e6
    print(f"parsed {mb:.0f} MB ({len(trace.events)} events, {len(trace.malformed)} malformed) "
          f"in {best:.2f} s: {mb / best:.0f} MB/s (one core, best of {args.repeat})")


if __name__ == "__main__":
    main()
