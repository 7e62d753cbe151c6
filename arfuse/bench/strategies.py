"""The ways to compute allreduce + residual add + RMSNorm (+FP8) that `arfuse bench` times.

    unfused_eager     NCCL all_reduce (in place) + eager add + F.rms_norm (+ eager quant)
    unfused_compiled  NCCL all_reduce (in place) + torch.compile'd add+RMSNorm(+quant) (one
                      static compile, then one with the token dim dynamic) - the best
                      unfused path
    fused_oneshot     arfuse's fused op with the one-shot kernel forced
    fused_twoshot     arfuse's fused op with the two-shot kernel forced (tokens > world size)
    arfuse            arfuse's fused op as dispatched by the thresholds in force (past the
                      threshold: its unfused branch, NCCL in place + one Triton kernel)

Each builder returns a `step(i)` over buffer set i, or a reason string when the strategy does
not apply here (CPU, FlashInfer missing, two-shot at tokens <= world size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arfuse.kernels.exact import quant_fp8_static

UNFUSED = ("unfused_eager", "unfused_compiled")
FUSED = ("fused_oneshot", "fused_twoshot")
ALL = UNFUSED + FUSED + ("arfuse",)
EPS = 1e-6


@dataclass
class Buffers:
    """`count` rotating input sets for one (tokens, hidden, dtype)."""

    xs: list[torch.Tensor]
    xs0: list[torch.Tensor]
    residuals: list[torch.Tensor | None]
    weight: torch.Tensor
    scale: torch.Tensor | None

    @property
    def count(self) -> int:
        return len(self.xs)

    def refill(self) -> None:
        for x, x0 in zip(self.xs, self.xs0, strict=True):
            x.copy_(x0)


def make_buffers(
    tokens: int,
    hidden: int,
    dtype: torch.dtype,
    device: torch.device,
    residual: bool,
    fp8: bool,
    l2_bytes: int = 50 * 2**20,
) -> Buffers:
    set_bytes = 4 * tokens * hidden * torch.empty((), dtype=dtype).element_size()
    count = 2
    while count < 16 and count * set_bytes < 2 * l2_bytes:  # rotate past the L2 cache
        count *= 2
    gen = torch.Generator(device=device).manual_seed(1234 + dist.get_rank())
    shared = torch.Generator(device=device).manual_seed(99)
    xs0 = [
        torch.randn(tokens, hidden, generator=gen, device=device).to(dtype) for _ in range(count)
    ]
    residuals = [
        torch.randn(tokens, hidden, generator=shared, device=device).to(dtype) if residual else None
        for _ in range(count)
    ]
    weight = (1 + 0.1 * torch.randn(hidden, generator=shared, device=device)).to(dtype)
    scale = torch.tensor(0.05, device=device) if fp8 else None
    return Buffers([x.clone() for x in xs0], xs0, residuals, weight, scale)


def _epilogue(x, residual, weight, scale):
    h = x if residual is None else x + residual
    out = F.rms_norm(h, (h.shape[-1],), weight, EPS)
    if scale is not None:
        out = quant_fp8_static(out, scale)
    return out, h


_compiled_epilogue = None


def _compiled():
    global _compiled_epilogue
    if _compiled_epilogue is None:
        _compiled_epilogue = torch.compile(_epilogue, fullgraph=True)
    return _compiled_epilogue


@contextlib.contextmanager
def strategy_context(name: str, big_table: dict | None) -> Iterator[None]:
    """Force the kernel strategy (and a workspace big enough) for the fused strategies."""
    if name not in FUSED:
        yield
        return
    from arfuse import thresholds
    from arfuse.kernels import flashinfer

    with (
        thresholds.override(big_table or {}),
        flashinfer.forced_strategy(name.removeprefix("fused_")),
    ):
        yield


def build(name: str, buffers: Buffers, group: dist.ProcessGroup) -> Callable[[int], None] | str:
    b = buffers
    tokens = b.xs[0].shape[0]
    if name == "unfused_eager":

        def step(i):
            dist.all_reduce(b.xs[i], group=group)
            _epilogue(b.xs[i], b.residuals[i], b.weight, b.scale)

        return step
    if name == "unfused_compiled":
        epilogue = _compiled()

        def step(i):
            dist.all_reduce(b.xs[i], group=group)
            epilogue(b.xs[i], b.residuals[i], b.weight, b.scale)

        return step
    if name in FUSED:
        if not b.xs[0].is_cuda:
            return "the fused kernel needs CUDA (on CPU the fused op runs the exact path)"
        from arfuse.kernels.flashinfer import library

        missing = library.unavailable_reason()
        if missing is not None:
            return missing
        if name == "fused_twoshot" and tokens <= dist.get_world_size(group):
            return "two-shot needs tokens > world size"
    group_name = group.group_name
    if b.scale is None:

        def step(i):
            torch.ops.arfuse.fused_allreduce_rmsnorm(
                b.xs[i], b.residuals[i], b.weight, EPS, 0.0, group_name
            )
    else:

        def step(i):
            torch.ops.arfuse.fused_allreduce_rmsnorm_quant_fp8(
                b.xs[i], b.residuals[i], b.weight, b.scale, EPS, 0.0, group_name
            )

    return step


def picked(step: Callable[[int], None]) -> str:
    """Which strategy arfuse's dispatch ran for one eager call of `step` (GPU only)."""
    from arfuse.kernels import flashinfer

    before = dict(flashinfer.stats)
    step(0)
    torch.cuda.synchronize()
    ran = [k for k, v in flashinfer.stats.items() if v > before.get(k, 0)]
    return ran[0] if len(ran) == 1 else "+".join(sorted(ran)) or "exact"
