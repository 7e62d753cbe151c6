"""Parser throughput (not a test): `python -m arfuse.audit.bench [TRACE.log ...] [--mb 200]`.

Repeats the given trace logs (or a synthetic trace shaped like a real one: chromium events,
guards with deep stacks, graph payloads) up to --mb megabytes, parses them on one core, and
prints MB/s. The target is >= 100 MB/s.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--guard-heavy", action="store_true",
                    help="synthetic worst case: 40 deep-stack guard events per 100 KB")
    args = ap.parse_args()
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
