"""Checks that run inside each rank of the spawned gloo group (see conftest.gloo2).

Every function here is module-level (the spawned ranks import it by name) and returns plain
data for the test in the parent process to assert on.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F

import arfuse
from arfuse.kernels.exact import FP8_MAX
from arfuse.patterns.spec import FusionSpec
from arfuse.testing.graphs import PostGradCapture, op_counts

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}
FP8_TOL = 4e-2  # dequantized e4m3: 3 mantissa bits, ties may round the other way

# A user's own functional allreduce op, named in FusionConfig.allreduce_ops.
_LIB = torch.library.Library("arfuse_test", "DEF")
_LIB.define("all_reduce(Tensor input, str group_name) -> Tensor")


@torch.library.impl(_LIB, "all_reduce", "CompositeExplicitAutograd")
def _test_all_reduce(input, group_name):
    out = input.clone()
    dist.all_reduce(out, group=dist.distributed_c10d._resolve_process_group(group_name))
    return out


@torch.library.register_fake("arfuse_test::all_reduce", lib=_LIB)
def _test_all_reduce_fake(input, group_name):
    return torch.empty_like(input)


CUSTOM_CONFIG = arfuse.FusionConfig(allreduce_ops=("arfuse_test::all_reduce",))

ALLREDUCE_TARGETS = ("_c10d_functional.all_reduce.default", "_c10d_functional.all_reduce_.default",
                     "_c10d_functional.wait_tensor.default", "arfuse.all_reduce.default",
                     "arfuse_test.all_reduce.default")
FUSED_TARGETS = ("arfuse.fused_allreduce_rmsnorm.default",
                 "arfuse.fused_allreduce_rmsnorm_fp8.default")


class CountingPass(arfuse.AllReduceFusionPass):
    """The real pass, recording op counts of the graph before and after it runs."""

    def __init__(self, config=None):
        super().__init__(config)
        self.before, self.after = [], []

    def __call__(self, graph):
        self.before.append(op_counts(graph))
        super().__call__(graph)
        self.after.append(op_counts(graph))


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def _all_reduce(x, form):
    group = dist.group.WORLD
    if form == "c10d":
        return funcol.all_reduce(x, "sum", group)
    if form == "arfuse":
        return arfuse.ops.all_reduce(x, group.group_name)
    return torch.ops.arfuse_test.all_reduce(x, group.group_name)


def _norm(h, weight, eps, form):
    if form == "rms_norm":
        return F.rms_norm(h, (h.shape[-1],), weight, eps)
    if form == "custom_op":
        return arfuse.ops.rms_norm(h, weight, eps)
    hf = h.to(torch.float32)
    hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    if form == "gemma":
        return (hf * (1.0 + weight.float())).to(h.dtype)
    return weight * hf.to(h.dtype)


def make_chain(spec: FusionSpec, eps: float, three_d: bool, residual_live: bool):
    """The eager computation a model writes for `spec`."""

    def chain(x, residual, weight, scale):
        y = _all_reduce(x, spec.allreduce)
        if three_d:
            y = y.view(residual.shape)
        if spec.residual == "ar+res":
            h = y + residual
        elif spec.residual == "res+ar":
            h = residual + y
        else:
            h = y
        out = _norm(h, weight, eps, spec.norm)
        if spec.quant == "fp8":
            out = (out.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return (out, h) if residual_live else out

    return chain


def _inputs(tokens: int, hidden: int, dtype, three_d: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rank_gen = torch.Generator().manual_seed(seed + 1000 * (dist.get_rank() + 1))
    rows = 2 * tokens if three_d else tokens
    x = torch.randn(rows, hidden, generator=rank_gen).to(dtype)
    res_shape = (2, tokens, hidden) if three_d else (tokens, hidden)
    residual = torch.randn(res_shape, generator=gen).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    scale = torch.tensor(0.05)
    return x, residual, weight, scale


def _as_float(out, scale):
    if out.dtype == torch.float8_e4m3fn:
        return out.to(torch.float32) * scale
    return out


def check_variant(spec_name: str, dtype_name: str, three_d: bool, residual_live: bool,
                  tokens=(5, 33, 1), hidden: int = 64, eps: float = 1e-6) -> dict:
    """Fuse one variant; report op counts before/after, matches and errors vs eager."""
    spec = FusionSpec.parse(spec_name)
    dtype = DTYPES[dtype_name]
    config = CUSTOM_CONFIG if spec.allreduce == "custom" else arfuse.FusionConfig()
    fusion = CountingPass(config)
    capture = PostGradCapture(fusion)
    chain = make_chain(spec, eps, three_d, residual_live)
    torch._dynamo.reset()
    compiled = torch.compile(chain, backend=capture.backend, fullgraph=True)
    errors, outputs = {}, []
    with torch.no_grad():
        for t in tokens:
            x, residual, weight, scale = _inputs(t, hidden, dtype, three_d, seed=t)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(residual, 1 if three_d else 0)
            got = compiled(x, residual, weight, scale)
            want = chain(x, residual, weight, scale)
            got, want = (got, want) if residual_live else ((got,), (want,))
            errs = []
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape)
                errs.append(rel_l2(_as_float(g, scale), _as_float(w, scale)))
            errors[t] = errs
            outputs.append([g.float() if g.dtype != torch.float8_e4m3fn else g.view(torch.uint8)
                            for g in got])
    return {"before": [dict(c) for c in fusion.before], "after": [dict(c) for c in fusion.after],
            "matched": dict(fusion.matched), "skipped": fusion.skipped,
            "graphs": len(capture.graphs), "errors": errors, "outputs": outputs,
            "tol": FP8_TOL if spec.quant == "fp8" else TOL[dtype]}


def count_allreduces(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k in ALLREDUCE_TARGETS and "wait" not in k)


def count_fused(counts: dict) -> int:
    return sum(v for k, v in counts.items() if k in FUSED_TARGETS)
