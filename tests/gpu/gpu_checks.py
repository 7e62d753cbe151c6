"""Checks that run inside each rank of a spawned NCCL group, and what the tests hold them to.

Imported by the GPU tests (tests/gpu/test_*.py, pytest.mark.gpu, skipped without CUDA) and by
diagnose_fused_launches.py. Module-level functions (the ranks import them by name) return plain
data; every rank calls the same functions in the same order, so the collectives inside line up.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

import arfuse
from arfuse import thresholds as th
from arfuse.kernels import FusedArgs, FusedResult
from arfuse.kernels import flashinfer as fb
from arfuse.kernels.exact import FP8_MAX
from arfuse.kernels.flashinfer import kernel, plan

SAFE_ENV = {  # NVLink multicast off in every rank
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
TOL = 8e-3  # relative L2 vs the fp32 reference (bf16 rounding; the probe saw 2.9e-3)
FP8_TOL = 4e-2  # dequantized e4m3 vs the fp32 reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EPS = 1e-6
FP8_SCALE = 0.05


def assert_row(row, tol=TOL):
    """What every `_one_call` row must satisfy (run in the test process, not a rank)."""
    where = f"{row}"
    assert row["finite"], where
    if row["ran"] in ("oneshot", "twoshot"):  # the fused kernel only reads its input
        assert row["input_unchanged"], where
    else:  # the unfused branch sums into it in place (the op's input is its reduction buffer)
        assert row["input_is_sum"], where
    assert row["xrank_identical"], where
    assert row["norm_rel_l2"] < tol, where
    assert row["resid_rel_l2"] < tol, where
    if row.get("fp8"):
        assert row["fp8_rel_l2"] < FP8_TOL, where
        assert row["fp8_max_steps_vs_own_norm"] <= 1.01, where
        assert row["quant_only_same"], where
    if "poisoned_all_written" in row:
        assert row["poisoned_all_written"], where
        assert row["poisoned_equals_op"], where


def _group():
    return dist.group.WORLD


def _shared_randn(shape, dtype, scale=1.0):
    """Identical on every rank (residual and norm weight are replicated under TP)."""
    t = (torch.randn(shape, device="cuda") * scale).to(dtype)
    dist.broadcast(t, src=0, group=_group())
    return t


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sum_over_ranks(x):
    xs = x.float().clone()
    dist.all_reduce(xs, group=_group())
    return xs


def _reference(x, residual, weight, eps, weight_offset):
    """float32 allreduce + add + RMSNorm."""
    xs = _sum_over_ranks(x)
    r = xs if residual is None else xs + residual.float()
    n = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * (weight.float() + weight_offset)
    return n, r


def _xrank(*tensors) -> tuple[bool, float]:
    """(every rank's tensors bit-identical to rank 0's, the largest relative L2 distance of any
    rank's tensor from rank 0's)."""
    worst = torch.zeros(2, device="cuda")  # [any bitwise mismatch, largest rel L2]
    for t in tensors:
        mine = t.contiguous().view(torch.uint8)
        theirs = mine.clone()  # bytes: gloo has no float8 broadcast
        dist.broadcast(theirs, src=0, group=_group())
        if not torch.equal(theirs, mine):
            worst[0] = 1
        t0 = theirs.view(t.dtype)
        worst[1] = max(float(worst[1]), rel_l2(t.float(), t0.float()))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=_group())
    return bool(worst[0].item() == 0), float(worst[1].item())


def _same_on_all_ranks(*tensors) -> bool:
    return _xrank(*tensors)[0]


def _ran(before) -> str:
    diff = fb.stats - before
    assert sum(diff.values()) == 1, f"expected exactly one backend call, saw {dict(diff)}"
    return next(iter(diff))


def info() -> dict:
    import flashinfer

    return {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "gpu": torch.cuda.get_device_name(),
        "cap": torch.cuda.get_device_capability(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "flashinfer": flashinfer.__version__,
    }


def _one_call(T, hidden, dtype, residual_on, weight_offset, fp8, seed):
    """One fused-op call through the real op + dispatch, checked against the fp32 reference;
    then the same strategy launched into NaN-poisoned preallocated outputs."""
    group = _group()
    torch.manual_seed(seed * 7919 + T * 31 + dist.get_rank())
    x = torch.randn(T, hidden, device="cuda").to(dtype)  # differs per rank
    x_keep = x.clone()
    residual = _shared_randn((T, hidden), dtype) if residual_on else None
    weight = (
        (1.0 + 0.5 * _shared_randn((hidden,), torch.float32)).to(dtype)
        if weight_offset == 0.0
        else (0.5 * _shared_randn((hidden,), torch.float32)).to(dtype)
    )
    scale = torch.tensor([FP8_SCALE], device="cuda") if fp8 else None
    before = fb.stats.copy()
    if fp8:
        quant, norm, res = arfuse.ops.fused_allreduce_rmsnorm_fp8(
            x, residual, weight, scale, EPS, group.group_name, weight_offset=weight_offset
        )
    else:
        norm, res = arfuse.ops.fused_allreduce_rmsnorm(
            x, residual, weight, EPS, group.group_name, weight_offset=weight_offset
        )
        quant = None
    torch.cuda.synchronize()
    ran = _ran(before)
    n_ref, r_ref = _reference(x_keep, residual, weight, EPS, weight_offset)
    row = {
        "T": T,
        "hidden": hidden,
        "dtype": str(dtype).split(".")[-1],
        "ran": ran,
        "residual": residual_on,
        "weight_offset": weight_offset,
        "fp8": fp8,
        "norm_rel_l2": rel_l2(norm.float(), n_ref),
        "resid_rel_l2": rel_l2(res.float(), r_ref),
        "input_unchanged": bool(torch.equal(x, x_keep)),
        "input_is_sum": rel_l2(x.float(), _sum_over_ranks(x_keep)) < TOL,
        "finite": bool(torch.isfinite(norm).all() and torch.isfinite(res).all()),
        "xrank_identical": _same_on_all_ranks(norm, res),
    }
    if fp8:
        deq = quant.float() * FP8_SCALE
        own = (norm.float() / FP8_SCALE).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        own_deq = own.float() * FP8_SCALE
        row["fp8_rel_l2"] = rel_l2(deq, n_ref)
        # kernel multiplies by 1/scale, the reference divides: at most one e4m3 step apart
        step = (own_deq.abs() * 0.125).clamp_min(2.0**-9 * FP8_SCALE)
        row["fp8_max_steps_vs_own_norm"] = float(((deq - own_deq).abs() / step).max())
        row["xrank_identical"] &= _same_on_all_ranks(quant)
        # the op without the bf16 norm (what the pass emits when only the FP8 value is read):
        # the same strategy, the same bits, and it runs the same way
        x_again, before = x_keep.clone(), fb.stats.copy()
        q_only, res_only = arfuse.ops.fused_allreduce_rmsnorm_quant_fp8(
            x_again, residual, weight, scale, EPS, group.group_name, weight_offset=weight_offset
        )
        torch.cuda.synchronize()
        row["quant_only_same"] = bool(
            _ran(before) == ran
            and torch.equal(q_only.view(torch.uint8), quant.view(torch.uint8))
            and torch.equal(res_only, res)
        )
    if ran in ("oneshot", "twoshot"):
        site = plan.site_for(x, group)
        poison = [torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))]
        q_out = torch.full_like(x, float("nan"), dtype=torch.float8_e4m3fn) if fp8 else None
        args = FusedArgs(x_keep, residual, weight, scale, EPS, weight_offset, group)
        kernel.launch(ran, site.workspace, args, FusedResult(q_out, poison[0], poison[1]))
        torch.cuda.synchronize()
        row["poisoned_all_written"] = bool(
            torch.isfinite(poison[0]).all()
            and torch.isfinite(poison[1]).all()
            and (q_out is None or not torch.isnan(q_out.float()).any())
        )
        row["poisoned_equals_op"] = bool(
            torch.equal(poison[0], norm)
            and torch.equal(poison[1], res)
            and (q_out is None or torch.equal(q_out.view(torch.uint8), quant.view(torch.uint8)))
        )
    return row


def _big_enough_table(mb: float = 32.0) -> dict:
    """An override so forced strategies fit 2048 tokens at hidden 8192 (32 MB) at any TP."""
    arch = th.arch_of(torch.cuda.get_device_capability())
    return {arch: {dist.get_world_size(): {"oneshot_max_mb": mb, "fused_max_mb": mb}}}


def check_forced(hidden: int, dtype_name: str, strategy: str, tokens: list[int]) -> list[dict]:
    """Each token count with the strategy forced (two-shot degrades to one-shot at T <= ws)."""
    dtype = DTYPES[dtype_name]
    rows = []
    with th.override(_big_enough_table()), fb.forced_strategy(strategy):
        for T in tokens:
            rows.append(_one_call(T, hidden, dtype, True, 0.0, False, seed=1))
    fb.release_workspaces(_group())
    return rows


def check_variants(strategy: str) -> list[dict]:
    """No residual, Gemma (1 + weight), FP8 (+ no residual) at a few sizes, hidden 4096 bf16."""
    rows = []
    ws = dist.get_world_size()
    with th.override(_big_enough_table()), fb.forced_strategy(strategy):
        for T in (1, ws + 1, 129, 512):
            for residual_on, wb, fp8 in (
                (False, 0.0, False),
                (True, 1.0, False),
                (True, 0.0, True),
                (False, 1.0, True),
            ):
                rows.append(_one_call(T, 4096, torch.bfloat16, residual_on, wb, fp8, seed=2))
    fb.release_workspaces(_group())
    return rows


def check_thresholds(hidden: int, dtype_name: str) -> dict:
    """Default table, no forcing: the strategy at each threshold +-1 is what the table says."""
    dtype = DTYPES[dtype_name]
    fb.force_strategy(None)
    lim = th.lookup(torch.cuda.get_device_capability(), dist.get_world_size(), dtype, hidden)
    rows = []
    for T in lim.token_counts():
        expected, _ = fb.choose_strategy(
            T,
            dist.get_world_size(),
            lim.oneshot_max_tokens,
            lim.fused_max_tokens,
            plan.workspace_tokens(lim),
            twoshot=fb.settings.twoshot,
        )
        row = _one_call(T, hidden, dtype, True, 0.0, False, seed=3)
        row["expected"] = expected
        rows.append(row)
    fb.release_workspaces(_group())
    return {
        "oneshot_max_tokens": lim.oneshot_max_tokens,
        "fused_max_tokens": lim.fused_max_tokens,
        "rows": rows,
        "reasons": dict(fb.fallback_reasons),
    }


def check_fallbacks() -> dict:
    """Shapes the kernel does not take run the fast unfused path, exactly."""
    rows = []
    for T, hidden, dtype in (
        (16, 4096, torch.float32),
        (16, 4100, torch.bfloat16),
        (33, 1028, torch.float16),
    ):
        rows.append(_one_call(T, hidden, dtype, True, 0.0, False, seed=4))
    return {"rows": rows, "reasons": dict(fb.fallback_reasons)}


def check_rank_mismatch() -> str:
    """Ranks asking for different workspaces get a ValueError on every rank, not a hang."""
    try:
        fb.create_workspace(_group(), 4096 + 8 * dist.get_rank(), torch.bfloat16, 16)
    except ValueError as e:
        return str(e)
    return "no error"


def check_cuda_graph_op(strategy: str, T: int) -> dict:
    """The fused op captured in a CUDA graph replays with new data like an eager call."""
    group = _group()
    hidden, dtype = 4096, torch.bfloat16
    with th.override(_big_enough_table()), fb.forced_strategy(strategy):
        torch.manual_seed(5 + dist.get_rank())
        x = torch.randn(T, hidden, device="cuda").to(dtype)
        residual = _shared_randn((T, hidden), dtype)
        weight = (1.0 + 0.5 * _shared_randn((hidden,), torch.float32)).to(dtype)
        fb.prepare(group, hidden, dtype)  # workspace before capture
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            arfuse.ops.fused_allreduce_rmsnorm(x, residual, weight, EPS, group.group_name)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        dist.barrier(group=group)
        g = torch.cuda.CUDAGraph()
        before = fb.stats.copy()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            out = arfuse.ops.fused_allreduce_rmsnorm(x, residual, weight, EPS, group.group_name)
        ran = _ran(before)
        torch.cuda.synchronize()
        dist.barrier(group=group)
        results = []
        for _trial in range(3):
            x.copy_(torch.randn(T, hidden, device="cuda").to(dtype))
            residual.copy_(_shared_randn((T, hidden), dtype))
            torch.cuda.synchronize()
            dist.barrier(group=group)
            g.replay()
            torch.cuda.synchronize()
            eager = arfuse.ops.fused_allreduce_rmsnorm(x, residual, weight, EPS, group.group_name)
            torch.cuda.synchronize()
            n_ref, _ = _reference(x, residual, weight, EPS, 0.0)
            results.append(
                {
                    "equal_to_eager": bool(
                        torch.equal(out.norm, eager.norm)
                        and torch.equal(out.residual, eager.residual)
                    ),
                    "norm_rel_l2": rel_l2(out.norm.float(), n_ref),
                }
            )
        del g
    fb.release_workspaces(group)
    return {"ran": ran, "trials": results}


def example_decoder(num_layers: int, hidden: int, intermediate: int, num_heads: int, dtype):
    """The example TP decoder on this rank's GPU and a maker of its inputs for n tokens. Built
    on CPU, then moved: build_tp_decoder's init_weights mixes devices for device="cuda"; the
    same seed gives the same weights at every dtype."""
    from arfuse.examples.tp_decoder import build_tp_decoder

    model, make_cpu_inputs = build_tp_decoder(
        num_layers=num_layers,
        hidden=hidden,
        intermediate=intermediate,
        num_heads=num_heads,
        dtype=dtype,
        device="cpu",
    )
    return model.to("cuda"), (lambda n: tuple(t.to("cuda") for t in make_cpu_inputs(n)))


def check_model(T: int = 64, T2: int = 300, above: int = 513) -> dict:
    """The example TP decoder compiled with the pass: fused ops in the graph, same outputs as
    eager, and a CUDA graph of the compiled model replays to the same result. With a fusion
    limit of 512 tokens (the table's is 65536 at this hidden size, too many tokens for this
    attention) the bare pass emits each chain as a branch on the token count
    (`arfuse.token_branch`): `above` runs plain Inductor's chain (key "above": no op call)."""
    logging.getLogger("arfuse").setLevel(logging.INFO)
    torch._dynamo.reset()
    fb.force_strategy(None)
    out: dict = {}
    model, make_inputs = example_decoder(2, 2048, 4096, 16, torch.bfloat16)
    model32, _ = example_decoder(2, 2048, 4096, 16, torch.float32)  # same weights, float32
    fusion = arfuse.AllReduceFusionPass(arfuse.FusionConfig(fused_max_tokens=above - 1))
    compiled = torch.compile(model, options={"post_grad_custom_post_pass": fusion})
    # no FX graph cache: a cache hit skips the pass, and num_matches would read 0
    with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
        for n in (T, T2, above):
            (x,) = make_inputs(n)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            eager = model(x)
            ref32 = model32(x.float())  # the float32 model: how far bf16 eager itself is off
            before = fb.stats.copy()
            got = compiled(x)
            torch.cuda.synchronize()
            out["above" if n == above else f"T{n}"] = {
                "rel_l2_vs_eager": rel_l2(got.float(), eager.float()),
                "fused_rel_l2_vs_fp32_model": rel_l2(got.float(), ref32),
                "eager_rel_l2_vs_fp32_model": rel_l2(eager.float(), ref32),
                "ran": dict(fb.stats - before),
                "xrank_identical": _same_on_all_ranks(got),
            }
        out["num_matches"] = fusion.num_matches
        # CUDA graph of the compiled model (static input buffer, shape T)
        (static_x,) = make_inputs(T)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                compiled(static_x)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        dist.barrier(group=_group())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            static_out = compiled(static_x)
        torch.cuda.synchronize()
        dist.barrier(group=_group())
        replays = []
        for _trial in range(3):
            new_x = torch.randn(static_x.shape, device="cuda").to(static_x.dtype)
            dist.broadcast(new_x, src=0, group=_group())
            static_x.copy_(new_x)
            torch.cuda.synchronize()
            dist.barrier(group=_group())
            g.replay()
            torch.cuda.synchronize()
            direct = compiled(new_x)
            ref = model(new_x)
            torch.cuda.synchronize()
            replays.append(
                {
                    "equal_to_compiled": bool(torch.equal(static_out, direct)),
                    "rel_l2_vs_compiled": rel_l2(static_out.float(), direct.float()),
                    "rel_l2_vs_eager": rel_l2(static_out.float(), ref.float()),
                }
            )
        out["graph_replays"] = replays
        del g
    out["reasons"] = dict(fb.fallback_reasons)
    fb.release_workspaces(_group())
    return out


def teardown() -> int:
    return fb.release_workspaces(_group())


def check_ranges() -> dict:
    """arfuse.compile(ranges="auto") on the example decoder: one capture, the fused kernel in
    the ranges below the fusion threshold, plain Inductor above, outputs as eager."""
    torch._dynamo.reset()
    fb.force_strategy(None)
    hidden = 4096
    model, make_inputs = example_decoder(1, hidden, 2048, 32, torch.bfloat16)
    lim = th.lookup(
        torch.cuda.get_device_capability(), dist.get_world_size(), torch.bfloat16, hidden
    )
    out: dict = {
        "oneshot_max_tokens": lim.oneshot_max_tokens,
        "fused_max_tokens": lim.fused_max_tokens,
        "calls": {},
        # with two-shot off (ARFUSE_TWOSHOT=0) only the one-shot range fuses
        "effective_max_tokens": lim.fused_max_tokens
        if fb.settings.twoshot
        else lim.oneshot_max_tokens,
    }
    sizes = sorted(
        {2, *(t for s in (lim.oneshot_max_tokens, lim.fused_max_tokens) for t in (s, s + 1))}
    )
    with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
        compiled = arfuse.compile(model, ranges="auto")
        for n in sizes:
            (x,) = make_inputs(n)
            before = fb.stats.copy()
            got = compiled(x)
            torch.cuda.synchronize()
            identical, spread = _xrank(got)
            out["calls"][n] = {
                "rel_l2_vs_eager": rel_l2(got.float(), model(x).float()),
                "ran": dict(fb.stats - before),
                "xrank_identical": identical,
                "xrank_rel_l2": spread,
            }
    out["captures"] = compiled.backend.captures
    out["ranges"] = [str(r) for r in compiled.ranges]
    out["compiles"] = [
        {k: c[k] for k in ("range", "fused", "left_to_inductor", "bounds_applied")}
        for c in compiled.backend.compiles
    ]
    fb.release_workspaces(_group())
    return out


VARIANTS = (  # (residual, weight_offset, fp8)
    (True, 0.0, False),
    (False, 0.0, False),
    (True, 1.0, False),
    (True, 0.0, True),
)


def check_single_rank() -> dict:
    """World size 1: the kernel does not apply, so every variant runs the GPU unfused path
    (NCCL in place + the Triton epilogue), and nothing is compiled by Dynamo per call."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fb.force_strategy("oneshot")  # forcing cannot make world size 1 fuse
    rows = [
        _one_call(T, 4096, torch.bfloat16, residual_on, offset, fp8, seed=6)
        for T in (1, 17, 300, 4097)
        for residual_on, offset, fp8 in VARIANTS
    ]
    fb.force_strategy(None)
    return {
        "rows": rows,
        "reasons": dict(fb.fallback_reasons),
        "graphs_compiled": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
    }
