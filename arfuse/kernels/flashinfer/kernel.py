"""One launch of FlashInfer's TensorRT-LLM allreduce-fusion kernel into preallocated outputs.

Never uses FlashInfer's `mnnvl*` backends, symmetric memory or `backend="auto"`: the workspace
is plain CUDA IPC (`workspace.py`).
"""

from __future__ import annotations

from typing import Any

from arfuse.kernels.args import FusedArgs, FusedResult
from arfuse.kernels.flashinfer import library
from arfuse.kernels.flashinfer.workspace import Workspace
from arfuse.settings import settings


def _pattern(comm: Any, fp8: bool, norm: bool) -> Any:
    p = comm.AllReduceFusionPattern
    if not fp8:
        return p.kARResidualRMSNorm
    # `_fp8` returns the bf16 norm too (the Out variant writes norm and quant); `_quant_fp8`
    # writes only the quantized value
    return p.kARResidualRMSNormOutFP8Quant if norm else p.kARResidualRMSNormFP8Quant


def launch(strategy: str, ws: Workspace, args: FusedArgs, out: FusedResult) -> None:
    """Run `strategy` ('oneshot' | 'twoshot') on `args`, writing `out` (tests poison it first)."""
    comm, module = library.require()
    tokens, hidden = args.tokens, args.hidden
    if tokens > ws.max_tokens:
        raise ValueError(f"{tokens} tokens exceed the workspace's {ws.max_tokens}")
    if strategy == "twoshot" and tokens <= ws.world_size:
        raise ValueError(f"two-shot needs tokens > world size ({tokens} <= {ws.world_size})")
    residual = args.residual
    if residual is None:
        residual = ws.zeros[:tokens].view(args.input.shape)
    weight = args.weight
    gamma = (
        weight
        if args.weight_offset == 0.0
        else (weight.float() + args.weight_offset).to(weight.dtype)
    )
    module.trtllm_allreduce_fusion(
        allreduce_in=args.input,
        world_size=ws.world_size,
        world_rank=ws.rank,
        token_num=tokens,
        hidden_dim=hidden,
        workspace_ptrs=ws.ptrs,
        launch_with_pdl=settings.pdl,
        use_oneshot=strategy == "oneshot",
        trigger_completion_at_end=True,
        fp32_acc=True,
        pattern_code=_pattern(comm, args.scale is not None, out.norm is not None),
        allreduce_out=None,
        residual_in=residual,
        residual_out=out.residual,
        norm_out=out.norm,
        quant_out=out.quant,
        scale_out=None,
        rms_gamma=gamma.contiguous(),
        rms_eps=float(args.eps),
        scale_factor=args.scale,
        layout_code=None,
    )
