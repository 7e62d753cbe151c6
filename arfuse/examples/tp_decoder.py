"""A small Llama-style tensor-parallel decoder in plain PyTorch.

Each layer is the HF/Llama block with Megatron-style sharding: attention heads and MLP
intermediate columns split across ranks, the output projections row-parallel and followed by a
sum-allreduce. So every layer has two `all_reduce -> + residual -> RMSNorm` chains (after
attention: post-attention norm; after the MLP: the next layer's input norm, or the final norm
with the residual output dead) and `AllReduceFusionPass` fuses exactly 2 per layer.

Works at any world size (gloo on CPU, NCCL on GPU); the process group must be initialised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

import arfuse.ops as arfuse_ops
from arfuse.kernels.exact import quant_fp8_static

NORM_FORMS = ("hf", "rms_norm", "gemma", "custom_op")
ALLREDUCE_FORMS = ("c10d", "arfuse")


class RMSNorm(nn.Module):
    """RMSNorm written in one of the forms the fusion pass recognises."""

    def __init__(self, hidden: int, eps: float = 1e-5, form: str = "hf",
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if form not in NORM_FORMS:
            raise ValueError(f"unknown norm form {form!r}; choose one of {NORM_FORMS}")
        self.form, self.eps = form, eps
        init = torch.zeros if form == "gemma" else torch.ones
        self.weight = nn.Parameter(init(hidden, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "rms_norm":
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        if self.form == "custom_op":
            return arfuse_ops.rms_norm(x, self.weight, self.eps)
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.form == "gemma":
            return (xf * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * xf.to(x.dtype)


def all_reduce(x: torch.Tensor, form: str, group: dist.ProcessGroup) -> torch.Tensor:
    if form == "c10d":
        return funcol.all_reduce(x, "sum", group)
    if form == "arfuse":
        return arfuse_ops.all_reduce(x, group.group_name)
    raise ValueError(f"unknown allreduce form {form!r}; choose one of {ALLREDUCE_FORMS}")


class TPAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, world_size: int, allreduce: str,
                 group: dist.ProcessGroup, dtype: torch.dtype, device) -> None:
        super().__init__()
        if num_heads % world_size or hidden % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden={hidden} and be a "
                             f"multiple of world_size={world_size}")
        self.head_dim = hidden // num_heads
        local = hidden // world_size
        self.qkv = nn.Linear(hidden, 3 * local, bias=False, dtype=dtype, device=device)
        self.o_proj = nn.Linear(local, hidden, bias=False, dtype=dtype, device=device)
        self.allreduce, self.group = allreduce, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # [tokens, local_heads, head_dim] -> [local_heads, tokens, head_dim]; one causal sequence
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(0, 1) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return all_reduce(self.o_proj(attn.transpose(0, 1).flatten(-2)), self.allreduce,
                          self.group)


class TPMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, world_size: int, allreduce: str,
                 group: dist.ProcessGroup, dtype: torch.dtype, device) -> None:
        super().__init__()
        if intermediate % world_size:
            raise ValueError(f"intermediate={intermediate} must be a multiple of "
                             f"world_size={world_size}")
        local = intermediate // world_size
        self.gate_up = nn.Linear(hidden, 2 * local, bias=False, dtype=dtype, device=device)
        self.down = nn.Linear(local, hidden, bias=False, dtype=dtype, device=device)
        self.allreduce, self.group = allreduce, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return all_reduce(self.down(F.silu(gate) * up), self.allreduce, self.group)


class TPDecoderLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, num_heads: int, world_size: int,
                 norm: str, allreduce: str, group, dtype, device, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps, norm, dtype, device)
        self.self_attn = TPAttention(hidden, num_heads, world_size, allreduce, group, dtype,
                                     device)
        self.post_attention_layernorm = RMSNorm(hidden, eps, norm, dtype, device)
        self.mlp = TPMLP(hidden, intermediate, world_size, allreduce, group, dtype, device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden
        hidden = self.self_attn(self.input_layernorm(hidden))
        hidden = hidden + residual
        residual = hidden
        hidden = self.mlp(self.post_attention_layernorm(hidden))
        return hidden + residual


class TPDecoder(nn.Module):
    """`num_layers` TP decoder layers, a final RMSNorm and (optionally) static FP8 output quant.

    forward(hidden_states [num_tokens, hidden]) -> [num_tokens, hidden] (float8_e4m3fn when
    `fp8_scale` is set).
    """

    fp8_scale: torch.Tensor | None  # a buffer (register_buffer below)

    def __init__(self, num_layers: int = 2, hidden: int = 64, intermediate: int = 128,
                 num_heads: int = 4, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", norm: str = "hf", allreduce: str = "c10d",
                 group: dist.ProcessGroup | None = None, eps: float = 1e-5,
                 fp8_scale: float | None = None) -> None:
        super().__init__()
        if not dist.is_initialized():
            raise ValueError("TPDecoder needs an initialised process group; call "
                             "torch.distributed.init_process_group first")
        group = group or dist.group.WORLD
        world_size = dist.get_world_size(group)
        self.layers = nn.ModuleList(
            TPDecoderLayer(hidden, intermediate, num_heads, world_size, norm, allreduce, group,
                           dtype, device, eps) for _ in range(num_layers))
        self.norm = RMSNorm(hidden, eps, norm, dtype, device)
        self.register_buffer("fp8_scale", None if fp8_scale is None else
                             torch.tensor(fp8_scale, dtype=torch.float32, device=device))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        out = self.norm(hidden_states)
        if self.fp8_scale is not None:
            out = quant_fp8_static(out, self.fp8_scale)
        return out


def init_weights(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Random weights: rank-specific for sharded linears, identical on all ranks for norms."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    gen = torch.Generator().manual_seed(seed)
    shard_gen = torch.Generator().manual_seed(seed * 1000 + rank + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = gen if name.endswith("layernorm.weight") or name == "norm.weight" else shard_gen
            noise = (torch.randn(p.shape, generator=g) * (0.1 if g is gen else std)).to(p.device)
            p.copy_((p.float() + noise).to(p.dtype) if g is gen else noise.to(p.dtype))


def build_tp_decoder(num_layers: int = 2, hidden: int = 64, intermediate: int = 128,
                     num_heads: int = 4, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", norm: str = "hf",
                     allreduce: str = "c10d", group: dist.ProcessGroup | None = None,
                     eps: float = 1e-5, fp8_scale: float | None = None, seed: int = 0,
                     ) -> tuple[TPDecoder, Callable[[int], tuple[torch.Tensor]]]:
    """(model, make_inputs) for the example; make_inputs(num_tokens) is identical on all ranks."""
    model = TPDecoder(num_layers, hidden, intermediate, num_heads, dtype, device, norm,
                      allreduce, group, eps, fp8_scale).eval()
    init_weights(model, seed)

    def make_inputs(num_tokens: int) -> tuple[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed + num_tokens)
        x = torch.randn(num_tokens, hidden, generator=gen).to(dtype=dtype, device=device)
        return (x,)

    return model, make_inputs
