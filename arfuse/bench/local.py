"""`arfuse bench --local-work`: the fused op's unfused branch vs plain Inductor, on one rank.

With a one-rank group the reduction is trivial, so what is timed is the local work around it:
what the bare pass costs wherever the op runs unfused (past the fusion threshold). Two
functions, each `torch.compile`d once with the token dim dynamic, as a serving engine compiles:

    inductor   x = a * 2; funcol.all_reduce(x); + residual; F.rms_norm [-> FP8]  (plain Inductor)
    op         x = a * 2; arfuse::fused_allreduce_rmsnorm[_quant_fp8](x, ...)  (the op alone, as
               the pass emits it under Inductor's CUDA graphs or for static sizes below the limit)
    pass       `inductor` compiled with the bare pass, its fusion limit PASS_LIMIT tokens: each
               chain a run-time branch (`arfuse.token_branch`), so above the limit this is
               Inductor's own kernels behind one host `if`. The pass refuses one-rank groups
               (nothing to reduce); `OneRankPass` lifts only that, so the graph is the one a
               TP>=2 model gets.

`a * 2` (Inductor's one pointwise kernel, `triton_poi_*`) stands for the row-parallel matmul:
`x` is dead after the collective in both. Both compile with pointwise autotuning off, so the
producer is the same kernel with the same launch config in both: autotuned, the two copies of
that one kernel picked configs up to 2x apart on an H200 (0.85 against 1.7 TB/s at hidden
4096), which decided the ratio of whole-call times more than anything the op does. Each is
timed two ways: under a CUDA graph (GPU time only) and eagerly (a loop of calls; host
overhead counts where it exceeds the GPU time); one profiled eager run per variant sorts its
CUDA kernel time by kernel name into
    producer  the `a * 2` kernel: subtracted, local work = time - producer
    copy      copy kernels (a clone of the reduction buffer)
    allreduce NCCL kernels
    epilogue  everything else (add + RMSNorm + FP8)
and the gap op - inductor is split into copy, epilogue and host = (eager - graph) of op minus
the same for inductor.
"""

from __future__ import annotations

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
from arfuse.config import FusionConfig
from arfuse.fusion import AllReduceFusionPass

VARIANTS = ("inductor", "op", "pass")
# the pass variant's fusion limit in tokens: the least a dynamic token count (>= 2) leaves open,
# so every measured size above it takes the unfused branch, and 1 and 2 tokens the op
PASS_LIMIT = 2
KINDS = ("producer", "copy", "allreduce", "epilogue")  # kernel categories of the split
# one producer config for both variants
COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {
    "triton.autotune_pointwise": False
}
EAGER_CALLS = 64  # calls per synchronised eager loop: the sync's own cost spread thin


def chains(group: dist.ProcessGroup) -> dict[str, Callable]:
    """The two functions, uncompiled, over (a, residual, weight, scale)."""
    import torch.distributed._functional_collectives as funcol

    name = group.group_name

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
            out, h = torch.ops.arfuse.fused_allreduce_rmsnorm_quant_fp8(
                x, residual, weight, scale, st.EPS, 0.0, name
            )
        return out, h

    return {"inductor": inductor, "op": op, "pass": inductor}


class OneRankPass(AllReduceFusionPass):
    """The bare pass on the bench's one-rank group, which the pass itself refuses."""

    def _group_unusable(self, group_name: str) -> str | None:
        return None


def compile_options(variant: str) -> dict[str, Any]:
    if variant != "pass":
        return COMPILE_OPTIONS
    fusion = OneRankPass(FusionConfig(fused_max_tokens=PASS_LIMIT))
    return {**COMPILE_OPTIONS, "post_grad_custom_post_pass": fusion}


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
    if low.startswith("triton_poi"):  # Inductor's pointwise kernels: only `a * 2` here
        return "producer"
    # Inductor's Triton kernels say `_to_copy` for a dtype cast: not a copy of the buffer
    if not low.startswith("triton") and ("direct_copy" in low or "memcpy" in low):
        return "copy"
    return "epilogue"


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
            total[e.name] += e.time_range.elapsed_us()
    return {name: us / calls for name, us in total.items()}


def _time_eager_cuda(
    steps: dict[str, Callable[[int], Any]], buffers: int, calls: int, reps: int
) -> dict[str, float]:
    """Microseconds per call of eager loops of `calls` calls, synchronised at the ends (host
    overhead counts where it exceeds the GPU time, as in an eager engine). The variants take
    turns, round after round, and each keeps its fastest round: the one least disturbed by
    the rest of the machine (host-bound loops are noisy)."""
    for step in steps.values():
        for i in range(buffers):
            step(i)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(calls):
                step(i % buffers)
            end.record()
            torch.cuda.synchronize()
            samples[name].append(start.elapsed_time(end) * 1000.0 / calls)
    return {name: min(values) for name, values in samples.items()}


def run_local(
    cases: list[Case], tokens: tuple[int, ...], command: str, n_inner: int = 16, reps: int = 20
) -> dict[str, Any]:
    """Runs on the one rank of the default group; returns {"env", "rows"}."""
    group = dist.group.WORLD
    assert group is not None, "torch.distributed is initialised by the caller"
    if dist.get_world_size(group) != 1:
        raise ValueError(f"--local-work times one rank; the group has {dist.get_world_size(group)}")
    on_gpu = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    rows = []
    with torch.no_grad():
        for case in cases:
            torch._dynamo.reset()  # each case compiles afresh, never near the recompile limit
            fns = {
                k: torch.compile(f, options=compile_options(k)) for k, f in chains(group).items()
            }
            for t in tokens:
                b = st.make_buffers(
                    t, case.hidden, DTYPES[case.dtype], device, case.residual, case.quant == "fp8"
                )
                rows.append(_measure(LocalRow(case, t), fns, b, group, on_gpu, n_inner, reps))
    return {"env": environment(device, 1, command), "rows": rows}


def _step(fn: Callable, b: st.Buffers) -> Callable[[int], Any]:
    """One call of `fn` on buffer set i."""
    return lambda i: fn(b.xs[i], b.residuals[i], b.weight, b.scale)


def _measure(row: LocalRow, fns: dict, b: st.Buffers, group, on_gpu: bool, n_inner, reps):
    for a, res in zip(b.xs, b.residuals, strict=True):
        torch._dynamo.maybe_mark_dynamic(a, 0)
        if res is not None:
            torch._dynamo.maybe_mark_dynamic(res, 0)
    steps = {name: _step(fn, b) for name, fn in fns.items()}
    for name, step in steps.items():
        if on_gpu:
            row.graph_us[name] = time_cuda_graph(step, b.count, group, n_inner, reps)
            row.kernels_us[name] = _kernel_split(step, b.count)
        else:
            row.eager_us[name] = time_eager(step, b.count, group)
    if on_gpu:
        row.eager_us = _time_eager_cuda(steps, b.count, EAGER_CALLS, reps)
    return row.to_json()


def run_local_worker(cases, tokens, command, n_inner, reps):
    return run_local(cases, tokens, command, n_inner, reps)


# ---- derived numbers and the table ------------------------------------------------------------


def kinds(row: dict, variant: str) -> dict[str, float]:
    """GPU us per call of `variant` in each of KINDS (zeros without a profile)."""
    out = dict.fromkeys(KINDS, 0.0)
    for name, us in (row.get("kernels_us") or {}).get(variant, {}).items():
        out[kind_of(name)] += us
    return out


def local_work(row: dict, mode: str) -> dict[str, float | None]:
    """Each variant's time minus its producer kernel's (mode: 'graph' or 'eager')."""
    t = row.get(f"{mode}_us") or {}
    return {v: t[v] - kinds(row, v)["producer"] if v in t else None for v in VARIANTS}


def gap_split(row: dict) -> dict[str, float | None]:
    """op - inductor, split into copy, epilogue kernel and host overhead (us)."""
    if not row.get("kernels_us"):
        return {"copy": None, "epilogue": None, "host": None}
    g, e = row["graph_us"], row["eager_us"]
    op, ind = kinds(row, "op"), kinds(row, "inductor")
    return {
        "copy": op["copy"] - ind["copy"],
        "epilogue": op["epilogue"] - ind["epilogue"],
        "host": (e["op"] - g["op"]) - (e["inductor"] - g["inductor"]),
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
        "- local work = variant - its producer kernel (`a * 2`, standing for the matmul "
        "whose output is reduced; its time from the profile), us per call. graph: median over "
        f"CUDA-graph replays of 16 calls on rotating buffers; eager: loops of {EAGER_CALLS} calls "
        "synchronised at the ends, the variants taking turns, the fastest loop of each. "
        f"ratio = inductor / variant (target >= {target:.2f}x). pass: the bare pass with its "
        f"fusion limit at {PASS_LIMIT} tokens, so above it each chain runs Inductor's own "
        f"kernels behind the pass's run-time branch (at <= {PASS_LIMIT} tokens, marked *, the "
        "op: not the unfused branch, not held to the target). Gap op - inductor split: copy "
        "and epilogue = GPU time in copy / other kernels (profiler, one eager run), host = "
        "eager - graph of op minus that of inductor. All compiled with pointwise autotuning "
        "off: the same producer kernel and config in each.",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["hidden"], r["dtype"], r["residual"], r["quant"]), []).append(r)
    misses: dict[str, list[str]] = {"op": [], "pass": []}
    for (hidden, dtype, residual, quant), rows in groups.items():
        lines += [
            f"## hidden {hidden}, {dtype}, residual {'on' if residual else 'off'}, quant {quant}",
            "",
            "| tokens | inductor graph | op graph | pass graph | ratio op | ratio pass "
            "| inductor eager | op eager | pass eager | ratio op | ratio pass "
            "| gap: copy | gap: epilogue | gap: host |",
            "|" + "---|" * 14,
        ]
        for r in rows:
            g, e, s = local_work(r, "graph"), local_work(r, "eager"), gap_split(r)
            cells = []
            for mode, t in (("graph", g), ("eager", e)):
                ratios = {v: ratio(t["inductor"], t[v]) for v in ("op", "pass")}
                for v, rv in ratios.items():
                    held = v == "op" or r["tokens"] > PASS_LIMIT
                    if held and rv is not None and rv < target:
                        misses[v].append(f"hidden {hidden} quant {quant} {r['tokens']} {mode}")
                star = "*" if r["tokens"] <= PASS_LIMIT else ""
                cells += [_f(t["inductor"]), _f(t["op"]), _f(t["pass"]) + star]
                cells += [_f(ratios["op"], "x"), _f(ratios["pass"], "x") + star]
            cells += [_f(s["copy"]), _f(s["epilogue"]), _f(s["host"])]
            lines.append(f"| {r['tokens']} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["rows"] and result["rows"][0].get("graph_us"):
        for v, name in (("pass", "the bare pass above its limit"), ("op", "the op alone")):
            lines.append(f"Below {target:.2f}x, {name}: " + ("; ".join(misses[v]) or "none") + ".")
    else:
        lines.append("CPU smoke run: eager times only, no GPU kernels; the numbers mean nothing.")
    return "\n".join(lines) + "\n"
