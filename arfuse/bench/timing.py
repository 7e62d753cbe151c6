"""Timing one step function the way collective kernels must be timed.

GPU: `n_inner` calls over rotating buffers captured in one CUDA graph (host overhead and launch
gaps out of the picture, caches not warm from the previous call), eager warm-up first (which
also triggers torch.compile), a few warm replays, then the median over `reps` replays timed
with CUDA events. CPU (gloo, for smoke runs): the same loop eagerly with perf_counter.
Every rank times; the caller reports the slowest rank's median (`slowest`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist


def slowest(value_us: float, group: dist.ProcessGroup, device: torch.device) -> float:
    """The largest value over the ranks of `group`."""
    t = torch.tensor([value_us], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t.item())


def time_cuda_graph(
    step: Callable[[int], None],
    buffers: int,
    group: dist.ProcessGroup,
    n_inner: int = 16,
    reps: int = 30,
    warm_replays: int = 3,
    refill: Callable[[], None] | None = None,
) -> float:
    """Median microseconds per `step(i)` call; `step(i)` uses buffer set i % buffers."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(buffers):
            step(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    dist.barrier(group=group)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the NCCL watchdog thread may query events while we capture
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for i in range(n_inner):
            step(i % buffers)
    torch.cuda.synchronize()
    dist.barrier(group=group)
    for _ in range(warm_replays):
        if refill:
            refill()
        graph.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for r in range(reps):
        if refill:
            refill()  # outside the timed region
        starts[r].record()
        graph.replay()
        ends[r].record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(
        s.elapsed_time(e) * 1000.0 / n_inner for s, e in zip(starts, ends, strict=True)
    )


def time_eager(
    step: Callable[[int], None],
    buffers: int,
    group: dist.ProcessGroup,
    n_inner: int = 4,
    reps: int = 5,
    refill: Callable[[], None] | None = None,
) -> float:
    """CPU fallback: median microseconds per call of eager loops (smoke runs only)."""
    for i in range(buffers):
        step(i)
    samples = []
    for _ in range(reps):
        if refill:
            refill()
        dist.barrier(group=group)
        start = time.perf_counter()
        for i in range(n_inner):
            step(i % buffers)
        samples.append((time.perf_counter() - start) * 1e6 / n_inner)
    return statistics.median(samples)
