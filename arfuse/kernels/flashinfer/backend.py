"""The registered backend: plan the call, then the fused kernel or the GPU unfused path."""

from __future__ import annotations

import torch
import torch.distributed as dist

from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.kernels.flashinfer import kernel, unfused
from arfuse.kernels.flashinfer.plan import choose_strategy, fallback, site_for, stats
from arfuse.policy import FusionPolicy
from arfuse.settings import settings

ALIGNMENT = 16  # bytes: the kernel moves 16-byte vectors


def backend(args: FusedArgs) -> FusedResult | None:
    """The fused kernel where the plan says so, else the unfused path; None off CUDA."""
    if not args.input.is_cuda:
        return None
    site = site_for(args.input, args.group, args.policy)
    if site.reason is not None:
        fallback(*site.reason)
        return unfused.unfused(args)
    ws = site.ensure_workspace(args.group, args.input)
    if ws is None:
        fallback(
            "capture",
            "the first call for this group/hidden/dtype came during CUDA-graph "
            "capture, where no workspace can be created; run once eagerly before "
            "capturing (or call arfuse.kernels.flashinfer.prepare)",
        )
        return unfused.unfused(args)
    assert site.limits is not None, "a site without a reason has limits"
    strategy, why = choose_strategy(
        args.tokens,
        site.world_size,
        site.limits.oneshot_max_tokens,
        site.limits.fused_max_tokens,
        ws.max_tokens,
        settings.strategy,
        site.policy.twoshot,
    )
    if why is not None:
        fallback(*why)
        return unfused.unfused(args)
    misaligned = [
        name
        for name, t in (("input", args.input), ("residual", args.residual), ("weight", args.weight))
        if t is not None and t.data_ptr() % ALIGNMENT
    ]
    if misaligned:  # a view at an odd offset would be read as if aligned: corrupt results
        fallback(
            "alignment",
            f"{', '.join(misaligned)} not {ALIGNMENT}-byte aligned (a view at an "
            "offset?): the fused kernel needs aligned tensors",
        )
        return unfused.unfused(args)
    stats[strategy] += 1
    out = args.new_outputs()
    kernel.launch(strategy, ws, args, out)
    return out


def prepare(
    group: dist.ProcessGroup,
    hidden: int,
    dtype: torch.dtype = torch.bfloat16,
    policy: FusionPolicy | None = None,
) -> bool:
    """Create the workspace for (group, hidden, dtype) under `policy` (default: the one in
    force, which a pass built without one also uses) now - before CUDA-graph capture.
    Collective. Returns False (reason logged) when the fused kernel does not apply."""
    probe = torch.empty(1, hidden, dtype=dtype, device=torch.cuda.current_device())
    site = site_for(probe, group, "" if policy is None else policy.digest())
    if site.reason is not None:
        fallback(*site.reason)
        return False
    return site.ensure_workspace(group, probe) is not None
