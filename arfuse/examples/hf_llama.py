"""An HF-transformers-style Llama decoder layer (single-device code) and its DTensor TP plan.

The modules are written as HF writes them (q/k/v/o projections, gate/up/down MLP,
LlamaRMSNorm); `parallelize(layer, mesh)` applies torch's ColwiseParallel/RowwiseParallel, so
the all-reduces come from DTensor, not from the model code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype=torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dtype=torch.float32) -> None:
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bsz, seq, _ = hidden_states.shape
        shape = (bsz, seq, -1, self.head_dim)  # -1: the local head count under TP
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, dtype=torch.float32) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        hidden_size: int = 64,
        intermediate_size: int = 128,
        num_heads: int = 4,
        eps: float = 1e-6,
        dtype=torch.float32,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(hidden_size, num_heads, dtype)
        self.mlp = LlamaMLP(hidden_size, intermediate_size, dtype)
        self.input_layernorm = LlamaRMSNorm(hidden_size, eps, dtype)
        self.post_attention_layernorm = LlamaRMSNorm(hidden_size, eps, dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(self.input_layernorm(hidden_states))
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class LlamaStack(nn.Module):
    """Decoder layers + final norm, HF `LlamaModel` minus embeddings: [batch, seq, hidden]."""

    def __init__(self, num_layers: int = 2, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LlamaDecoderLayer(**layer_kwargs) for _ in range(num_layers))
        hidden = layer_kwargs.get("hidden_size", 64)
        self.norm = LlamaRMSNorm(
            hidden, layer_kwargs.get("eps", 1e-6), layer_kwargs.get("dtype", torch.float32)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.norm(hidden_states)


def tp_plan(prefix: str = "") -> dict:
    """The DTensor plan HF uses for Llama: q/k/v and gate/up colwise, o/down rowwise."""
    from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

    plan: dict[str, ParallelStyle] = {
        f"self_attn.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")
    }
    plan |= {
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    return {prefix + k: v for k, v in plan.items()}


def parallelize(stack: LlamaStack, mesh) -> LlamaStack:
    """Shard `stack` in place over a 1-D device mesh with the HF Llama TP plan."""
    from torch.distributed.tensor.parallel import parallelize_module

    for i in range(len(stack.layers)):
        parallelize_module(stack, mesh, tp_plan(f"layers.{i}."))
    return stack
