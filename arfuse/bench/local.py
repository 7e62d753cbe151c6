"""`arfuse bench --local-work`: the fused op's unfused branch vs plain Inductor, on one rank.

With a one-rank group the reduction is trivial, so what is timed is the local work around it:
what the bare pass costs wherever the op runs unfused (past the fusion threshold). Three
functions, each `torch.compile`d once with the token dim dynamic, as a serving engine compiles:

    producer   x = a * 2                       (stands for the row-parallel matmul)
    inductor   producer; funcol.all_reduce(x); + residual; F.rms_norm [-> FP8]  (plain Inductor)
    op         producer; arfuse::fused_allreduce_rmsnorm[_fp8](x, ...)   (what the pass emits)

`x` is dead after the collective in both, as after a matmul. Local work = variant - producer,
timed two ways: under a CUDA graph (GPU time only) and eagerly (a loop of calls; host overhead
counts where it exceeds the GPU time). The gap op - inductor is split into
    copy      GPU time in copy kernels (a clone of the reduction buffer)
    epilogue  GPU time in the other kernels, minus the producer's
    host      (eager - graph) of op, minus the same for inductor
from one profiled eager run per variant (CUDA kernel times by name).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arfuse.bench import strategies as st
from arfuse.bench.sweep import DTYPES, Case, environment
from arfuse.bench.timing import time_cuda_graph, time_eager

VARIANTS = ("producer", "inductor", "op")
KINDS = ("copy", "allreduce", "compute")  # kernel categories of the split


def chains(group: dist.ProcessGroup) -> dict[str, Callable]:
    """The three functions, uncompiled, over (a, residual, weight, scale)."""
    import torch.distributed._functional_collectives as funcol

    name = group.group_name

    def producer(a, residual, weight, scale):
        return a * 2

    def inductor(a, residual, weight, scale):
        y = funcol.all_reduce(a * 2, "sum", group)
        h = y if residual is None else y + residual
        out = F.rms_norm(h, (h.shape[-1],), weight, st.EPS)
        return (out if scale is None else st.quant_fp8_static(out, scale)), h

    def op(a, residual, weight, scale):
        x = a * 2
        if scale is None:
            out, h = torch.ops.arfuse.fused_allreduce_rmsnorm(
                x, residual, weight, st.EPS, 0.0, name
            )
        else:
            out, _, h = torch.ops.arfuse.fused_allreduce_rmsnorm_fp8(
                x, residual, weight, scale, st.EPS, 0.0, name
            )
        return out, h

    return {"producer": producer, "inductor": inductor, "op": op}


@dataclass
class LocalRow:
    case: Case
    tokens: int
    graph_us: dict[str, float] = field(default_factory=dict)
    eager_us: dict[str, float] = field(default_factory=dict)
    kernels_us: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> kind

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("case"))
        return d


def kind_of(kernel: str) -> str:
    """The split's category of a CUDA kernel (or memcpy) name."""
    low = kernel.lower()
    if "nccl" in low:
        return "allreduce"
    # Inductor's Triton kernels say `_to_copy` for a dtype cast: not a copy of the buffer
    if not low.startswith("triton") and ("direct_copy" in low or "memcpy" in low):
        return "copy"
    return "compute"


def _kernel_split(step: Callable[[int], Any], buffers: int, calls: int = 4) -> dict[str, float]:
    """GPU microseconds per call in each kernel category, from the profiler's CUDA events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            step(i % buffers)
        torch.cuda.synchronize()
    total: Counter = Counter()
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            total[kind_of(e.name)] += e.time_range.elapsed_us()
    return {k: total[k] / calls for k in KINDS}


def _time_eager_cuda(step: Callable[[int], Any], buffers: int, calls: int, reps: int) -> float:
    """Median microseconds per call of eager loops of `calls` calls, synchronised at the ends
    (host overhead counts where it exceeds the GPU time, as in an eager engine)."""
    for i in range(buffers):
        step(i)
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            step(i % buffers)
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / calls)
    return statistics.median(samples)


def run_local(
    cases: list[Case], tokens: tuple[int, ...], command: str, n_inner: int = 16, reps: int = 20
) -> dict[str, Any]:
    """Runs on the one rank of the default group; returns {"env", "rows"}."""
    group = dist.group.WORLD
    if dist.get_world_size(group) != 1:
        raise ValueError(f"--local-work times one rank; the group has {dist.get_world_size(group)}")
    on_gpu = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    rows = []
    with torch.no_grad():
        for case in cases:
            torch._dynamo.reset()  # each case compiles afresh, never near the recompile limit
            fns = {k: torch.compile(f) for k, f in chains(group).items()}
            for t in tokens:
                b = st.make_buffers(
                    t, case.hidden, DTYPES[case.dtype], device, case.residual, case.quant == "fp8"
                )
                rows.append(_measure(LocalRow(case, t), fns, b, group, on_gpu, n_inner, reps))
    return {"env": environment(device, 1, command), "rows": rows}


def _measure(row: LocalRow, fns: dict, b: st.Buffers, group, on_gpu: bool, n_inner, reps):
    for a, res in zip(b.xs, b.residuals, strict=True):
        torch._dynamo.maybe_mark_dynamic(a, 0)
        if res is not None:
            torch._dynamo.maybe_mark_dynamic(res, 0)
    for name, fn in fns.items():

        def step(i, fn=fn):
            return fn(b.xs[i], b.residuals[i], b.weight, b.scale)

        if on_gpu:
            row.graph_us[name] = time_cuda_graph(step, b.count, group, n_inner, reps)
            row.eager_us[name] = _time_eager_cuda(step, b.count, n_inner, reps)
            if name != "producer":  # the split compares these two only
                row.kernels_us[name] = _kernel_split(step, b.count)
        else:
            row.eager_us[name] = time_eager(step, b.count, group)
    return row.to_json()


def run_local_worker(cases, tokens, command, n_inner, reps):
    return run_local(cases, tokens, command, n_inner, reps)


# ---- derived numbers and the table ------------------------------------------------------------


def local_work(row: dict, mode: str) -> dict[str, float | None]:
    """Variant time minus the producer's, per variant (mode: 'graph' or 'eager')."""
    t = row.get(f"{mode}_us") or {}
    if "producer" not in t:
        return {"inductor": None, "op": None}
    return {v: t[v] - t["producer"] if v in t else None for v in ("inductor", "op")}


def gap_split(row: dict) -> dict[str, float | None]:
    """op - inductor, split into copy, epilogue (other kernels) and host overhead (us)."""
    k = row.get("kernels_us") or {}
    if not k:
        return {"copy": None, "epilogue": None, "host": None}
    g, e = row["graph_us"], row["eager_us"]
    host = (e["op"] - g["op"]) - (e["inductor"] - g["inductor"])
    return {
        "copy": k["op"]["copy"] - k["inductor"]["copy"],
        "epilogue": k["op"]["compute"] - k["inductor"]["compute"],
        "host": host,
    }


def ratio(inductor: float | None, op: float | None) -> float | None:
    """Plain Inductor's local work / the op's: >= 1.0 means the op is as fast or faster."""
    if inductor is None or op is None or op <= 0:
        return None
    return inductor / op


def _f(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}x" if unit == "x" else f"{v:.1f}"


def markdown(result: dict, target: float = 0.98) -> str:
    env = result["env"]
    lines = [
        f"# arfuse bench --local-work: {env.get('card')}, one rank",
        "",
        f"- card: {env.get('card')} (compute capability {env.get('capability', 'n/a')}), "
        "world size 1 (the reduction is trivial: the local work is what is timed)",
        f"- torch {env['torch']}, CUDA {env.get('cuda', 'n/a')}, FlashInfer "
        f"{env.get('flashinfer', 'n/a')}, Python {env['python']}",
        f"- date {env['date']}",
        f"- command: `{env['command']}`",
        "- local work = variant - producer (`a * 2`, standing for the matmul whose output is "
        "reduced), us per call. graph: median over CUDA-graph replays of 16 calls on rotating "
        "buffers; eager: median over loops of 16 calls, synchronised at the ends. ratio = "
        f"inductor / op (target >= {target:.2f}x). Gap op - inductor split: copy and epilogue "
        "= GPU time in copy / other kernels (profiler), host = eager - graph of op minus that "
        "of inductor.",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["hidden"], r["dtype"], r["residual"], r["quant"]), []).append(r)
    misses = []
    for (hidden, dtype, residual, quant), rows in groups.items():
        lines += [
            f"## hidden {hidden}, {dtype}, residual {'on' if residual else 'off'}, quant {quant}",
            "",
            "| tokens | inductor graph | op graph | ratio graph | inductor eager | op eager "
            "| ratio eager | gap: copy | gap: epilogue | gap: host |",
            "|" + "---|" * 10,
        ]
        for r in rows:
            g, e, s = local_work(r, "graph"), local_work(r, "eager"), gap_split(r)
            rg, re_ = ratio(g["inductor"], g["op"]), ratio(e["inductor"], e["op"])
            for mode, rv in (("graph", rg), ("eager", re_)):
                if rv is not None and rv < target:
                    misses.append(f"hidden {hidden} quant {quant} {r['tokens']} tokens {mode}")
            lines.append(
                f"| {r['tokens']} | {_f(g['inductor'])} | {_f(g['op'])} | {_f(rg, 'x')} | "
                f"{_f(e['inductor'])} | {_f(e['op'])} | {_f(re_, 'x')} | {_f(s['copy'])} | "
                f"{_f(s['epilogue'])} | {_f(s['host'])} |"
            )
        lines.append("")
    lines.append(
        f"Below {target:.2f}x: " + ("; ".join(misses) if misses else "none") + "."
        if result["rows"] and result["rows"][0].get("graph_us")
        else "CPU smoke run: eager times only, no GPU kernels; the numbers mean nothing."
    )
    return "\n".join(lines) + "\n"
