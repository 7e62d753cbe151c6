"""Host overhead of `arfuse.compile`'s range dispatch versus plain `torch.compile`.

    python -m arfuse.bench.dispatch [--ranges 4,16,64,256] [--calls 2000]

Times a tiny RMSNorm function (so the compiled kernel is negligible) called through both, in
interleaved rounds, taking each one's fastest round; prints microseconds per call and the
difference. Inside a CUDA-graph replay
the dispatch costs nothing: it runs once, at capture.
"""

from __future__ import annotations

import argparse
import time

import torch


def _rms(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), None, 1e-6)


def measure(splits: list[int], calls: int = 2000, rounds: int = 7) -> dict[str, float]:
    import arfuse

    plain = torch.compile(_rms)
    ranged = arfuse.compile(_rms, ranges=splits)
    x = torch.randn(8, 64)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    fns = {"torch.compile": plain, "arfuse.compile": ranged}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for n in (8, 9, 3, 100):  # capture and warm every path first
                fn(torch.randn(n, 64))
        for _ in range(rounds):  # interleaved, so background load hits both alike
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                samples[name].append((time.perf_counter() - start) / calls * 1e6)
    # the fastest round: the least disturbed by other processes on the machine
    out = {name: min(values) for name, values in samples.items()}
    out["overhead"] = out["arfuse.compile"] - out["torch.compile"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", default="4,16,64,256", help="split points")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    splits = [int(s) for s in args.ranges.split(",") if s.strip()]
    r = measure(splits, args.calls)
    print(f"torch.compile:  {r['torch.compile']:.1f} us per call")
    print(f"arfuse.compile: {r['arfuse.compile']:.1f} us per call ({len(splits) + 1} ranges)")
    print(
        f"dispatch overhead: {r['overhead']:.1f} us per call "
        f"(fastest of 7 rounds x {args.calls} calls)"
    )


if __name__ == "__main__":
    main()
